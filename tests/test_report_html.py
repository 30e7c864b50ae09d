"""The evidence report: self-contained HTML that renders with its images in headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from critprint.api import verify_detailed
from critprint.attacks.pruning import prune_magnitude
from critprint.calibration import calibrate_references, save_calibration
from critprint.cli import app
from critprint.fingerprint import fingerprint_bytes, now_utc, software_versions
from critprint.api import fingerprint_model
from critprint.models import read_state_dict, save_state_dict
from critprint.protocol import Protocol
from critprint.report_html import Evidence, render_report
from critprint.query import model_query
from critprint.models import load_model
from critprint.verdict import calibrated_verdict, verify_query
from tests.conftest import tiny_denoiser

runner = CliRunner()

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Written into a copy of the report, never into the report itself: it lists every image's decoded size.
CHECK_SCRIPT = (
    "<script>window.addEventListener('load', () => { const p = document.createElement('pre'); p.id = 'render-check';"
    " p.textContent = [...document.images].map(i => i.id + ':' + i.naturalWidth + 'x' + i.naturalHeight).join(' ');"
    " document.body.appendChild(p); });</script>"
)


def _chromium() -> str:
    """Return the Chromium executable, or skip; CI sets CRITPRINT_REQUIRE_CHROMIUM so that it fails instead."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CRITPRINT_REQUIRE_CHROMIUM"):
        pytest.fail("chromium not found but CRITPRINT_REQUIRE_CHROMIUM is set; apt-get install -y chromium")
    pytest.skip("chromium not installed (apt-get install -y chromium); CI installs it")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("report")
    protocol = Protocol(name="test", task="denoise", size=24, iterations=20)
    references = [save_state_dict(tiny_denoiser(seed).state_dict(), folder / f"ref{seed}.safetensors")
                  for seed in (1, 2, 3)]
    calibration = calibrate_references(references, protocol, note="three tiny denoisers")
    pruned = save_state_dict(prune_magnitude(read_state_dict(references[0]), 0.05), folder / "pruned.safetensors")
    source = fingerprint_model(references[0], protocol)
    return {"folder": folder, "references": references, "calibration": calibration, "pruned": pruned,
            "source": source, "protocol": protocol}


@pytest.fixture(scope="module")
def report_html(setup: dict) -> str:
    source, calibration = setup["source"], setup["calibration"]
    verification, image, features = verify_detailed(setup["pruned"], source, "ref1")
    query = verify_query(model_query(load_model(setup["pruned"]), source.protocol), source, calibration,
                         source_name="ref1", suspect_label=str(setup["pruned"]))
    evidence = Evidence(source_name="ref1", source=source, suspect_image=image, suspect_features=features,
                        verification=verification, calibrated=calibrated_verdict(verification, calibration),
                        calibration=calibration, query=query, created_at=now_utc(), versions=software_versions())
    return render_report(evidence)


def test_report_refers_to_no_url(report_html: str) -> None:
    assert "http:" not in report_html
    assert "https:" not in report_html
    assert "<link" not in report_html
    assert "<script" not in report_html
    sources = re.findall(r'src="([^"]*)"', report_html)
    assert len(sources) == 2
    assert all(value.startswith("data:image/png;base64,") for value in sources)


def test_report_embeds_decodable_images(report_html: str) -> None:
    for value in re.findall(r'src="data:image/png;base64,([^"]*)"', report_html):
        with Image.open(io.BytesIO(base64.b64decode(value))) as picture:
            assert picture.size == (240, 240)  # 24 px enlarged ten times


def test_report_states_hashes_protocol_and_verdicts(report_html: str, setup: dict) -> None:
    source = setup["source"]
    assert source.model.sha256 in report_html
    assert hashlib.sha256(fingerprint_bytes(source)).hexdigest() in report_html
    assert "calibrated rule" in report_html
    assert "query-only" in report_html
    assert report_html.count("<svg") == 3  # histograms, null of d, null of q
    assert "iterations" in report_html
    assert software_versions()["torch"] in report_html


def test_report_renders_in_chromium(report_html: str, tmp_path: Path) -> None:
    chromium = _chromium()
    page = tmp_path / "report-check.html"
    page.write_text(report_html.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="critprint-chromium-") as profile:
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
             page.as_uri()],
            capture_output=True, text=True, timeout=120, check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r'<pre id="render-check">([^<]*)</pre>', result.stdout)
    assert match is not None, result.stdout[-2000:]
    sizes = dict(item.split(":") for item in match.group(1).split())
    assert sizes == {"source-image": "240x240", "suspect-image": "240x240"}


def test_report_screenshot_shows_the_images(report_html: str, tmp_path: Path) -> None:
    chromium = _chromium()
    page = tmp_path / "report.html"
    page.write_text(report_html, encoding="utf-8")
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory(prefix="critprint-chromium-") as profile:
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=900,1400",
             f"--screenshot={shot}", page.as_uri()],
            capture_output=True, text=True, timeout=120, check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(shot) as picture:
        pixels = np.asarray(picture.convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (1400, 900)
    # The critical images are noise-like: many distinct colours, unlike text on white.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000


def test_report_command_writes_html(setup: dict, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    # The quick preset's histograms are those of the fixture's protocol, so the calibration applies.
    result = runner.invoke(app, ["register", str(setup["references"][0]), "--name", "src", "--task", "denoise",
                                 "--protocol", "quick", "--size", "24", "--iterations", "20",
                                 "--registry", str(registry)])
    assert result.exit_code == 0, result.output
    calibration = save_calibration(setup["calibration"], tmp_path / "calibration.json")
    out = tmp_path / "evidence.html"
    result = runner.invoke(app, ["report", str(setup["pruned"]), "--against", "src", "--registry", str(registry),
                                 "--calibration", str(calibration), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    verdicts = json.loads(result.stdout)
    assert verdicts["paper"] == "derived"
    assert verdicts["calibrated"] == "derived"
    assert verdicts["query_only"] == "derived"
    assert verdicts["combined"] == "derived"
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert "combined rule (d x q, FPR 0.01" in html


def test_report_without_calibration_warns(setup: dict, tmp_path: Path) -> None:
    fingerprint = tmp_path / "src.safetensors"
    fingerprint.write_bytes(fingerprint_bytes(setup["source"]))
    out = tmp_path / "evidence.html"
    result = runner.invoke(app, ["report", str(setup["references"][1]), "--fingerprint", str(fingerprint),
                                 "--registry", str(tmp_path / "empty"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "the report shows the paper rule only" in result.stderr
    assert "calibrated rule" not in out.read_text(encoding="utf-8")
