"""Model formats: ONNX graphs, Python architectures with a state dict, and the same model in every format."""

from __future__ import annotations

import json
import sys
import warnings
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import tiny_denoiser, tiny_upscaler
from critprint import api, zoo
from critprint.cli import app
from critprint.errors import IncompatibleModelError, InvalidInputError, ModelLoadError
from critprint.extraction import check_compatible
from critprint.fingerprint import Fingerprint
from critprint.models import ModelHandle, load_model, parse_arch_kwargs, parse_arch_spec
from critprint.protocol import Protocol, get_protocol

onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'critprint[onnx]'")
pytest.importorskip("onnx2torch", reason="needs the onnx extra: pip install 'critprint[onnx]'")

runner = CliRunner()

# A Python architecture file as a user would write one: callables that build
# spandrel's classes with the options the bundled models were trained with,
# and small networks spandrel does not detect.
ARCH_MODULE = "critprint_test_arches"
ARCH_SOURCE = '''
import torch
from torch import nn
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DnCNN import DnCNN


def dncnn(**options):
    return DnCNN(**options)


def compact(**options):
    return Compact(**options)


class PlainNet(nn.Module):
    """Two convolutions and an x2 pixel shuffle: an architecture spandrel does not detect."""

    def __init__(self, channels=3, features=8, scale=2):
        super().__init__()
        self.head = nn.Conv2d(channels, features, 3, padding=1)
        self.tail = nn.Conv2d(features, channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, image):
        return self.shuffle(self.tail(torch.relu(self.head(image))))


class Wrapped(nn.Module):
    """Keys begin with 'module.', which looks like a DataParallel wrapper but is the network's own."""

    def __init__(self):
        super().__init__()
        self.module = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, image):
        return self.module(image)


def not_a_network():
    return "a string"


NOT_CALLABLE = 3
'''

ZOO_ARCHES = {"dncnn": f"{ARCH_MODULE}:dncnn", "compact-x4": f"{ARCH_MODULE}:compact"}

# On the CPU the exported copies' critical images equal the source's bit for
# bit; the tolerance leaves room for kernels that round differently elsewhere.
FEATURE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def arch_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("arches")
    (folder / f"{ARCH_MODULE}.py").write_text(ARCH_SOURCE, encoding="utf-8")
    return folder


