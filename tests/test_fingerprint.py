"""The fingerprint file format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from critprint.api import fingerprint_model
from critprint.errors import FingerprintFormatError
from critprint.fingerprint import FORMAT_VERSION, load_fingerprint, save_fingerprint
from critprint.protocol import Protocol


@pytest.fixture(scope="module")
def record(model_dir: Path):  # noqa: ANN201
    protocol = Protocol(name="test", task="denoise", size=24, iterations=20)
    return fingerprint_model(model_dir / "denoiser_a.safetensors", protocol)


def test_round_trip(tmp_path: Path, record) -> None:  # noqa: ANN001
    path = save_fingerprint(record, tmp_path / "a.safetensors")
    loaded = load_fingerprint(path)
    assert torch.equal(loaded.critical_image, record.critical_image)
    assert torch.equal(loaded.features, record.features)
    assert loaded.protocol == record.protocol
    assert loaded.model == record.model
    assert loaded.versions["torch"] == torch.__version__
    assert loaded.created_at == record.created_at


def test_same_model_gives_identical_record(record, model_dir: Path) -> None:  # noqa: ANN001
    again = fingerprint_model(model_dir / "denoiser_a.safetensors", record.protocol)
    assert torch.equal(again.critical_image, record.critical_image)
    assert torch.equal(again.features, record.features)
    assert again.protocol == record.protocol
    assert again.model == record.model
    assert again.loss == record.loss


def test_gray_model_has_22_features(tmp_path: Path) -> None:
    from spandrel.architectures.DnCNN import DnCNN

    from critprint.models import save_state_dict

    torch.manual_seed(0)
    path = save_state_dict(DnCNN(in_nc=1, out_nc=1, nc=8, nb=8).state_dict(), tmp_path / "gray.safetensors")
    gray = fingerprint_model(path, Protocol(name="test", task="denoise", size=24, iterations=5))
    assert gray.critical_image.shape == (1, 24, 24)
    assert gray.features.shape == (22,)
    assert gray.model.input_channels == 1


def test_record_holds_identity(record, model_dir: Path) -> None:  # noqa: ANN001
    assert record.model.architecture == "DnCNN"
    assert len(record.model.sha256) == 64
    assert record.features.shape == (30,)


def test_no_temporary_file_left(tmp_path: Path, record) -> None:  # noqa: ANN001
    save_fingerprint(record, tmp_path / "a.safetensors")
    assert [item.name for item in tmp_path.iterdir()] == ["a.safetensors"]


def test_truncated_file_rejected(tmp_path: Path, record) -> None:  # noqa: ANN001
    path = save_fingerprint(record, tmp_path / "a.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(FingerprintFormatError, match="corrupt fingerprint file"):
        load_fingerprint(path)


def test_missing_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(FingerprintFormatError, match="fingerprint file not found"):
        load_fingerprint(tmp_path / "missing.safetensors")


def test_plain_safetensors_rejected(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(FingerprintFormatError, match="not a critprint fingerprint"):
        load_fingerprint(path)


def test_newer_version_rejected(tmp_path: Path, record) -> None:  # noqa: ANN001
    from safetensors.torch import save_file

    metadata = record.metadata()
    metadata["format_version"] = FORMAT_VERSION + 1
    path = tmp_path / "future.safetensors"
    save_file(
        {"critical_image": record.critical_image, "features": record.features},
        str(path),
        metadata={"critprint": json.dumps(metadata)},
    )
    with pytest.raises(FingerprintFormatError, match=f"format version {FORMAT_VERSION + 1}.*upgrade critprint"):
        load_fingerprint(path)
