"""Shared fixtures: tiny randomly initialised models and a fast protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DnCNN import DnCNN

from critprint.models import save_state_dict
from critprint.protocol import Protocol


def tiny_denoiser(seed: int) -> DnCNN:
    """Return an 8-layer, 8-channel DnCNN (the fewest layers spandrel detects)."""
    torch.manual_seed(seed)
    return DnCNN(in_nc=3, out_nc=3, nc=8, nb=8, act_mode="R")


def tiny_upscaler(seed: int) -> Compact:
    """Return an x4 Compact model with 8 features and 2 convolutions."""
    torch.manual_seed(seed)
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default registry at a scratch folder, never the user's own."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("CRITPRINT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with tiny models: two independent denoisers and one x4 upscaler."""
    folder = tmp_path_factory.mktemp("models")
    save_state_dict(tiny_denoiser(1).state_dict(), folder / "denoiser_a.safetensors")
    save_state_dict(tiny_denoiser(2).state_dict(), folder / "denoiser_b.safetensors")
    torch.save(tiny_denoiser(1).state_dict(), folder / "denoiser_a.pth")
    save_state_dict(tiny_upscaler(3).state_dict(), folder / "upscaler.safetensors")
    return folder


@pytest.fixture()
def fast_denoise() -> Protocol:
    """A denoising protocol small enough for unit tests (24 px, 20 steps)."""
    return Protocol(name="test", task="denoise", size=24, iterations=20)


@pytest.fixture()
def fast_sr() -> Protocol:
    """An x4 super-resolution protocol for unit tests (32 px, 20 steps)."""
    return Protocol(name="test", task="sr", size=32, iterations=20, scale=4, noise_sigma=0.0)
