"""Model loading: formats, safety, metadata and task inference."""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
import torch

from conftest import tiny_denoiser, tiny_upscaler
from critprint.errors import IncompatibleModelError, ModelLoadError
from critprint.models import file_sha256, infer_task, load_model, read_state_dict


class _MarkerPayload:
    """Unpickling this object would create a file, if any code were run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.touch, (self.marker,))


def test_spandrel_safetensors_metadata(model_dir: Path) -> None:
    handle = load_model(model_dir / "denoiser_a.safetensors")
    assert handle.architecture == "DnCNN"
    assert (handle.input_channels, handle.output_channels, handle.scale) == (3, 3, 1)
    assert handle.format == "spandrel"
    assert handle.sha256 == file_sha256(model_dir / "denoiser_a.safetensors")


def test_pth_and_safetensors_give_same_output(model_dir: Path) -> None:
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    from_pth = load_model(model_dir / "denoiser_a.pth")(image)
    from_safetensors = load_model(model_dir / "denoiser_a.safetensors")(image)
    assert torch.equal(from_pth, from_safetensors)


def test_parameters_frozen_and_input_gets_gradient(model_dir: Path) -> None:
    handle = load_model(model_dir / "denoiser_a.safetensors")
    assert not handle.module.training
    assert all(not parameter.requires_grad for parameter in handle.module.parameters())
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    handle(image).sum().backward()
    assert image.grad is not None
    assert image.grad.abs().sum() > 0


def test_upscaler_scale_detected(model_dir: Path) -> None:
    handle = load_model(model_dir / "upscaler.safetensors")
    assert handle.scale == 4
    assert handle(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)
    assert infer_task(handle) == "sr"


def test_padding_to_size_rule(model_dir: Path) -> None:
    handle = load_model(model_dir / "denoiser_a.safetensors")
    handle.multiple_of = 8
    assert handle(torch.rand(1, 3, 13, 11)).shape == (1, 3, 13, 11)


@pytest.mark.parametrize("factory", [tiny_denoiser, tiny_upscaler])
def test_torchscript_probed(tmp_path: Path, factory) -> None:  # noqa: ANN001
    module = factory(5).eval()
    traced = torch.jit.trace(module, torch.rand(1, 3, 16, 16))
    path = tmp_path / "model.pt"
    torch.jit.save(traced, str(path))
    with pytest.raises(ModelLoadError, match="TorchScript archive.*pass --torchscript"):
        load_model(path)
    handle = load_model(path, allow_torchscript=True)
    expected_scale = 4 if factory is tiny_upscaler else 1
    assert handle.format == "torchscript"
    assert (handle.input_channels, handle.scale) == (3, expected_scale)
    image = torch.rand(1, 3, 8, 8)
    assert torch.allclose(handle(image), module(image), atol=1e-6)


def test_pickle_with_code_rejected_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "hostile.pth"
    torch.save({"model.0.weight": _MarkerPayload(marker)}, path)
    with pytest.raises(ModelLoadError, match="contains Python objects other than tensors"):
        load_model(path)
    assert not marker.exists()


def test_text_file_as_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("these are notes, not weights")
    with pytest.raises(ModelLoadError, match="notes.pth is not a readable PyTorch checkpoint"):
        load_model(path)


def test_whole_pickled_module_rejected(tmp_path: Path) -> None:
    path = tmp_path / "whole.pth"
    torch.save(tiny_denoiser(1), path)
    with pytest.raises(ModelLoadError, match=r"re-save it with torch.save\(model.state_dict\(\), PATH\)"):
        load_model(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found: .*missing.pth; check the path"):
        load_model(tmp_path / "missing.pth")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    path.touch()
    with pytest.raises(ModelLoadError, match="is empty"):
        load_model(path)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ModelLoadError, match="is not a valid safetensors file"):
        load_model(path)


def test_unknown_architecture(tmp_path: Path) -> None:
    path = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        load_model(path)


def test_unsupported_suffix(tmp_path: Path, model_dir: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes((model_dir / "denoiser_a.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match="unsupported model file suffix '.bin'"):
        load_model(path)


def test_unknown_zoo_name_lists_models() -> None:
    with pytest.raises(ModelLoadError, match="unknown bundled model 'nope'; expected one of: .*dncnn"):
        load_model("zoo:nope")


def test_read_state_dict_roundtrip(model_dir: Path) -> None:
    state = read_state_dict(model_dir / "denoiser_a.pth")
    assert torch.equal(state["model.0.weight"], tiny_denoiser(1).state_dict()["model.0.weight"])


def test_task_inference(model_dir: Path) -> None:
    denoiser = load_model(model_dir / "denoiser_a.safetensors")
    assert infer_task(denoiser) == "denoise"
    upscaler = load_model(model_dir / "upscaler.safetensors")
    with pytest.raises(IncompatibleModelError, match="its task is sr, not denoise"):
        infer_task(upscaler, "denoise")
    with pytest.raises(IncompatibleModelError, match="cannot be an sr model"):
        infer_task(denoiser, "sr")


def test_task_required_when_unknown(tmp_path: Path) -> None:
    torch.manual_seed(0)
    from spandrel.architectures.Compact import Compact

    path = tmp_path / "compact1.safetensors"
    from critprint.models import save_state_dict

    save_state_dict(Compact(num_feat=8, num_conv=2, upscale=1).state_dict(), path)
    handle = load_model(path)
    with pytest.raises(IncompatibleModelError, match="pass --task denoise"):
        infer_task(handle)
    assert infer_task(handle, "denoise") == "denoise"


def test_plksr_passes_gradient_to_input() -> None:
    # PLKSR's eval-mode partial convolution writes into its input in place.
    handle = load_model("zoo:plksr-dn")
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    handle.module(image).sum().backward()
    assert image.grad is not None
    assert torch.isfinite(image.grad).all()
