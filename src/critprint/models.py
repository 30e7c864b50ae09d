"""Load restoration models into a handle that runs them with gradients.

Accepted model specifications:

* a checkpoint file (``.pth``, ``.pt``, ``.ckpt``, ``.safetensors``) holding a
  state dict of an architecture spandrel detects;
* a TorchScript archive (saved with ``torch.jit.save``);
* an ONNX graph (``.onnx``), converted to PyTorch with onnx2torch (the
  ``critprint[onnx]`` extra);
* a state dict plus a Python callable that builds its network (``arch``), for
  architectures spandrel does not detect;
* ``zoo:NAME``, a model bundled with critprint.

Pickled checkpoints are read with ``torch.load(weights_only=True)``, whose
restricted unpickler only rebuilds tensors and plain containers and never
imports or calls code named in the file. An ONNX graph is data: onnx2torch
builds it from its own operator implementations. A TorchScript archive contains
TorchScript code that runs when the model is called, so it loads only when the
caller passes ``allow_torchscript=True`` (``--torchscript`` on the command
line). An ``arch`` callable is imported and run as ordinary Python code, so
it must come from a source the caller trusts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
import pickle
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from critprint import zoo
from critprint.errors import IncompatibleModelError, InvalidInputError, ModelLoadError
from critprint.protocol import TASKS, Task
from critprint.userimport import first_line, import_callable

__all__ = [
    "ModelFormat",
    "ModelHandle",
    "ArchSpec",
    "load_model",
    "parse_arch_spec",
    "parse_arch_kwargs",
    "read_state_dict",
    "save_state_dict",
    "file_sha256",
    "infer_task",
    "DEFAULT_NOISE_MAP_LEVEL",
]

logger = logging.getLogger(__name__)

ModelFormat = Literal["spandrel", "torchscript", "onnx", "arch"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
ONNX_SUFFIX = ".onnx"

# Architectures whose only use is denoising, so their task needs no --task.
_DENOISING_ARCHITECTURES = frozenset({"DnCNN", "DRUNet", "SCUNet"})

DEFAULT_NOISE_MAP_LEVEL = 15 / 255
"""Level of the noise-level map spandrel feeds DRUNet and FDnCNN, [0, 1] scale."""

# Side of the probe input used to measure the scale of a TorchScript, ONNX or
# arch model, which states neither its scale nor its channels.
_PROBE_SIZE = 32

# How many missing or unexpected state-dict keys an error message lists.
_LISTED_KEYS = 3

# package.module:callable, where the callable may be a dotted attribute path.
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_ARCH_PATTERN = re.compile(rf"(?P<module>{_DOTTED}):(?P<attribute>{_DOTTED})")


@dataclass
class ModelHandle:
    """A loaded model, ready to run with gradients flowing to its input.

    Attributes:
        module: The network, in eval mode with parameters frozen.
        source: The specification the model was loaded from.
        path: The resolved file path.
        sha256: SHA-256 of the model file's bytes.
        format: ``"spandrel"``, ``"torchscript"``, ``"onnx"`` or ``"arch"``.
        architecture: Architecture name: spandrel's id, ``"TorchScript"``,
            ``"ONNX"``, or the ``package.module:callable`` that built it.
        input_channels: Image channels the model expects (an extra noise-level
            channel that the architecture generates is not counted).
        output_channels: Image channels the model returns.
        scale: Output size / input size.
        multiple_of: The input's height and width are padded to a multiple of
            this before the model runs, and the output is cropped back.
        minimum_size: Smallest input side the model accepts.
        task_hint: The task the model's source states, or None.
        call: Runs the module on an image, when plain ``module(image)`` does
            not (an architecture that adds a noise-level channel).
        required_size: The only input side the model accepts (an ONNX graph
            with a fixed height or width), or None when any size fits.
        noise_map: The architecture takes a generated constant noise-level
            map as an extra input channel (DRUNet, FDnCNN).
    """

    module: nn.Module
    source: str
    path: Path
    sha256: str
    format: ModelFormat
    architecture: str
    input_channels: int
    output_channels: int
    scale: int
    multiple_of: int = 1
    minimum_size: int = 0
    task_hint: Task | None = None
    call: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    required_size: int | None = None
    noise_map: bool = False

    def with_noise_map_level(self, level: float | None) -> ModelHandle:
        """Return a handle that feeds a noise-level map of ``level`` ([0, 1] scale).

        None keeps the architecture's default map (spandrel's,
        :data:`DEFAULT_NOISE_MAP_LEVEL`), and a model without a noise-level
        map ignores the level, so a suspect of another architecture can be
        probed with a source's protocol.
        """
        if level is None or not self.noise_map:
            return self
        return dataclasses.replace(self, call=_noise_map_call(level))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Run the model on a (B, C_in, H, W) float batch, keeping gradients.

        The input is padded (reflect, or replicate where the image is too
        small to reflect) to a multiple of ``multiple_of`` and the output is
        cropped to (B, C_out, H * scale, W * scale). Values are not clamped.
        """
        height, width = image.shape[-2:]
        # Some architectures (RCAN, for one) rescale their input in place, which
        # would alter the caller's tensor or fail on a leaf that requires grad.
        image = image.clone()
        pad_bottom = -height % self.multiple_of
        pad_right = -width % self.multiple_of
        if pad_bottom or pad_right:
            mode = "reflect" if pad_bottom < height and pad_right < width else "replicate"
            image = F.pad(image, (0, pad_right, 0, pad_bottom), mode=mode)
        output = self.call(self.module, image) if self.call is not None else self.module(image)
        if not isinstance(output, torch.Tensor):
            raise IncompatibleModelError(
                f"model {self.source} returned {type(output).__name__}, expected a tensor; "
                "critprint supports image-to-image models only"
            )
        return output[..., : height * self.scale, : width * self.scale]

    def identity(self) -> dict[str, object]:
        """Return the model's identity as a JSON-compatible dictionary."""
        return {
            "source": self.source,
            "sha256": self.sha256,
            "format": self.format,
            "architecture": self.architecture,
            "input_channels": self.input_channels,
            "output_channels": self.output_channels,
            "scale": self.scale,
        }


