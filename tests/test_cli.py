"""The command-line interface: outputs, exit codes and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from critprint.cli import app
from critprint.decision import threshold
from critprint.fingerprint import load_fingerprint
from critprint.protocol import DEFAULT_PROTOCOL, get_protocol

runner = CliRunner()

# A small protocol so each extraction takes well under a second.
FAST = ["--size", "24", "--iterations", "20"]


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(arg) for arg in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture()
def registered(tmp_path: Path, model_dir: Path) -> Path:
    """A registry holding the tiny denoiser A under the name 'alpha'."""
    registry = tmp_path / "registry"
    code, _, stderr = run(
        "register", model_dir / "denoiser_a.safetensors", "--name", "alpha", "--registry", registry, *FAST
    )
    assert code == 0, stderr
    return registry


def test_register_json_fields(tmp_path: Path, model_dir: Path) -> None:
    code, stdout, _ = run(
        "register", model_dir / "denoiser_a.safetensors", "--name", "alpha",
        "--registry", tmp_path, "--json", *FAST,
    )
    assert code == 0
    record = json.loads(stdout)
    assert record["name"] == "alpha"
    assert record["task"] == "denoise"
    assert record["protocol"] == "custom"
    assert len(record["model_sha256"]) == 64
    assert Path(record["path"]).exists()


def test_verify_same_model_derived(registered: Path, model_dir: Path) -> None:
    code, stdout, _ = run(
        "verify", model_dir / "denoiser_a.pth", "--against", "alpha", "--registry", registered, "--json"
    )
    assert code == 0
    result = json.loads(stdout)
    for key in ("source", "suspect", "task", "distance", "threshold", "ratio", "probability", "verdict",
                "protocol", "elapsed_seconds"):
        assert key in result
    assert result["verdict"] == "derived"
    assert result["distance"] == 0.0
    # The default protocol's histograms: L = 3 * colour bins + LGP points + 2, eta for that L.
    features = get_protocol(DEFAULT_PROTOCOL, "denoise").features
    assert result["threshold"] == pytest.approx(threshold(features.length(3)), rel=1e-12)


def test_verify_with_fingerprint_file(registered: Path, model_dir: Path) -> None:
    _, stdout, _ = run("show", "alpha", "--registry", registered, "--json")
    path = json.loads(stdout)["path"]
    code, stdout, _ = run("verify", model_dir / "denoiser_b.safetensors", "--fingerprint", path, "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["suspect"].endswith("denoiser_b.safetensors")
    assert result["distance"] > 0


def test_verify_table_output(registered: Path, model_dir: Path) -> None:
    code, stdout, _ = run("verify", model_dir / "denoiser_a.pth", "--against", "alpha", "--registry", registered)
    assert code == 0
    assert "derived" in stdout
    assert "d/eta" in stdout


def test_identify_closest_first(registered: Path, model_dir: Path) -> None:
    code, _, _ = run(
        "register", model_dir / "denoiser_b.safetensors", "--name", "beta", "--registry", registered, *FAST
    )
    assert code == 0
    code, stdout, _ = run("identify", model_dir / "denoiser_a.pth", "--registry", registered, "--json")
    assert code == 0
    results = json.loads(stdout)
    assert [item["source"] for item in results] == ["alpha", "beta"]
    assert results[0]["distance"] <= results[1]["distance"]
    code, stdout, _ = run("identify", model_dir / "denoiser_a.pth", "--registry", registered, "--json", "--top", "1")
    assert len(json.loads(stdout)) == 1


def test_identify_skips_other_tasks(registered: Path, model_dir: Path) -> None:
    code, stdout, _ = run("identify", model_dir / "upscaler.safetensors", "--registry", registered, "--json")
    assert code == 0
    assert json.loads(stdout) == []


def test_list_show_export_remove(registered: Path, tmp_path: Path) -> None:
    code, stdout, _ = run("list", "--registry", registered, "--json")
    assert [item["name"] for item in json.loads(stdout)] == ["alpha"]
    code, stdout, _ = run("show", "alpha", "--registry", registered, "--json")
    details = json.loads(stdout)
    assert details["protocol_settings"]["size"] == 24
    assert len(details["features"]) == get_protocol(DEFAULT_PROTOCOL, "denoise").features.length(3)
    picture = tmp_path / "alpha.png"
    code, _, _ = run("export", "alpha", "--out", picture, "--registry", registered)
    assert code == 0
    from PIL import Image

    with Image.open(picture) as image:
        assert image.size == (24, 24)
        assert image.mode == "RGB"
    copy = tmp_path / "alpha.safetensors"
    code, _, _ = run("export", "alpha", "--out", copy, "--registry", registered)
    assert code == 0
    assert load_fingerprint(copy).features.tolist() == details["features"]
    code, _, _ = run("remove", "alpha", "--registry", registered)
    assert code == 0
    _, stdout, _ = run("list", "--registry", registered, "--json")
    assert json.loads(stdout) == []


def test_zoo_list_and_path() -> None:
    code, stdout, _ = run("zoo", "list", "--json")
    assert code == 0
    models = json.loads(stdout)
    assert {"name", "task", "architecture", "scale"} <= set(models[0])
    tasks = {item["task"] for item in models}
    assert tasks == {"denoise", "sr", "deblur", "lowlight", "derain", "jpeg"}
    code, stdout, _ = run("zoo", "path", models[0]["name"])
    assert code == 0
    assert Path(stdout.strip()).is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["verify", "missing.pth", "--against", "alpha"], "model file not found: missing.pth"),
        (["verify", "{model}", "--against", "ghost"], "no fingerprint named 'ghost'"),
        (["register", "{model}", "--name", "alpha", *FAST], "'alpha' is already registered"),
        (["register", "{model}", "--name", "bad name", *FAST], "invalid fingerprint name 'bad name'"),
        (["register", "{model}", "--name", "x", "--task", "sr", *FAST], "cannot be an sr model"),
        (["register", "{upscaler}", "--name", "x", "--task", "denoise", *FAST], "its task is sr"),
        (["verify", "{upscaler}", "--against", "alpha"], "is a denoise fingerprint of a scale-1 model"),
        (["show", "ghost"], "no fingerprint named 'ghost'"),
        (["remove", "ghost"], "no fingerprint named 'ghost'"),
        (["zoo", "path", "ghost"], "unknown bundled model 'ghost'"),
        (["verify", "{model}", "--fingerprint", "missing.safetensors"], "fingerprint file not found"),
        (["register", "{model}", "--name", "x", "--device", "gpu", *FAST], "invalid device 'gpu'"),
        (["verify", "{model}", "--against", "alpha", "--autocast", "int8"], "invalid autocast 'int8'"),
        (["identify", "{model}", "--device", "tpu"], "invalid device 'tpu'"),
    ],
)
def test_failures_exit_one_with_one_line(
    registered: Path, model_dir: Path, arguments: list[str], message: str
) -> None:
    values = {"model": str(model_dir / "denoiser_a.safetensors"), "upscaler": str(model_dir / "upscaler.safetensors")}
    filled = [argument.format(**values) for argument in arguments]
    if filled[0] not in ("zoo",):
        filled += ["--registry", str(registered)]
    code, stdout, stderr = run(*filled)
    assert code == 1
    assert message in stderr
    assert stderr.startswith("error: ")
    assert stderr.count("\n") == 1
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "arguments",
    [
        ["register", "m.pth"],
        ["verify", "m.pth"],
        ["verify", "m.pth", "--against", "a", "--fingerprint", "f.safetensors"],
        ["export", "alpha", "--out", "picture.jpg"],
        ["export", "alpha"],
        ["export", "alpha", "--out", "a.png", "--bundle", "b.safetensors"],
        ["import"],
        ["identify", "m.pth", "--top", "0"],
        ["unknown-command"],
    ],
)
def test_usage_errors_exit_two(arguments: list[str]) -> None:
    code, _, _ = run(*arguments)
    assert code == 2


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", str(tmp_path / "missing.pth"), "--against", "a", "--debug"])
    assert result.exit_code == 1
    assert result.exception is not None
    assert type(result.exception).__name__ == "NameNotFoundError"


def test_registry_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("not a folder")
    code, _, stderr = run("list", "--registry", path)
    assert code == 1
    assert "is a file; pass a folder with --registry DIR" in stderr


def test_register_task_option_used(tmp_path: Path) -> None:
    import torch
    from spandrel.architectures.Compact import Compact

    from critprint.models import save_state_dict

    torch.manual_seed(0)
    path = save_state_dict(Compact(num_feat=8, num_conv=2, upscale=1).state_dict(), tmp_path / "plain.safetensors")
    code, _, stderr = run("register", path, "--name", "plain", "--registry", tmp_path / "r", *FAST)
    assert code == 1
    assert "pass --task denoise" in stderr
    code, stdout, stderr = run(
        "register", path, "--name", "plain", "--task", "denoise", "--registry", tmp_path / "r", "--json", *FAST
    )
    assert code == 0, stderr
    assert json.loads(stdout)["task"] == "denoise"


def test_fingerprint_file_keeps_registered_name(registered: Path, model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    run("export", "alpha", "--out", copy, "--registry", registered)
    code, stdout, _ = run("verify", model_dir / "denoiser_a.pth", "--fingerprint", copy, "--json")
    assert code == 0
    assert json.loads(stdout)["source"] == "alpha"


def test_zoo_path_json() -> None:
    code, stdout, _ = run("zoo", "path", "dncnn", "--json")
    assert code == 0
    assert Path(json.loads(stdout)["path"]).is_file()


def test_check_exit_status(registered: Path) -> None:
    code, stdout, _ = run("check", "--registry", registered, "--json")
    assert code == 0
    assert json.loads(stdout) == [{"name": "alpha", "status": "ok", "message": ""}]
    _, stdout, _ = run("show", "alpha", "--registry", registered, "--json")
    path = Path(json.loads(stdout)["path"])
    path.write_bytes(path.read_bytes() + b"tampered")
    code, stdout, _ = run("check", "--registry", registered)
    assert code == 1
    assert "alpha: altered" in stdout
    code, _, stderr = run("verify", path, "--against", "alpha", "--registry", registered)
    assert code == 1
    assert "altered since registration" in stderr


def test_bundle_moves_record_intact(registered: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "alpha.bundle"
    code, _, _ = run("export", "alpha", "--bundle", bundle, "--registry", registered)
    assert code == 0
    other = tmp_path / "other"
    code, stdout, _ = run("import", bundle, "--registry", other, "--json")
    assert code == 0
    assert json.loads(stdout)["name"] == "alpha"
    _, original, _ = run("show", "alpha", "--registry", registered, "--json")
    _, copied, _ = run("show", "alpha", "--registry", other, "--json")
    before = json.loads(original)
    after = json.loads(copied)
    for key in ("features", "protocol_settings", "model", "versions", "created_at", "file_sha256", "model_sha256"):
        assert after[key] == before[key], key
    code, _, stderr = run("import", bundle, "--registry", other)
    assert code == 1
    assert "'alpha' is already registered" in stderr
    code, stdout, _ = run("import", bundle, "--name", "alpha-copy", "--registry", other, "--json")
    assert code == 0
    assert json.loads(stdout)["name"] == "alpha-copy"


def test_import_rejects_non_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "notes.safetensors"
    path.write_text("not a fingerprint")
    code, _, stderr = run("import", path, "--registry", tmp_path / "r")
    assert code == 1
    assert "corrupt fingerprint file" in stderr


def test_torchscript_needs_flag(registered: Path, tmp_path: Path) -> None:
    import torch

    from conftest import tiny_denoiser

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(tiny_denoiser(1).eval(), torch.rand(1, 3, 16, 16)), str(path))
    code, _, stderr = run("verify", path, "--against", "alpha", "--registry", registered)
    assert code == 1
    assert "pass --torchscript" in stderr
    code, stdout, stderr = run("verify", path, "--against", "alpha", "--registry", registered, "--torchscript", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["verdict"] == "derived"


@pytest.fixture()
def bad_files(tmp_path: Path, registered: Path) -> dict[str, str]:
    """Files a user might pass by mistake, by label."""
    empty = tmp_path / "empty.pth"
    empty.touch()
    text = tmp_path / "notes.pth"
    text.write_text("these are notes, not weights")
    linear = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(4, 2).state_dict(), linear)
    _, stdout, _ = run("show", "alpha", "--registry", registered, "--json")
    record = Path(json.loads(stdout)["path"]).read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(record[: len(record) // 2])
    from safetensors.torch import load, save

    header = json.loads(record[8 : 8 + int.from_bytes(record[:8], "little")])
    metadata = json.loads(header["__metadata__"]["critprint"])
    metadata["format_version"] = 99
    newer = tmp_path / "newer.safetensors"
    newer.write_bytes(save(load(record), metadata={"critprint": json.dumps(metadata)}))
    nan_model = tmp_path / "nan.pt"
    torch.jit.save(torch.jit.trace(_NanModel().eval(), torch.rand(1, 3, 16, 16)), str(nan_model))
    shrinker = tmp_path / "shrinker.pt"
    torch.jit.save(torch.jit.trace(_Shrinker().eval(), torch.rand(1, 3, 16, 16)), str(shrinker))
    return {
        "empty": str(empty),
        "text": str(text),
        "folder": str(tmp_path),
        "linear": str(linear),
        "truncated": str(truncated),
        "newer": str(newer),
        "nan": str(nan_model),
        "shrinker": str(shrinker),
    }


class _NanModel(torch.nn.Module):
    """An image-to-image model that returns NaN everywhere."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * float("nan")


