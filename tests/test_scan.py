"""`critprint scan` end to end: Ray, a killed and resumed scan, a PostgreSQL registry, usage errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tiny_denoiser
from critprint import api, zoo
from critprint.cli import app
from critprint.models import save_state_dict
from critprint.registry import Registry

runner = CliRunner()

# Small protocols so each extraction takes about a second or less.
FAST = ["--size", "32", "--iterations", "30"]


def run(*args: object, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(arg) for arg in args], env=env)
    return result.exit_code, result.stdout, result.stderr


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def local_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A local Ray instance only: no cluster address, its files in a scratch folder (short, for its sockets)."""
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    folder = tempfile.mkdtemp(prefix="cp-ray-")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    yield
    import ray

    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def test_ray_scan_matches_verify(tmp_path: Path, local_ray: None) -> None:
    registry = tmp_path / "registry"
    models = tmp_path / "models"
    models.mkdir()
    for name in ("dncnn", "nafnet"):
        shutil.copy(zoo.model_path(name), models / f"{name}.safetensors")
        code, _, stderr = run("register", f"zoo:{name}", "--name", f"{name}-src", "--registry", registry, *FAST)
        assert code == 0, stderr
        code, _, stderr = run("attack", f"zoo:{name}", "--attack", "prune", "--no-calibrate",
                              "--out", models / f"{name}-pruned.safetensors")
        assert code == 0, stderr
    (models / "corrupt.pth").write_bytes(b"PK\x03\x04 not a checkpoint" * 20)
    out = tmp_path / "results.jsonl"

    code, stdout, stderr = run("scan", models, "--identify", "--task", "denoise", "--executor", "ray",
                               "--workers", "2", "--registry", registry, "--out", out, "--json")

    assert code == 1, stderr
    assert "1 of 5 models failed" in stderr
    assert json.loads(stdout)["ran"] == 5
    lines = {line["name"]: line for line in lines_of(out)}
    assert sorted(lines) == ["corrupt", "dncnn", "dncnn-pruned", "nafnet", "nafnet-pruned"]
    assert len(out.read_text().splitlines()) == 5
    assert (lines["corrupt"]["status"], lines["corrupt"]["error_type"]) == ("error", "ModelLoadError")
    assert "corrupt.pth" in lines["corrupt"]["error"]
    store = Registry(registry)
    for name in ("dncnn", "dncnn-pruned", "nafnet", "nafnet-pruned"):
        line = lines[name]
        assert line["status"] == "ok", line
        assert sorted(match["source"] for match in line["matches"]) == ["dncnn-src", "nafnet-src"]
        for match in line["matches"]:
            expected = api.verify_registered(line["path"], match["source"], store)
            assert match["verdict"] == expected.verdict, match["source"]
            assert match["distance"] == pytest.approx(expected.distance, rel=1e-6, abs=1e-12)
        assert line["derived_from"] == [m["source"] for m in line["matches"] if m["verdict"] == "derived"]
    # The copies are judged derived from their own source, as `verify` judges them.
    assert "dncnn-src" in lines["dncnn"]["derived_from"]
    assert "nafnet-src" in lines["nafnet"]["derived_from"]


def _scan_command(models: Path, registry: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "critprint", "scan", str(models), "--register", "--task", "denoise",
            "--registry", str(registry), "--out", str(out), "--size", "32", "--iterations", "600", "--quiet", *extra]


