"""Check the bundled zoo weights against manifest.json with spandrel on CPU."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import spandrel
import torch

from critprint.zoo.photos import HELDOUT_PHOTOS, PHOTO_NAMES, load_photo
from critprint.zoo.train import MODEL_SPECS, add_gaussian_noise, psnr

MAX_WEIGHT_BYTES = 2 * 1024 * 1024
MAX_ZOO_BYTES = 40 * 1024 * 1024
EXPECTED_MODELS = set(MODEL_SPECS)


def _zoo_dir() -> Path:
    """Locate the zoo folder from the package if importable, else from the repo layout."""
    try:
        zoo_module = importlib.import_module("critprint.zoo")
    except ImportError:
        zoo_module = None
    module_file = getattr(zoo_module, "__file__", None)
    if module_file is not None:
        return Path(module_file).resolve().parent
    # critprint.zoo without __init__.py is a namespace package with no __file__.
    return Path(__file__).resolve().parents[1] / "src" / "critprint" / "zoo"


ZOO_DIR = _zoo_dir()
MANIFEST: list[dict[str, Any]] = json.loads((ZOO_DIR / "manifest.json").read_text("utf-8"))
ENTRIES_BY_NAME = {entry["name"]: entry for entry in MANIFEST}
DENOISERS = [entry for entry in MANIFEST if entry["task"] == "denoise"]


def _load(entry: dict[str, Any]) -> spandrel.ImageModelDescriptor[Any]:
    descriptor = spandrel.ModelLoader().load_from_file(ZOO_DIR / entry["file"])
    assert isinstance(descriptor, spandrel.ImageModelDescriptor)
    descriptor.eval()
    return descriptor


def test_manifest_lists_expected_models() -> None:
    assert len(MANIFEST) == len(ENTRIES_BY_NAME)
    assert set(ENTRIES_BY_NAME) == EXPECTED_MODELS


def test_zoo_has_six_architectures_per_task() -> None:
    for task in ("denoise", "sr"):
        sources = [entry for entry in MANIFEST if entry["task"] == task and entry["group"] == "source"]
        assert len({entry["architecture"] for entry in sources}) >= 6, task


def test_hard_negative_families_vary_photos_and_seeds() -> None:
    families = {entry["group"] for entry in MANIFEST if entry["group"] != "source"}
    assert families
    for family in families:
        members = [entry for entry in MANIFEST if entry["group"] == family]
        assert len({entry["architecture"] for entry in members}) == 1
        base = next(entry for entry in members if entry["name"] == family)
        photo_sets = {tuple(entry["train_photos"]) for entry in members}
        same_photos = [entry for entry in members if entry["train_photos"] == base["train_photos"]]
        assert len(photo_sets) >= 4, family
        assert len({entry["seed"] for entry in same_photos}) >= 4, family


def test_zoo_fits_the_size_budget() -> None:
    total = sum((ZOO_DIR / entry["file"]).stat().st_size for entry in MANIFEST)
    assert total < MAX_ZOO_BYTES


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda entry: entry["name"])
def test_manifest_photo_split(entry: dict[str, Any]) -> None:
    assert entry["heldout_photos"] == list(HELDOUT_PHOTOS)
    assert set(entry["train_photos"]) <= set(PHOTO_NAMES)
    assert not set(entry["train_photos"]) & set(HELDOUT_PHOTOS)


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda entry: entry["name"])
def test_weight_file_under_size_limit(entry: dict[str, Any]) -> None:
    path = ZOO_DIR / entry["file"]
    assert path.is_file()
    assert path.stat().st_size < MAX_WEIGHT_BYTES


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda entry: entry["name"])
def test_spandrel_detects_manifest_architecture(entry: dict[str, Any]) -> None:
    descriptor = _load(entry)
    assert descriptor.architecture.id == entry["architecture"]
    assert descriptor.scale == entry["scale"]
    assert descriptor.input_channels == entry["channels"]
    assert descriptor.output_channels == entry["channels"]
    parameter_count = sum(tensor.numel() for tensor in descriptor.model.state_dict().values())
    assert parameter_count == entry["parameters"]


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda entry: entry["name"])
def test_forward_pass_shape_and_finite(entry: dict[str, Any]) -> None:
    descriptor = _load(entry)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        output = descriptor(image)
    scale = entry["scale"]
    assert output.shape == (1, 3, 32 * scale, 32 * scale)
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda entry: entry["name"])
def test_manifest_psnr_shows_gain(entry: dict[str, Any]) -> None:
    assert math.isfinite(entry["psnr_degraded_db"])
    assert entry["psnr_restored_db"] > entry["psnr_degraded_db"]


@pytest.mark.parametrize("entry", DENOISERS, ids=lambda entry: entry["name"])
def test_denoiser_improves_heldout_crop(entry: dict[str, Any]) -> None:
    # A 64x64 crop of the cat's face on a photo that no zoo model trained on.
    clean = load_photo("chelsea")[:, 100:164, 150:214].unsqueeze(0)
    noisy = add_gaussian_noise(clean, 25 / 255, torch.Generator().manual_seed(0))
    descriptor = _load(entry)
    with torch.inference_mode():
        restored = descriptor(noisy).clamp(0.0, 1.0)
    assert psnr(restored, clean) > psnr(noisy, clean) + 1.0
