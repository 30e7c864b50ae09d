"""Load restoration models into a handle that runs them with gradients.

Accepted model specifications:

* a checkpoint file (``.pth``, ``.pt``, ``.ckpt``, ``.safetensors``) holding a
  state dict of an architecture spandrel detects;
* a TorchScript archive (saved with ``torch.jit.save``);
* ``zoo:NAME``, a model bundled with critprint.

Pickled checkpoints are read with ``torch.load(weights_only=True)``, whose
restricted unpickler only rebuilds tensors and plain containers and never
imports or calls code named in the file. A TorchScript archive contains
TorchScript code that runs when the model is called, so it loads only when the
caller passes ``allow_torchscript=True`` (``--torchscript`` on the command
line).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from critprint import zoo
from critprint.errors import IncompatibleModelError, ModelLoadError
from critprint.protocol import TASKS, Task

__all__ = [
    "ModelFormat",
    "ModelHandle",
    "load_model",
    "read_state_dict",
    "save_state_dict",
    "file_sha256",
    "infer_task",
]

logger = logging.getLogger(__name__)

ModelFormat = Literal["spandrel", "torchscript"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")

# Architectures whose only use is denoising, so their task needs no --task.
_DENOISING_ARCHITECTURES = frozenset({"DnCNN", "DRUNet", "SCUNet"})

# Side of the probe input used to measure a TorchScript model's scale.
_PROBE_SIZE = 32


@dataclass
class ModelHandle:
    """A loaded model, ready to run with gradients flowing to its input.

    Attributes:
        module: The network, in eval mode with parameters frozen.
        source: The specification the model was loaded from.
        path: The resolved file path.
        sha256: SHA-256 of the model file's bytes.
        format: ``"spandrel"`` or ``"torchscript"``.
        architecture: Architecture name (spandrel's id, or ``"TorchScript"``).
        input_channels: Image channels the model expects (an extra noise-level
            channel that the architecture generates is not counted).
        output_channels: Image channels the model returns.
        scale: Output size / input size.
        multiple_of: The input's height and width are padded to a multiple of
            this before the model runs, and the output is cropped back.
        minimum_size: Smallest input side the model accepts.
        task_hint: The task the model's source states, or None.
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
                f"model file {path} is not a valid safetensors file ({_first_line(error)}); "
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
        raise ModelLoadError(f"cannot read model file {spec}: {_first_line(error)}") from error


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write a state dict as a safetensors file atomically; return the path."""
    from safetensors.torch import save

    from critprint.fingerprint import atomic_write_bytes

    target = Path(path)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    atomic_write_bytes(target, save(tensors))
    return target


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_spandrel(path: Path, source: str, task_hint: Task | None, sha256: str) -> ModelHandle:
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

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
        raise ModelLoadError(f"cannot build a model from {source}: {_first_line(error)}") from error
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
    )


def _load_torchscript(path: Path, source: str, task_hint: Task | None, sha256: str) -> ModelHandle:
    try:
        with warnings.catch_warnings():
            # torch 2.14 marks torch.jit.load as deprecated; the warning is not the user's concern.
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - TorchScript raises several unrelated types
        raise ModelLoadError(f"cannot read TorchScript file {source}: {_first_line(error)}") from error
    module = _freeze(module)
    last_error: Exception | None = None
    for channels in (3, 1):
        probe = torch.zeros(1, channels, _PROBE_SIZE, _PROBE_SIZE)
        try:
            with torch.no_grad():
                output = module(probe)
        except Exception as error:  # noqa: BLE001 - a wrong channel count raises RuntimeError or others
            last_error = error
            continue
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise IncompatibleModelError(
                f"TorchScript model {source} does not return a (B, C, H, W) image; "
                "critprint fingerprints image-to-image restoration models only"
            )
        scale = output.shape[-1] // _PROBE_SIZE
        if scale < 1 or output.shape[-1] != scale * _PROBE_SIZE or output.shape[-2] != scale * _PROBE_SIZE:
            raise IncompatibleModelError(
                f"TorchScript model {source} maps {_PROBE_SIZE} x {_PROBE_SIZE} to "
                f"{output.shape[-2]} x {output.shape[-1]}, not an integer upscale"
            )
        return ModelHandle(
            module=module,
            source=source,
            path=path,
            sha256=sha256,
            format="torchscript",
            architecture="TorchScript",
            input_channels=channels,
            output_channels=int(output.shape[1]),
            scale=scale,
            task_hint=task_hint,
        )
    raise IncompatibleModelError(
        f"TorchScript model {source} rejects 1 x 3 x {_PROBE_SIZE} x {_PROBE_SIZE} and 1-channel inputs "
        f"({type(last_error).__name__}); expected an image-to-image model"
    )


def load_model(spec: str | Path, allow_torchscript: bool = False) -> ModelHandle:
    """Load a model from a file path or ``zoo:NAME``.

    The file is hashed and its format detected: a zip archive with a
    ``code/`` folder is TorchScript, anything else a state dict for spandrel.
    The network is put in eval mode with its parameters frozen, so a
    backward pass computes gradients for the input only.

    Args:
        spec: A file path or ``zoo:NAME``.
        allow_torchscript: Load TorchScript archives. Their code runs when
            the model is called, so a caller must opt in explicitly.

    Raises:
        ModelLoadError: If the file is missing, empty, unreadable, of an
            unknown architecture, or TorchScript without ``allow_torchscript``.
        IncompatibleModelError: If it is not an image-to-image model.
    """
    source = str(spec)
    path, task_hint = _resolve(source)
    sha256 = file_sha256(path)
    if _is_torchscript(path):
        if not allow_torchscript:
            raise ModelLoadError(
                f"model file {source} is a TorchScript archive, whose code runs when the model is called; "
                "pass --torchscript to load it if you trust its source"
            )
        handle = _load_torchscript(path, source, task_hint, sha256)
    else:
        handle = _load_spandrel(path, source, task_hint, sha256)
    logger.info(
        "loaded %s: %s, %d -> %d channels, scale %d", source, handle.architecture,
        handle.input_channels, handle.output_channels, handle.scale,
    )
    return handle


def infer_task(handle: ModelHandle, requested: str | None = None) -> Task:
    """Return the task to fingerprint a model with.

    A model with scale > 1 is ``sr``; otherwise the requested task, or the
    task its source states (a bundled model, a denoising-only architecture).

    Raises:
        IncompatibleModelError: If the request contradicts the model's scale,
            or no task is known.
    """
    if requested is not None and requested not in TASKS:
        listed = ", ".join(TASKS)
        raise IncompatibleModelError(f"invalid task {requested!r}: expected one of {listed}")
    if handle.scale > 1:
        if requested not in (None, "sr"):
            raise IncompatibleModelError(
                f"model {handle.source} upscales by {handle.scale}, so its task is sr, not {requested}; "
                "drop --task or pass --task sr"
            )
        return "sr"
    if requested == "sr":
        raise IncompatibleModelError(f"model {handle.source} has scale 1, so it cannot be an sr model; pass --task denoise")
    task = requested or handle.task_hint
    if task is None:
        raise IncompatibleModelError(
            f"cannot infer the task of {handle.source} ({handle.architecture}, scale 1); pass --task denoise"
        )
    return task  # type: ignore[return-value]