@pytest.fixture()
def arches(arch_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the architecture file on sys.path, as PYTHONPATH would."""
    monkeypatch.syspath_prepend(str(arch_folder))
    return arch_folder


def export_onnx(module: nn.Module, path: Path, channels: int = 3, size: tuple[int, int] = (16, 16),
                dynamic: bool = True, opset: int = 17) -> Path:
    """Export with the TorchScript-based exporter, which needs no onnxscript; dynamic batch, height and width."""
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module.eval(),
            (torch.rand(1, channels, *size),),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["restored"],
            opset_version=opset,
            dynamic_axes={"image": axes, "restored": axes} if dynamic else None,
        )
    return path


def save_onnx_graph(path: Path, op_type: str, domain: str = "", opset: int = 18) -> Path:
    """Write a one-node ONNX graph that applies ``op_type`` to a (1, 3, H, W) image."""
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, ["image"], ["restored"], domain=domain)
    graph = helper.make_graph(
        [node],
        "single",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info("restored", TensorProto.FLOAT, [1, 3, "height", "width"])],
    )
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=imports), str(path))
    return path


# ONNX


@pytest.mark.parametrize(("factory", "scale"), [(tiny_denoiser, 1), (tiny_upscaler, 4)])
def test_onnx_probed_and_differentiable(tmp_path: Path, factory, scale: int) -> None:  # noqa: ANN001
    module = factory(5).eval()
    handle = load_model(export_onnx(module, tmp_path / "model.onnx"))
    assert (handle.format, handle.architecture) == ("onnx", "ONNX")
    assert (handle.input_channels, handle.output_channels, handle.scale) == (3, 3, scale)
    assert handle.required_size is None
    assert all(not parameter.requires_grad for parameter in handle.module.parameters())
    image = torch.rand(1, 3, 12, 12, requires_grad=True)
    output = handle(image)
    assert torch.allclose(output, module(image), atol=1e-5)
    output.sum().backward()
    assert image.grad is not None
    assert image.grad.abs().sum() > 0


def test_onnx_gray_channels_from_graph(tmp_path: Path) -> None:
    from spandrel.architectures.DnCNN import DnCNN

    torch.manual_seed(0)
    gray = DnCNN(in_nc=1, out_nc=1, nc=8, nb=8, act_mode="R")
    handle = load_model(export_onnx(gray, tmp_path / "gray.onnx", channels=1))
    assert (handle.input_channels, handle.output_channels) == (1, 1)


def test_onnx_fixed_size_recorded_and_checked(tmp_path: Path) -> None:
    handle = load_model(export_onnx(tiny_denoiser(1), tmp_path / "fixed.onnx", size=(24, 24), dynamic=False))
    assert handle.required_size == 24
    protocol = Protocol(name="test", task="denoise", size=32, iterations=2)
    with pytest.raises(IncompatibleModelError, match=r"accepts only 24 x 24 inputs.*--size 24, or re-export"):
        check_compatible(handle, protocol)
    check_compatible(handle, protocol.replace(size=24))


def test_onnx_fixed_size_of_upscaler_suggests_output_size(tmp_path: Path) -> None:
    handle = load_model(export_onnx(tiny_upscaler(1), tmp_path / "fixed.onnx", size=(8, 8), dynamic=False))
    assert (handle.required_size, handle.scale) == (8, 4)
    with pytest.raises(IncompatibleModelError, match=r"--size 32"):
        check_compatible(handle, get_protocol("quick", "sr", scale=4))


def test_onnx_fixed_non_square_rejected(tmp_path: Path) -> None:
    path = export_onnx(tiny_denoiser(1), tmp_path / "wide.onnx", size=(16, 24), dynamic=False)
    with pytest.raises(IncompatibleModelError, match="square images; re-export it with dynamic height and width"):
        load_model(path)


@pytest.mark.parametrize(
    ("op_type", "domain", "named"),
    [("Mish", "", r"Mish \(opset 18\)"), ("Sharpen", "com.acme", r"com.acme:Sharpen \(opset 1\)")],
)
def test_onnx_unsupported_operator_named(tmp_path: Path, op_type: str, domain: str, named: str) -> None:
    path = save_onnx_graph(tmp_path / "odd.onnx", op_type, domain)
    with pytest.raises(ModelLoadError, match=rf"operators that onnx2torch cannot convert: {named}; re-export") as caught:
        load_model(path)
    assert "\n" not in str(caught.value)


def test_onnx_without_onnx2torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = export_onnx(tiny_denoiser(1), tmp_path / "model.onnx")
    monkeypatch.setitem(sys.modules, "onnx2torch", None)
    with pytest.raises(ModelLoadError, match=r"needs the packages onnx and onnx2torch; install them with .*critprint\[onnx\]"):
        load_model(path)


def test_onnx_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\xff\xfe this is not a protobuf message")
    with pytest.raises(ModelLoadError, match="broken.onnx is not a valid ONNX file"):
        load_model(path)


def test_onnx_classifier_rejected(tmp_path: Path) -> None:
    classifier = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    path = export_onnx(classifier, tmp_path / "classifier.onnx", dynamic=False, size=(32, 32))
    with pytest.raises(IncompatibleModelError, match="image-to-image restoration models only"):
        load_model(path)


# Python architecture plus state dict


def test_arch_unwraps_and_loads(arches: Path, tmp_path: Path) -> None:
    module = tiny_denoiser(3)
    path = tmp_path / "wrapped.pth"
    torch.save({"params_ema": {f"module.{key}": value for key, value in module.state_dict().items()}}, path)
    options = {"in_nc": 3, "out_nc": 3, "nc": 8, "nb": 8, "act_mode": "R"}
    handle = load_model(path, arch=f"{ARCH_MODULE}:dncnn", arch_kwargs=options)
    assert (handle.format, handle.architecture) == ("arch", f"{ARCH_MODULE}:dncnn")
    assert (handle.input_channels, handle.output_channels, handle.scale) == (3, 3, 1)
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    output = handle(image)
    assert torch.equal(output, module.eval()(image))
    output.sum().backward()
    assert image.grad is not None
    assert image.grad.abs().sum() > 0


def test_arch_unknown_to_spandrel_probed(arches: Path, tmp_path: Path) -> None:
    sys.modules.pop(ARCH_MODULE, None)
    from critprint_test_arches import PlainNet  # type: ignore[import-not-found]

    path = tmp_path / "plain.safetensors"
    from critprint.models import save_state_dict

    save_state_dict(PlainNet(channels=1, features=4, scale=2).state_dict(), path)
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        load_model(path)
    handle = load_model(path, arch=f"{ARCH_MODULE}:PlainNet", arch_kwargs={"channels": 1, "features": 4})
    assert (handle.input_channels, handle.output_channels, handle.scale) == (1, 1, 2)


def test_arch_keys_that_look_like_a_wrapper(arches: Path, tmp_path: Path) -> None:
    sys.modules.pop(ARCH_MODULE, None)
    from critprint_test_arches import Wrapped  # type: ignore[import-not-found]

    path = tmp_path / "wrapped.pth"
    torch.save(Wrapped().state_dict(), path)
    assert load_model(path, arch=f"{ARCH_MODULE}:Wrapped").scale == 1


@pytest.mark.parametrize(
    ("layers", "listed"),
    [
        (10, "missing keys model.16.bias, model.16.weight, model.18.bias and 1 more; check"),
        (6, "unexpected keys model.12.bias, model.12.weight, model.14.bias and 1 more; check"),
    ],
)
def test_arch_key_mismatch_listed(arches: Path, model_dir: Path, layers: int, listed: str) -> None:
    options = {"in_nc": 3, "out_nc": 3, "nc": 8, "nb": layers, "act_mode": "R"}
    with pytest.raises(ModelLoadError, match=rf"does not fit --arch {ARCH_MODULE}:dncnn: {listed}") as caught:
        load_model(model_dir / "denoiser_a.safetensors", arch=f"{ARCH_MODULE}:dncnn", arch_kwargs=options)
    assert "check --arch-kwargs" in str(caught.value)


def test_arch_shape_mismatch_listed(arches: Path, model_dir: Path) -> None:
    options = {"in_nc": 3, "out_nc": 3, "nc": 16, "nb": 8, "act_mode": "R"}
    with pytest.raises(ModelLoadError, match=r"shapes differ \(file vs model\) for model.0.bias \(8,\) vs \(16,\), model.0.weight \(8, 3, 3, 3\) vs \(16, 3, 3, 3\)"):
        load_model(model_dir / "denoiser_a.safetensors", arch=f"{ARCH_MODULE}:dncnn", arch_kwargs=options)


@pytest.mark.parametrize(
    ("arch", "kwargs", "error", "message"),
    [
        ("nomodule", None, InvalidInputError, r"invalid --arch 'nomodule': expected package.module:callable"),
        ("pkg.mod:", None, InvalidInputError, r"invalid --arch 'pkg.mod:'"),
        ("critprint_no_such_module:build", None, ModelLoadError,
         r"failed to import module 'critprint_no_such_module' .*; put the folder that contains it on PYTHONPATH"),
        (f"{ARCH_MODULE}:missing", None, ModelLoadError, rf"module '{ARCH_MODULE}' has no attribute 'missing'"),
        (f"{ARCH_MODULE}:NOT_CALLABLE", None, ModelLoadError, r"names a int, not a callable"),
        (f"{ARCH_MODULE}:not_a_network", None, ModelLoadError, r"returned a str, expected a torch.nn.Module"),
        (f"{ARCH_MODULE}:dncnn", {"colour": 3}, ModelLoadError,
         r"calling .*:dncnn with --arch-kwargs \{\"colour\": 3\} raised TypeError: .*; check the keyword arguments"),
    ],
)
def test_arch_bad_specs(
    arches: Path, model_dir: Path, arch: str, kwargs: dict[str, int] | None, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        load_model(model_dir / "denoiser_a.safetensors", arch=arch, arch_kwargs=kwargs)
    assert "\n" not in str(caught.value)


def test_arch_module_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    (tmp_path / "critprint_broken_arch.py").write_text("raise RuntimeError('half-written module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"raised RuntimeError: half-written module; fix the module"):
        load_model(model_dir / "denoiser_a.safetensors", arch="critprint_broken_arch:build")


def test_arch_kwargs_need_arch(model_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="--arch-kwargs was given without --arch"):
        load_model(model_dir / "denoiser_a.safetensors", arch_kwargs={"nc": 8})


def test_arch_rejects_onnx_file(arches: Path, tmp_path: Path) -> None:
    path = export_onnx(tiny_denoiser(1), tmp_path / "model.onnx")
    with pytest.raises(ModelLoadError, match="--arch needs a state-dict checkpoint"):
        load_model(path, arch=f"{ARCH_MODULE}:dncnn")


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", "3", '"nc"'])
def test_arch_kwargs_must_be_object(text: str) -> None:
    with pytest.raises(InvalidInputError, match=r"invalid --arch-kwargs .*expected an object"):
        parse_arch_kwargs(text)


def test_arch_spec_accepts_dotted_attribute() -> None:
    spec = parse_arch_spec("nets.sr:Factory.build")
    assert (spec.module, spec.attribute, str(spec)) == ("nets.sr", "Factory.build", "nets.sr:Factory.build")


# The same model in several formats


@cache
def _source(name: str) -> tuple[ModelHandle, Protocol, Fingerprint]:
    handle = load_model(f"zoo:{name}")
    preset = get_protocol("quick", zoo.get_entry(name).task, scale=handle.scale)
    protocol = preset.replace(size=32, iterations=30)
    return handle, protocol, api.fingerprint_model(handle, protocol)


def _export(name: str, model_format: str, folder: Path) -> ModelHandle:
    source, _, _ = _source(name)
    if model_format == "torchscript":
        path = folder / f"{name}.pt"
        torch.jit.save(torch.jit.trace(source.module, torch.rand(1, 3, 16, 16)), str(path))
        return load_model(path, allow_torchscript=True)
    if model_format == "onnx":
        return load_model(export_onnx(source.module, folder / f"{name}.onnx"))
    path = folder / f"{name}.pth"
    torch.save({"params_ema": source.module.state_dict()}, path)
    options = zoo.get_entry(name).details["architecture_options"]
    return load_model(path, arch=ZOO_ARCHES[name], arch_kwargs=options)


@pytest.mark.parametrize("model_format", ["torchscript", "onnx", "arch"])
@pytest.mark.parametrize("name", ["dncnn", "compact-x4"])
def test_same_model_in_another_format_is_derived(arches: Path, tmp_path: Path, name: str, model_format: str) -> None:
    _, protocol, source = _source(name)
    suspect = _export(name, model_format, tmp_path)
    assert suspect.format == model_format
    result = api.verify(suspect, source, name)
    assert result.verdict == "derived"
    features = api.fingerprint_model(suspect, protocol).features
    assert float((features - source.features).abs().max()) < FEATURE_TOLERANCE


# Command line


def run(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(arg) for arg in args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_verifies_every_format_as_derived(arches: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    code, _, stderr = run("register", "zoo:dncnn", "--name", "dncnn", "--size", "32", "--iterations", "30",
                          "--registry", registry)
    assert code == 0, stderr
    _export("dncnn", "torchscript", tmp_path)
    _export("dncnn", "onnx", tmp_path)
    _export("dncnn", "arch", tmp_path)
    options = json.dumps(zoo.get_entry("dncnn").details["architecture_options"])
    suspects = {
        "torchscript": [tmp_path / "dncnn.pt", "--torchscript"],
        "onnx": [tmp_path / "dncnn.onnx"],
        "arch": [tmp_path / "dncnn.pth", "--arch", ZOO_ARCHES["dncnn"], "--arch-kwargs", options],
    }
    for model_format, arguments in suspects.items():
        code, stdout, stderr = run("verify", *arguments, "--against", "dncnn", "--registry", registry, "--json")
        assert code == 0, f"{model_format}: {stderr}"
        assert json.loads(stdout)["verdict"] == "derived", model_format


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A registry holding the tiny denoiser A as 'x', so verify reaches the model."""
    registry = tmp_path_factory.mktemp("registry")
    code, _, stderr = run("register", model_dir / "denoiser_a.safetensors", "--name", "x", "--size", "24",
                          "--iterations", "5", "--registry", registry)
    assert code == 0, stderr
    return registry


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["--arch", "nomodule"], 2, "invalid --arch 'nomodule'"),
        (["--arch", f"{ARCH_MODULE}:dncnn", "--arch-kwargs", "[1]"], 2, "invalid --arch-kwargs '[1]'"),
        (["--arch", f"{ARCH_MODULE}:dncnn", "--arch-kwargs", "{nc: 8}"], 2, "not JSON"),
        (["--arch-kwargs", "{}"], 2, "--arch-kwargs needs --arch"),
        (["--arch", "critprint_no_such_module:build"], 1, "failed to import module 'critprint_no_such_module'"),
        (["--arch", f"{ARCH_MODULE}:missing"], 1, "has no attribute 'missing'"),
    ],
)
@pytest.mark.parametrize("command", ["register", "verify", "identify"])
def test_cli_arch_errors(
    arches: Path, model_dir: Path, tiny_registry: Path, command: str, arguments: list[str], code: int, message: str
) -> None:
    extra = {"register": ["--name", "y"], "verify": ["--against", "x"], "identify": []}[command]
    status, _, stderr = run(
        command, model_dir / "denoiser_a.safetensors", *extra, *arguments, "--registry", tiny_registry
    )
    assert status == code
    assert message in stderr
    if code == 1:
        assert stderr.startswith("error: ")
        assert stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["register", "verify", "identify"])
def test_cli_help_warns_that_arch_runs_code(command: str) -> None:
    code, stdout, _ = run(command, "--help")
    assert code == 0
    assert "--arch-kwargs" in stdout
    assert "runs its code" in " ".join(stdout.split())