class _Shrinker(torch.nn.Module):
    """A model whose output is half the size of its input, which fits no scale-1 task."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(image, 2)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["verify", "{empty}", "--against", "alpha"], "is empty"),
        (["verify", "{text}", "--against", "alpha"], "is not a readable PyTorch checkpoint"),
        (["verify", "{folder}", "--against", "alpha"], "is a directory"),
        (["verify", "{linear}", "--against", "alpha"], "unknown architecture"),
        (["verify", "{linear}", "--fingerprint", "{truncated}"], "corrupt fingerprint file"),
        (["import", "{truncated}"], "corrupt fingerprint file"),
        (["register", "{text}", "--name", "beta"], "is not a readable PyTorch checkpoint"),
        (["verify", "{linear}", "--fingerprint", "{newer}"], "newer than the supported"),
        (["register", "{nan}", "--name", "beta", "--task", "denoise", "--torchscript", *FAST], "non-finite"),
        (["register", "{shrinker}", "--name", "beta", "--task", "denoise", "--torchscript", *FAST], "not an integer upscale"),
        (["register", "zoo:swinir-x4", "--name", "beta", "--size", "32"], "below the minimum"),
        (["register", "zoo:dncnn", "--name", "alpha", *FAST], "'alpha' is already registered"),
        (["register", "zoo:dncnn", "--name", "beta", "--protocol", "fast"], "invalid protocol 'fast'"),
        (["register", "zoo:dncnn", "--name", "beta", "--task", "inpaint"], "invalid task 'inpaint'"),
        (["identify", "zoo:dncnn", "--task", "inpaint"], "invalid task 'inpaint'"),
        (["demo", "--protocol", "fast"], "invalid protocol 'fast'"),
        (["bench", "--quick", "--task", "inpaint", "--out", "{folder}"], "invalid task 'inpaint'"),
    ],
)
def test_bad_files_exit_one_with_one_line(
    registered: Path, bad_files: dict[str, str], arguments: list[str], message: str
) -> None:
    filled = [argument.format(**bad_files) for argument in arguments]
    if filled[0] not in ("demo", "bench"):
        filled += ["--registry", str(registered)]
    code, _, stderr = run(*filled)
    assert code == 1
    assert message in stderr
    assert stderr.count("\n") == 1
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("number", "reason"),
    [(28, "No space left on device"), (13, "Permission denied")],  # ENOSPC, EACCES
)
def test_unwritable_registry_reported(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, number: int, reason: str
) -> None:
    # A read-only folder cannot be simulated with permissions when the tests run as root.
    import critprint.registry as registry_module

    def fail(path: Path, data: bytes) -> None:
        raise OSError(number, reason, str(path))

    monkeypatch.setattr(registry_module, "atomic_write_bytes", fail)
    code, _, stderr = run(
        "register", model_dir / "denoiser_a.safetensors", "--name", "alpha", "--registry", tmp_path, *FAST
    )
    assert code == 1
    assert f"{reason}; check free space and permissions" in stderr
    assert stderr.count("\n") == 1
    assert list((tmp_path / "fingerprints").iterdir()) == []


def test_classifier_rejected(tmp_path: Path) -> None:
    import torch

    classifier = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10)
    )
    path = tmp_path / "classifier.pt"
    torch.jit.save(torch.jit.trace(classifier.eval(), torch.rand(1, 3, 32, 32)), str(path))
    code, _, stderr = run("register", path, "--name", "x", "--task", "denoise", "--torchscript", "--registry", tmp_path)
    assert code == 1
    assert "image-to-image restoration models only" in stderr
    assert stderr.count("\n") == 1


def test_attack_writes_a_loadable_copy(tmp_path: Path) -> None:
    from critprint.models import load_model

    out = tmp_path / "pruned.safetensors"
    code, stdout, stderr = run("attack", "zoo:compact-x4", "--attack", "prune", "--out", out, "--json", "--quiet")
    assert code == 0, stderr
    record = json.loads(stdout)
    assert record["attack"] == "prune"
    assert record["strength"] == pytest.approx(0.05)
    assert record["within_budget"] is True
    assert record["psnr_change_db"] == pytest.approx(record["psnr_after_db"] - record["psnr_before_db"])
    copy = load_model(out)
    original = load_model("zoo:compact-x4")
    assert (copy.architecture, copy.scale) == (original.architecture, original.scale)
    assert copy.sha256 != original.sha256


def test_attack_without_calibration_keeps_the_strength(tmp_path: Path) -> None:
    out = tmp_path / "noisy.safetensors"
    code, stdout, stderr = run(
        "attack", "zoo:dncnn", "--attack", "weight-noise", "--strength", "2", "--no-calibrate",
        "--out", out, "--json",
    )
    assert code == 0, stderr
    record = json.loads(stdout)
    assert record["strength"] == 2.0
    assert len(record["tried"]) == 1
    assert record["within_budget"] is False


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["--attack", "prune", "--out", "copy.pth"], 2, "expected a .safetensors file name"),
        (["--attack", "melt", "--out", "copy.safetensors"], 2, "melt"),
        (["--attack", "prune", "--strength", "1.5", "--out", "copy.safetensors"], 1, "1.5"),
    ],
)
def test_attack_rejects_bad_arguments(tmp_path: Path, arguments: list[str], code: int, message: str) -> None:
    filled = [str(tmp_path / item) if item.startswith("copy.") else item for item in arguments]
    exit_code, stdout, stderr = run("attack", "zoo:dncnn", *filled)
    assert exit_code == code
    assert message in stderr + stdout
    assert not list(tmp_path.iterdir())