def _noise_map_call(level: float) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """Return a call function that appends a constant noise-level map, as spandrel's does."""

    def call(module: nn.Module, image: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = image.shape
        noise_map = image.new_full((batch, 1, height, width), level)
        return module(torch.cat([image, noise_map], dim=1))

    return call


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve(spec: str) -> tuple[Path, Task | None]:
    if spec.startswith("zoo:"):
        entry = zoo.get_entry(spec.removeprefix("zoo:"))
        return zoo.model_path(entry.name), entry.task
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model file not found: {spec}; check the path, or use zoo:NAME (see `critprint zoo list`)")
    if path.is_dir():
        raise ModelLoadError(f"model path {spec} is a directory; expected a checkpoint or TorchScript file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file {spec} is empty; expected a checkpoint or TorchScript file")
    return path, None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


_TRAINING_PATH_LAYERS = frozenset({"PLKConv2d", "RectSparsePLKConv2d"})
"""Layers kept in training mode because their eval path writes into its input.

PLKSR's partial large-kernel convolutions assign the convolved channels into
the input tensor in eval mode, which breaks the gradient to the image. Their
training path computes the same values with split and concatenation, and they
hold no normalisation or dropout that training mode would change.
"""


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for layer in module.modules():
        if type(layer).__name__ in _TRAINING_PATH_LAYERS:
            layer.train()
    # ScriptModule rejects requires_grad_, so freeze parameter by parameter.
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict without executing code from the file."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(
                f"model file {path} is not a valid safetensors file ({first_line(error)}); "
                "check that the file is complete"
            ) from None
    # weights_only=True uses torch's restricted unpickler: a file that names
    # any global outside tensors and plain containers raises instead of running.
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelLoadError(
            f"model file {path} contains Python objects other than tensors, which critprint does not load "
            "because unpickling them could run code; re-save it with torch.save(model.state_dict(), PATH)"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch raises many types for damaged files
        raise ModelLoadError(
            f"model file {path} is not a readable PyTorch checkpoint ({type(error).__name__}); "
            "check that the file is complete and was saved with torch.save"
        ) from None
    if not isinstance(loaded, dict):
        raise ModelLoadError(
            f"model file {path} contains a {type(loaded).__name__}, expected a state dict; "
            "save the model with torch.save(model.state_dict(), PATH)"
        )
    return loaded


def read_state_dict(spec: str | Path) -> dict[str, torch.Tensor]:
    """Read the state dict of a checkpoint or ``zoo:NAME`` without executing code.

    Wrappers such as ``params_ema`` or ``module.`` prefixes are removed the
    way spandrel does before detection.

    Raises:
        ModelLoadError: If the file is missing, empty or unreadable.
    """
    from spandrel.__helpers.canonicalize import canonicalize_state_dict

    path, _ = _resolve(str(spec))
    try:
        return canonicalize_state_dict(_load_state_dict(path))
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: BLE001 - any parse failure means an unreadable checkpoint
        raise ModelLoadError(f"cannot read model file {spec}: {first_line(error)}") from error


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write a state dict as a safetensors file atomically; return the path."""
    from safetensors.torch import save

    from critprint.fingerprint import atomic_write_bytes

    target = Path(path)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    atomic_write_bytes(target, save(tensors))
    return target


@functools.cache
def install_extra_architectures() -> bool:
    """Register spandrel-extra-arches with spandrel when it is installed; return whether it is.

    The package (``pip install critprint[extra-arches]``) adds Restormer,
    MPRNet, MIRNet2 and others. Some of them carry non-commercial or copyleft
    licences, so critprint does not depend on it.
    """
    try:
        import spandrel_extra_arches
    except ImportError:
        logger.debug("spandrel-extra-arches is not installed; its architectures are not detected")
        return False
    spandrel_extra_arches.install(ignore_duplicates=True)
    return True


def _load_spandrel(path: Path, source: str, task_hint: Task | None, sha256: str) -> ModelHandle:
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    install_extra_architectures()
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        suffixes = ", ".join(CHECKPOINT_SUFFIXES)
        raise ModelLoadError(f"unsupported model file suffix {path.suffix!r} in {source}; expected one of {suffixes}")
    try:
        state_dict = read_state_dict(path)
        descriptor = ModelLoader(device="cpu").load_from_state_dict(state_dict)
    except UnsupportedModelError:
        raise ModelLoadError(
            f"unknown architecture in {source}: spandrel detects none of its architectures in this state dict; "
            "use a checkpoint of a supported architecture"
        ) from None
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: BLE001 - spandrel raises assorted types on a malformed state dict
        raise ModelLoadError(f"cannot build a model from {source}: {first_line(error)}") from error
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ModelLoadError(
            f"model {source} is a {descriptor.purpose} model ({descriptor.architecture.id}); "
            "critprint fingerprints image-to-image restoration models only"
        )
    requirements = descriptor.size_requirements
    if task_hint is None and descriptor.architecture.id in _DENOISING_ARCHITECTURES and descriptor.scale == 1:
        task_hint = "denoise"
    # descriptor.__call__ runs under torch.inference_mode() and clamps its
    # output, so gradients cannot reach the input through it. Call the network
    # through the architecture's own call function instead, which also adds
    # generated inputs such as a noise-level map.
    # NOTE: _call_fn is private in spandrel 0.4; fall back to module(x) without it.
    call = getattr(descriptor, "_call_fn", None)
    architecture = descriptor.architecture.id
    noise_map = architecture == "DRUNet" or getattr(descriptor.model, "mode", None) == "FDnCNN"
    return ModelHandle(
        module=_freeze(descriptor.model),
        source=source,
        path=path,
        sha256=sha256,
        format="spandrel",
        architecture=descriptor.architecture.id,
        input_channels=descriptor.input_channels,
        output_channels=descriptor.output_channels,
        scale=descriptor.scale,
        multiple_of=requirements.multiple_of,
        minimum_size=requirements.minimum,
        task_hint=task_hint,
        call=call,
        noise_map=noise_map,
    )


@dataclass(frozen=True)
class _Probe:
    """Measurements of a probe forward pass: channels in and out, and the scale."""

    input_channels: int
    output_channels: int
    scale: int


def _probe(
    module: nn.Module,
    label: str,
    channel_options: tuple[int, ...] = (3, 1),
    size: int = _PROBE_SIZE,
) -> _Probe:
    """Measure the channels and scale of a model that does not state them.

    A zero image of each channel count in ``channel_options`` runs through
    the model until one is accepted. The output's shape gives the rest.

    Raises:
        IncompatibleModelError: If the model rejects every probe, returns no
            (B, C, H, W) tensor, or does not upscale by an integer factor.
    """
    last_error: Exception | None = None
    for channels in channel_options:
        probe = torch.zeros(1, channels, size, size)
        try:
            with torch.no_grad():
                output = module(probe)
        except Exception as error:  # noqa: BLE001 - a wrong channel count raises RuntimeError or others
            last_error = error
            logger.debug("%s rejects a %d-channel probe: %s", label, channels, first_line(error))
            continue
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise IncompatibleModelError(
                f"{label} does not return a (B, C, H, W) image; "
                "critprint fingerprints image-to-image restoration models only"
            )
        scale = output.shape[-1] // size
        if scale < 1 or output.shape[-1] != scale * size or output.shape[-2] != scale * size:
            raise IncompatibleModelError(
                f"{label} maps {size} x {size} to {output.shape[-2]} x {output.shape[-1]}, not an integer upscale"
            )
        return _Probe(input_channels=channels, output_channels=int(output.shape[1]), scale=scale)
    tried = " and ".join(f"1 x {channels} x {size} x {size}" for channels in channel_options)
    detail = f"{type(last_error).__name__}: {first_line(last_error)}" if last_error is not None else "no probe"
    raise IncompatibleModelError(f"{label} rejects {tried} inputs ({detail}); expected an image-to-image model")


def _load_torchscript(path: Path, source: str, task_hint: Task | None, sha256: str) -> ModelHandle:
    try:
        with warnings.catch_warnings():
            # torch 2.14 marks torch.jit.load as deprecated; the warning is not the user's concern.
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - TorchScript raises several unrelated types
        raise ModelLoadError(f"cannot read TorchScript file {source}: {first_line(error)}") from error
    module = _freeze(module)
    measured = _probe(module, f"TorchScript model {source}")
    return ModelHandle(
        module=module,
        source=source,
        path=path,
        sha256=sha256,
        format="torchscript",
        architecture="TorchScript",
        input_channels=measured.input_channels,
        output_channels=measured.output_channels,
        scale=measured.scale,
        task_hint=task_hint,
    )


def _onnx_input_shape(graph: Any, source: str) -> list[int | None]:
    """Return the fixed dimensions of the graph's single image input (None where dynamic)."""
    initializers = {initializer.name for initializer in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise IncompatibleModelError(
            f"ONNX model {source} has {len(inputs)} inputs; critprint fingerprints image-to-image models "
            "with one image input"
        )
    tensor_type = inputs[0].type.tensor_type
    if not tensor_type.HasField("shape"):
        return [None, None, None, None]
    dims = [dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None for dim in tensor_type.shape.dim]
    if len(dims) != 4:
        raise IncompatibleModelError(
            f"ONNX model {source} takes a {len(dims)}-dimensional input; expected a (B, C, H, W) image"
        )
    return dims


def _unsupported_onnx_operators(model: Any) -> list[str]:
    """Return the graph's operators that onnx2torch has no converter for, as ``Name (opset N)``."""
    from onnx2torch.node_converters import get_converter

    opsets = {opset.domain or "": opset.version for opset in model.opset_import}
    missing: dict[str, None] = {}
    for node in model.graph.node:
        domain = node.domain or ""
        name = f"{domain}:{node.op_type}" if domain not in ("", "ai.onnx") else node.op_type
        version = opsets.get(domain)
        if version is None:
            missing[f"{name} (domain not imported)"] = None
            continue
        try:
            get_converter(operation_type=node.op_type, version=version, domain=domain)
        except NotImplementedError:
            missing[f"{name} (opset {version})"] = None
    return list(missing)


def _load_onnx(path: Path, source: str, task_hint: Task | None, sha256: str) -> ModelHandle:
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:
        raise ModelLoadError(
            f"model file {source} is an ONNX graph, which needs the packages onnx and onnx2torch; "
            "install them with pip install 'critprint[onnx]'"
        ) from None
    try:
        model = onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf and onnx raise assorted types on a damaged file
        raise ModelLoadError(
            f"model file {source} is not a valid ONNX file ({first_line(error)}); check that the file is complete"
        ) from None

    dims = _onnx_input_shape(model.graph, source)
    unsupported = _unsupported_onnx_operators(model)
    if unsupported:
        raise ModelLoadError(
            f"ONNX model {source} uses operators that onnx2torch cannot convert: {', '.join(unsupported)}; "
            "re-export it with operators onnx2torch supports (often an older opset_version), "
            "or as TorchScript for --torchscript"
        )
    try:
        module = convert(model)
    except Exception as error:  # noqa: BLE001 - converters raise assorted types on attributes they lack
        raise ModelLoadError(
            f"cannot convert ONNX model {source} to PyTorch ({type(error).__name__}: {first_line(error)}); "
            "re-export it with another opset_version, or as TorchScript for --torchscript"
        ) from None
    # Adam optimises a float32 image, which a float16 graph would reject.
    module = _freeze(module.float())

    _, channels, height, width = dims
    fixed = {side for side in (height, width) if side is not None}
    if len(fixed) > 1:
        raise IncompatibleModelError(
            f"ONNX model {source} accepts only {height} x {width} inputs, and critprint feeds square images; "
            "re-export it with dynamic height and width axes (dynamic_axes in torch.onnx.export)"
        )
    required_size = fixed.pop() if fixed else None
    measured = _probe(
        module,
        f"ONNX model {source}",
        channel_options=(channels,) if channels is not None else (3, 1),
        size=required_size or _PROBE_SIZE,
    )
    if required_size is not None:
        logger.info("ONNX model %s accepts only %d x %d inputs", source, required_size, required_size)

    return ModelHandle(
        module=module,
        source=source,
        path=path,
        sha256=sha256,
        format="onnx",
        architecture="ONNX",
        input_channels=measured.input_channels,
        output_channels=measured.output_channels,
        scale=measured.scale,
        task_hint=task_hint,
        required_size=required_size,
    )


@dataclass(frozen=True)
class ArchSpec:
    """A Python callable that builds a network: ``package.module:callable``.

    Attributes:
        module: The importable module, such as ``mynets.dncnn``.
        attribute: The callable in it; a dotted path reaches into classes.
    """

    module: str
    attribute: str

    def __str__(self) -> str:
        return f"{self.module}:{self.attribute}"


def parse_arch_spec(text: str) -> ArchSpec:
    """Parse ``package.module:callable``.

    Example:
        >>> parse_arch_spec("mynets.dncnn:build")
        ArchSpec(module='mynets.dncnn', attribute='build')

    Raises:
        InvalidInputError: If the text is not of that form.
    """
    match = _ARCH_PATTERN.fullmatch(text.strip())
    if match is None:
        raise InvalidInputError(
            f"invalid --arch {text!r}: expected package.module:callable, for example mynets.dncnn:build"
        )
    return ArchSpec(module=match["module"], attribute=match["attribute"])


def parse_arch_kwargs(text: str) -> dict[str, Any]:
    """Parse the keyword arguments of an ``arch`` callable from a JSON object.

    Example:
        >>> parse_arch_kwargs('{"nc": 32, "nb": 10}')
        {'nc': 32, 'nb': 10}

    Raises:
        InvalidInputError: If the text is not a JSON object.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(
            f"invalid --arch-kwargs {text!r}: not JSON ({error.msg}); expected an object such as '{{\"nc\": 32}}'"
        ) from None
    if not isinstance(value, dict):
        raise InvalidInputError(
            f"invalid --arch-kwargs {text!r}: a JSON {type(value).__name__}, expected an object such as "
            "'{\"nc\": 32}'"
        )
    return value


def _build_architecture(spec: ArchSpec, kwargs: Mapping[str, Any]) -> nn.Module:
    """Import the callable named by ``spec`` and call it with ``kwargs``. This runs user code."""
    logger.info("importing %s for --arch %s; its code runs in this process", spec.module, spec)
    target = import_callable(
        spec.module, spec.attribute, f"--arch {spec}", ModelLoadError, "a class or function that returns the network"
    )
    try:
        module = target(**kwargs)
    except Exception as error:  # noqa: BLE001 - user code can raise anything
        raise ModelLoadError(
            f"calling {spec} with --arch-kwargs {json.dumps(dict(kwargs))} raised {type(error).__name__}: "
            f"{first_line(error)}; check the keyword arguments"
        ) from error
    if not isinstance(module, nn.Module):
        raise ModelLoadError(
            f"--arch {spec} returned a {type(module).__name__}, expected a torch.nn.Module; "
            "name a callable that returns the network"
        )
    return module


def _listed(keys: list[str]) -> str:
    """Join the first few keys, adding how many more there are."""
    first_keys = ", ".join(keys[:_LISTED_KEYS])
    if len(keys) > _LISTED_KEYS:
        return f"{first_keys} and {len(keys) - _LISTED_KEYS} more"
    return first_keys


def _fit_state_dict(
    module: nn.Module, candidates: list[Mapping[str, Any]], source: str, spec: ArchSpec
) -> Mapping[str, Any]:
    """Return the first candidate whose keys and shapes are the module's, else raise naming the differences."""
    expected = module.state_dict()
    for candidate in candidates:
        if set(candidate) == set(expected):
            mismatched = [
                f"{key} {tuple(getattr(value, 'shape', ()))} vs {tuple(expected[key].shape)}"
                for key, value in candidate.items()
                if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape
            ]
            if mismatched:
                raise ModelLoadError(
                    f"state dict {source} does not fit --arch {spec}: shapes differ (file vs model) for {_listed(mismatched)}; "
                    "check --arch-kwargs"
                )
            return candidate
    state = candidates[0]
    parts = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        parts.append(f"missing keys {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_listed(unexpected)}")
    raise ModelLoadError(
        f"state dict {source} does not fit --arch {spec}: {'; '.join(parts)}; "
        "check --arch-kwargs, or that the checkpoint belongs to this architecture"
    )


def _load_arch(
    path: Path, source: str, task_hint: Task | None, sha256: str, spec: ArchSpec, kwargs: Mapping[str, Any]
) -> ModelHandle:
    from spandrel.__helpers.canonicalize import canonicalize_state_dict

    if path.suffix.lower() not in CHECKPOINT_SUFFIXES or _is_torchscript(path):
        suffixes = ", ".join(CHECKPOINT_SUFFIXES)
        raise ModelLoadError(
            f"--arch needs a state-dict checkpoint ({suffixes}), but {source} is not one; "
            "drop --arch to load TorchScript or ONNX files"
        )
    raw = _load_state_dict(path)
    # Try the keys without the wrappers spandrel removes (params_ema,
    # module. ...) first, then as stored, because a network's own keys may look like a wrapper.
    candidates: list[Mapping[str, Any]] = [canonicalize_state_dict(raw), raw]
    module = _build_architecture(spec, kwargs)
    state = _fit_state_dict(module, candidates, source, spec)
    try:
        module.load_state_dict(state, strict=True)
    except Exception as error:  # noqa: BLE001 - load_state_dict raises RuntimeError and others
        raise ModelLoadError(f"cannot load state dict {source} into --arch {spec}: {first_line(error)}") from error
    module = _freeze(module)
    measured = _probe(module, f"model {source} built by --arch {spec}")
    return ModelHandle(
        module=module,
        source=source,
        path=path,
        sha256=sha256,
        format="arch",
        architecture=str(spec),
        input_channels=measured.input_channels,
        output_channels=measured.output_channels,
        scale=measured.scale,
        task_hint=task_hint,
    )


def load_model(
    spec: str | Path,
    allow_torchscript: bool = False,
    arch: str | ArchSpec | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> ModelHandle:
    """Load a model from a file path or ``zoo:NAME``.

    The file is hashed and its format detected. With ``arch`` the file is a
    state dict for the network that the callable builds. Otherwise a
    ``.onnx`` file is an ONNX graph, a zip archive with a ``code/`` folder is
    TorchScript, and anything else is a state dict for spandrel. The network
    is put in eval mode with its parameters frozen, so a backward pass
    computes gradients for the input only.

    Args:
        spec: A file path or ``zoo:NAME``.
        allow_torchscript: Load TorchScript archives. Their code runs when
            the model is called, so a caller must opt in explicitly.
        arch: ``package.module:callable`` returning the network whose state
            dict ``spec`` contains. The module is imported, which runs its code:
            name only code you trust.
        arch_kwargs: Keyword arguments for the ``arch`` callable.

    Raises:
        InvalidInputError: If ``arch`` is malformed, or ``arch_kwargs`` is
            given without ``arch`` or is not a mapping.
        ModelLoadError: If the file is missing, empty, unreadable, of an
            unknown architecture, TorchScript without ``allow_torchscript``,
            ONNX with operators onnx2torch lacks, or a state dict that does
            not fit the ``arch`` network.
        IncompatibleModelError: If it is not an image-to-image model.
    """
    if arch_kwargs is not None and arch is None:
        raise InvalidInputError("--arch-kwargs was given without --arch; pass --arch package.module:callable too")
    if arch_kwargs is not None and not isinstance(arch_kwargs, Mapping):
        raise InvalidInputError(
            f"invalid arch_kwargs of type {type(arch_kwargs).__name__}: expected a mapping of keyword arguments"
        )
    arch_spec = parse_arch_spec(arch) if isinstance(arch, str) else arch
    source = str(spec)
    path, task_hint = _resolve(source)
    sha256 = file_sha256(path)
    if arch_spec is not None:
        handle = _load_arch(path, source, task_hint, sha256, arch_spec, arch_kwargs or {})
    elif path.suffix.lower() == ONNX_SUFFIX:
        handle = _load_onnx(path, source, task_hint, sha256)
    elif _is_torchscript(path):
        if not allow_torchscript:
            raise ModelLoadError(
                f"model file {source} is a TorchScript archive, whose code runs when the model is called; "
                "pass --torchscript to load it if you trust its source"
            )
        handle = _load_torchscript(path, source, task_hint, sha256)
    else:
        handle = _load_spandrel(path, source, task_hint, sha256)
    logger.info(
        "loaded %s (%s): %s, %d -> %d channels, scale %d", source, handle.format, handle.architecture,
        handle.input_channels, handle.output_channels, handle.scale,
    )
    return handle


def infer_task(handle: ModelHandle, requested: str | None = None) -> Task:
    """Return the task to fingerprint a model with.

    A model with scale > 1 is ``sr`` (or ``custom`` when requested);
    otherwise the requested task, or the task its source states (a bundled
    model, a denoising-only architecture).

    Raises:
        IncompatibleModelError: If the request contradicts the model's scale,
            or no task is known.
    """
    if requested is not None and requested not in TASKS:
        listed = ", ".join(TASKS)
        raise IncompatibleModelError(f"invalid task {requested!r}: expected one of {listed}")
    if handle.scale > 1:
        if requested not in (None, "sr", "custom"):
            raise IncompatibleModelError(
                f"model {handle.source} upscales by {handle.scale}, so its task is sr, not {requested}; "
                "drop --task or pass --task sr"
            )
        return "custom" if requested == "custom" else "sr"
    if requested == "sr":
        raise IncompatibleModelError(f"model {handle.source} has scale 1, so it cannot be an sr model; pass --task denoise")
    task = requested or handle.task_hint
    if task is None:
        raise IncompatibleModelError(
            f"cannot infer the task of {handle.source} ({handle.architecture}, scale 1); pass --task denoise "
            "(or deblur, lowlight, derain, jpeg, custom)"
        )
    return task  # type: ignore[return-value]