def test_killed_scan_resumes_with_each_model_once(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    names = [f"model-{index}" for index in range(6)]
    for index, name in enumerate(names):
        save_state_dict(tiny_denoiser(10 + index).state_dict(), models / f"{name}.safetensors")
    registry, out = tmp_path / "registry", tmp_path / "results.jsonl"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}

    process = subprocess.Popen(_scan_command(models, registry, out), env=environment, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    # Kill the scan and its pool workers at once, as a lost machine would.
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    written = out.read_bytes().count(b"\n")
    assert 1 <= written < len(names), f"kill after {written} of {len(names)} lines; the test needs a scan half-way"
    # A kill in the middle of a write leaves a torn last line.
    with out.open("ab") as stream:
        stream.write(b'{"name": "model-5", "status": "o')

    resumed = subprocess.run(_scan_command(models, registry, out, "--resume", "--json"), env=environment,
                             capture_output=True, text=True, timeout=600, check=False)

    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed"] == written
    assert summary["ran"] == len(names) - written
    assert summary["torn_bytes"] == len(b'{"name": "model-5", "status": "o')
    lines = lines_of(out)
    assert sorted(line["name"] for line in lines) == names
    assert {line["status"] for line in lines} == {"ok"}
    assert [entry.name for entry in Registry(registry).entries()] == names
    assert {result.status for result in Registry(registry).check()} == {"ok"}


def test_scan_with_a_postgresql_registry(tmp_path: Path, model_dir: Path, postgres_url: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(model_dir / "denoiser_a.safetensors", models / "alpha.safetensors")
    shutil.copy(model_dir / "denoiser_b.safetensors", models / "beta.safetensors")
    environment = {"CRITPRINT_FILES": str(tmp_path / "files")}

    code, _, stderr = run("scan", models, "--register", "--task", "denoise", "--workers", "2",
                          "--registry", postgres_url, "--out", tmp_path / "register.jsonl", *FAST, env=environment)
    assert code == 0, stderr
    code, _, stderr = run("scan", model_dir / "denoiser_a.pth", "--identify", "--task", "denoise",
                          "--registry", postgres_url, "--out", tmp_path / "identify.jsonl", env=environment)
    assert code == 0, stderr
    code, stdout, stderr = run("check", "--registry", postgres_url, "--json", env=environment)

    assert code == 0, stderr
    assert sorted(item["name"] for item in json.loads(stdout)) == ["alpha", "beta"]
    assert {line["name"]: line["status"] for line in lines_of(tmp_path / "register.jsonl")} == {"alpha": "ok", "beta": "ok"}
    (identified,) = lines_of(tmp_path / "identify.jsonl")
    assert "alpha" in identified["derived_from"]
    assert [match["distance"] for match in identified["matches"] if match["source"] == "alpha"] == [0.0]


@pytest.mark.parametrize(("args", "code", "message"), [
    ([], 2, "pass exactly one of --register or --identify"),
    (["--register", "--identify"], 2, "pass exactly one of --register or --identify"),
    (["--identify", "--executor", "slurm"], 2, "unknown --executor 'slurm'; valid executors are local, ray"),
    (["--identify", "--ray-address", "127.0.0.1:6379"], 2, "--ray-address needs --executor ray"),
    (["--identify", "--size", "32"], 2, "--size sets how --register extracts"),
    (["--register", "--top", "3"], 2, "--top needs --identify"),
    (["--identify", "--task", "colourise"], 1, "invalid task 'colourise': expected one of"),
])
def test_usage_errors(tmp_path: Path, model_dir: Path, args: list[str], code: int, message: str) -> None:
    result = run("scan", model_dir / "denoiser_a.pth", *args, "--out", tmp_path / "out.jsonl", "--registry", tmp_path)
    assert result[0] == code, result[2]
    assert message in result[2]
    assert not (tmp_path / "out.jsonl").exists()


def test_missing_source_is_one_line(tmp_path: Path) -> None:
    code, _, stderr = run("scan", tmp_path / "nowhere", "--identify", "--out", tmp_path / "out.jsonl")
    assert code == 1
    assert stderr.strip().splitlines() == [
        f"error: scan source '{tmp_path / 'nowhere'}' does not exist; pass model files, folders or a .jsonl manifest"
    ]


def test_identify_against_an_empty_registry_rejected(tmp_path: Path, model_dir: Path) -> None:
    code, _, stderr = run("scan", model_dir / "denoiser_a.pth", "--identify", "--out", tmp_path / "out.jsonl",
                          "--registry", tmp_path / "empty")
    assert code == 1
    assert f"registry {tmp_path / 'empty'} contains no fingerprint to identify models against" in stderr


def test_database_registry_without_files_rejected(tmp_path: Path, model_dir: Path) -> None:
    code, _, stderr = run("scan", model_dir / "denoiser_a.pth", "--register", "--out", tmp_path / "out.jsonl",
                          "--registry", "postgresql://critprint@127.0.0.1:1/none")
    assert code == 1
    assert "needs a place for its fingerprint files; set CRITPRINT_FILES" in stderr


def test_existing_results_need_resume(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"name": "x"}\n')
    code, _, stderr = run("scan", model_dir / "denoiser_a.pth", "--register", "--out", out, "--registry", tmp_path)
    assert code == 1
    assert "already exists; pass --resume to continue that scan or choose another --out" in stderr
    assert out.read_text() == '{"name": "x"}\n'
