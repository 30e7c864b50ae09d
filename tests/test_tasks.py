"""Every restoration task end to end: presets, custom degradations, SR scales, noise maps."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DnCNN import DnCNN
from spandrel.architectures.DRUNet import DRUNet
from typer.testing import CliRunner

from critprint import api
from critprint.attacks import prune_magnitude
from critprint.cli import app
from critprint.degradations import get_degradation, load_custom_degradation
from critprint.errors import IncompatibleModelError, InvalidInputError
from critprint.extraction import extract_critical_image
from critprint.models import DEFAULT_NOISE_MAP_LEVEL, infer_task, load_model, read_state_dict, save_state_dict
from critprint.protocol import DEFAULT_PROTOCOL, TASKS, Protocol, get_protocol
from critprint.registry import Registry

from conftest import tiny_denoiser

runner = CliRunner()

FAST = ["--size", "24", "--iterations", "20"]
NEW_TASKS = ["deblur", "lowlight", "derain", "jpeg", "custom"]

CUSTOM_MODULE = "critprint_test_custom_degradation"
CUSTOM_SOURCE = '''
import torch
import torch.nn.functional as F

import missing_dependency_for_critprint_tests  # noqa: F401
'''
CUSTOM_FUNCTIONS = '''
import torch
import torch.nn.functional as F


def box_blur(image, generator):
    """A 3 x 3 box blur plus a fixed random offset."""
    channels = image.shape[1]
    weight = torch.full((channels, 1, 3, 3), 1 / 9, dtype=image.dtype)
    offset = torch.rand((), generator=generator, dtype=image.dtype) * 0.1
    return F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), weight, groups=channels) + offset


def halve(image, generator):
    return F.avg_pool2d(image, 2)


def detached(image, generator):
    return image.detach() * 0.5


def wrong_shape(image, generator):
    return image[..., 1:, :]


def integers(image, generator):
    return (image * 255).to(torch.uint8)


def fails(image, generator):
    raise RuntimeError("kernel file missing")


NOT_A_FUNCTION = 3
'''


def run(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(arg) for arg in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture()
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of custom degradations importable as CUSTOM_MODULE."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / f"{CUSTOM_MODULE}.py").write_text(textwrap.dedent(CUSTOM_FUNCTIONS), encoding="utf-8")
    (folder / f"{CUSTOM_MODULE}_broken.py").write_text(textwrap.dedent(CUSTOM_SOURCE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    return CUSTOM_MODULE


@pytest.fixture(scope="module")
def denoisers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny DnCNN and its 10 %-pruned copy."""
    folder = tmp_path_factory.mktemp("task-models")
    source = save_state_dict(tiny_denoiser(11).state_dict(), folder / "source.safetensors")
    pruned = save_state_dict(prune_magnitude(read_state_dict(source), 0.10), folder / "pruned.safetensors")
    return {"source": source, "pruned": pruned}


# ------------------------------------------------------------------- presets


@pytest.mark.parametrize("task", [task for task in TASKS if task != "custom"])
@pytest.mark.parametrize("preset", ["paper", "quick"])
def test_every_task_has_a_preset(task: str, preset: str) -> None:
    protocol = get_protocol(preset, task)  # type: ignore[arg-type]
    assert protocol.task == task
    assert (protocol.learning_rate, protocol.tv_weight, protocol.beta) == (0.1, 1e-3, 1.0)
    assert Protocol.from_dict(json.loads(protocol.to_json())) == protocol


def test_task_preset_values() -> None:
    assert get_protocol("paper", "denoise").noise_sigma == 1.0
    assert get_protocol("paper", "sr", scale=4).noise_sigma == 0.0
    deblur = get_protocol("paper", "deblur")
    assert (deblur.blur_kernel, deblur.blur_sigma, deblur.blur_size, deblur.noise_sigma) == ("gaussian", 1.6, 11, 0.01)
    assert get_protocol("quick", "lowlight").lowlight_gamma == 3.0
    assert get_protocol("quick", "jpeg").jpeg_quality == 10
    custom = get_protocol("quick", "custom", custom_degradation="a.b:c")
    assert (custom.custom_degradation, custom.noise_sigma) == ("a.b:c", 0.0)


@pytest.mark.parametrize(("scale", "quick", "paper"), [(2, 64, 128), (3, 63, 126), (4, 64, 128), (8, 64, 128)])
def test_sr_presets_fit_every_scale(scale: int, quick: int, paper: int) -> None:
    assert get_protocol("quick", "sr", scale=scale).size == quick
    assert get_protocol("paper", "sr", scale=scale).size == paper


def test_old_record_still_loads() -> None:
    # A protocol as the first release wrote it, before the task fields existed.
    old = json.loads(
        '{"alpha":0.05,"beta":1.0,"constraint":"clamp","features":{"colour_bins":4,"lgp_points":16,'
        '"lgp_radius":2.0,"quantize":true},"iterations":500,"learning_rate":0.1,"name":"quick",'
        '"noise_sigma":1.0,"scale":1,"seed":0,"sigma_h":0.015,"size":64,"task":"denoise","tv_weight":0.001}'
    )
    protocol = Protocol.from_dict(old)
    assert protocol == get_protocol("quick", "denoise")
    assert protocol.to_json() == get_protocol("quick", "denoise").to_json()
    assert protocol.to_json() == Protocol.from_dict(json.loads(protocol.to_json())).to_json()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"blur_kernel": "box"}, "invalid blur_kernel 'box': expected one of 'gaussian', 'motion'"),
        ({"blur_sigma": 0.0}, "invalid blur_sigma 0.0: expected a number > 0"),
        ({"blur_size": 8}, "invalid blur_size 8: expected an odd integer >= 1"),
        ({"motion_length": 0}, "invalid motion_length 0"),
        ({"motion_angle": float("nan")}, "invalid motion_angle nan"),
        ({"lowlight_gamma": -1.0}, "invalid lowlight_gamma -1.0"),
        ({"rain_density": 1.5}, "invalid rain_density 1.5: expected a number in \\[0, 1\\]"),
        ({"rain_length": 0}, "invalid rain_length 0"),
        ({"rain_intensity": -0.1}, "invalid rain_intensity -0.1"),
        ({"jpeg_quality": 101}, "invalid jpeg_quality 101: expected an integer in \\[1, 100\\]"),
        ({"noise_map_level": -0.1}, "invalid noise_map_level -0.1"),
        ({"noise_map_level": float("inf")}, "invalid noise_map_level inf: expected a finite number"),
        ({"noise_sigma": float("nan")}, "invalid noise_sigma nan: expected a finite number"),
        ({"custom_degradation": "a:b"}, "invalid custom_degradation 'a:b' for task 'deblur'"),
        ({"scale": 2}, "invalid scale 2 for task 'deblur': expected 1"),
    ],
)
def test_invalid_task_fields_rejected(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as caught:
        get_protocol("quick", "deblur").replace(**changes)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("spec", ["", "module", "module:", ":function", "a b:c", "a:b:c", "1a:b"])
def test_custom_name_format_checked(spec: str) -> None:
    with pytest.raises(InvalidInputError, match="expected 'package.module:function'"):
        get_protocol("quick", "custom", custom_degradation=spec)


# -------------------------------------------------------- custom degradation


def test_custom_degradation_seeded(custom_module: str) -> None:
    protocol = get_protocol("quick", "custom", custom_degradation=f"{custom_module}:box_blur")
    image = torch.rand(1, 3, 16, 16)
    first = get_degradation("custom").apply(image, protocol, None)
    assert first.shape == image.shape
    assert torch.equal(first, get_degradation("custom").apply(image, protocol, None))
    assert not torch.equal(first, get_degradation("custom").apply(image, protocol.replace(seed=1), None))


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("missing", f"module '{CUSTOM_MODULE}' has no attribute 'missing'"),
        ("NOT_A_FUNCTION", "names a int, not a callable"),
    ],
)
def test_custom_degradation_attribute_errors(custom_module: str, attribute: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        load_custom_degradation(f"{custom_module}:{attribute}")


def test_custom_degradation_import_errors(custom_module: str) -> None:
    with pytest.raises(InvalidInputError, match="failed to import module 'no_such_module_for_critprint'.*PYTHONPATH"):
        load_custom_degradation("no_such_module_for_critprint:degrade")
    # The module exists but its own import fails.
    with pytest.raises(InvalidInputError, match="missing_dependency_for_critprint_tests"):
        load_custom_degradation(f"{custom_module}_broken:degrade")


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("wrong_shape", "returned shape \\(1, 3, 15, 16\\) for an input of shape \\(1, 3, 16, 16\\)"),
        ("halve", "returned shape \\(1, 3, 8, 8\\)"),
        ("integers", "returned a torch.uint8 tensor"),
        ("detached", "without a gradient path"),
        ("fails", "raised RuntimeError: kernel file missing"),
    ],
)
def test_custom_degradation_output_checked(custom_module: str, function: str, message: str) -> None:
    protocol = get_protocol("quick", "custom", custom_degradation=f"{custom_module}:{function}")
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    with pytest.raises(InvalidInputError, match=message) as caught:
        get_degradation("custom").apply(image, protocol, None)
    assert "\n" not in str(caught.value)


def test_custom_downscales_for_upscaler(custom_module: str, tmp_path: Path) -> None:
    torch.manual_seed(5)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    handle = load_model(save_state_dict(model.state_dict(), tmp_path / "x2.safetensors"))
    assert infer_task(handle, "custom") == "custom"
    protocol = api.resolve_protocol(handle, "quick", custom_degradation=f"{custom_module}:halve")
    assert (protocol.task, protocol.scale) == ("custom", 2)
    result = extract_critical_image(handle, protocol.replace(size=16, iterations=3))
    assert result.critical_image.shape == (3, 16, 16)


def test_cli_custom_degradation_errors(denoisers: dict[str, Path], tmp_path: Path) -> None:
    code, _, stderr = run("register", denoisers["source"], "--name", "x", "--task", "custom", "--registry", tmp_path)
    assert code == 1
    assert "--custom-degradation" in stderr
    assert stderr.count("\n") == 1
    code, _, stderr = run(
        "register", denoisers["source"], "--name", "x", "--task", "custom",
        "--custom-degradation", "no_such_module_for_critprint:f", "--registry", tmp_path, *FAST,
    )
    assert code == 1
    assert "failed to import module 'no_such_module_for_critprint'" in stderr
    assert stderr.count("\n") == 1


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("task", NEW_TASKS)
def test_register_and_verify_every_task(
    task: str, denoisers: dict[str, Path], custom_module: str, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    extra = ["--custom-degradation", f"{custom_module}:box_blur"] if task == "custom" else []
    code, stdout, stderr = run(
        "register", denoisers["source"], "--name", "source", "--task", task, "--registry", registry,
        "--json", *FAST, *extra,
    )
    assert code == 0, stderr
    assert json.loads(stdout)["task"] == task
    recorded = Registry(registry).load("source").protocol
    assert recorded.task == task
    assert recorded.size == 24
    allow = ["--allow-custom"] if task == "custom" else []
    for suspect in ("source", "pruned"):
        code, stdout, stderr = run(
            "verify", denoisers[suspect], "--against", "source", "--registry", registry, "--json", *allow
        )
        assert code == 0, stderr
        result = json.loads(stdout)
        assert result["verdict"] == "derived", (suspect, result["ratio"])
        assert result["protocol_settings"] == recorded.to_dict()
    assert json.loads(run("verify", denoisers["source"], "--against", "source", "--registry", registry,
                          "--json", *allow)[1])["distance"] == 0.0


def test_custom_fingerprint_needs_opt_in(denoisers: dict[str, Path], custom_module: str, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    code, _, stderr = run(
        "register", denoisers["source"], "--name", "source", "--task", "custom", "--registry", registry,
        "--custom-degradation", f"{custom_module}:box_blur", *FAST,
    )
    assert code == 0, stderr
    code, _, stderr = run("verify", denoisers["pruned"], "--against", "source", "--registry", registry)
    assert code == 1
    assert "pass --allow-custom" in stderr
    code, stdout, stderr = run("identify", denoisers["pruned"], "--task", "custom", "--registry", registry, "--json")
    assert code == 0, stderr
    assert json.loads(stdout) == []
    code, stdout, stderr = run(
        "identify", denoisers["pruned"], "--task", "custom", "--registry", registry, "--json", "--allow-custom"
    )
    assert code == 0, stderr
    assert [row["source"] for row in json.loads(stdout)] == ["source"]


def test_motion_angle_recorded_on_register(denoisers: dict[str, Path], tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    protocol = get_protocol("quick", "deblur", blur_kernel="motion").replace(size=24, iterations=20)
    entry = api.register(str(denoisers["source"]), "motion", registry, protocol=protocol)
    recorded = registry.load(entry.name).protocol
    assert protocol.motion_angle is not None
    assert recorded.motion_angle == protocol.motion_angle
    assert api.verify_registered(str(denoisers["pruned"]), "motion", registry).verdict == "derived"


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("channels", [1, 3])
def test_sr_every_scale_and_gray(scale: int, channels: int, tmp_path: Path) -> None:
    torch.manual_seed(scale)
    model = Compact(num_in_ch=channels, num_out_ch=channels, num_feat=8, num_conv=2, upscale=scale)
    path = save_state_dict(model.state_dict(), tmp_path / "model.safetensors")
    pruned = save_state_dict(prune_magnitude(read_state_dict(path), 0.10), tmp_path / "pruned.safetensors")
    size = 8 * scale if scale > 2 else 24
    registry = tmp_path / "registry"
    code, stdout, stderr = run(
        "register", path, "--name", "sr", "--registry", registry, "--json", "--size", size, "--iterations", 20
    )
    assert code == 0, stderr
    assert json.loads(stdout)["task"] == "sr"
    fingerprint = Registry(registry).load("sr")
    assert fingerprint.protocol.scale == scale
    assert fingerprint.critical_image.shape == (channels, size, size)
    assert fingerprint.features.numel() == get_protocol(DEFAULT_PROTOCOL, "sr", scale=scale).features.length(channels)
    code, stdout, stderr = run("verify", pruned, "--against", "sr", "--registry", registry, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["verdict"] == "derived"


def test_sr_size_not_multiple_rejected(tmp_path: Path) -> None:
    model = Compact(num_in_ch=1, num_out_ch=1, num_feat=8, num_conv=2, upscale=3)
    path = save_state_dict(model.state_dict(), tmp_path / "x3.safetensors")
    code, _, stderr = run("register", path, "--name", "x", "--registry", tmp_path / "r", "--size", 32)
    assert code == 1
    assert "invalid size 32 for scale 3: expected a multiple of the scale" in stderr


def test_infer_task_new_tasks(denoisers: dict[str, Path], tmp_path: Path) -> None:
    handle = load_model(denoisers["source"])
    assert infer_task(handle) == "denoise"  # DnCNN denoises
    assert infer_task(handle, "deblur") == "deblur"
    plain = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=1)
    plain_handle = load_model(save_state_dict(plain.state_dict(), tmp_path / "x1.safetensors"))
    with pytest.raises(IncompatibleModelError, match="pass --task denoise \\(or deblur, lowlight"):
        infer_task(plain_handle)
    assert infer_task(plain_handle, "jpeg") == "jpeg"
    upscaler = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    upscaler_handle = load_model(save_state_dict(upscaler.state_dict(), tmp_path / "x2.safetensors"))
    assert infer_task(upscaler_handle) == "sr"
    with pytest.raises(IncompatibleModelError, match="its task is sr, not deblur"):
        infer_task(upscaler_handle, "deblur")


# ----------------------------------------------------------- noise-level map


def _tiny_drunet(seed: int) -> DRUNet:
    torch.manual_seed(seed)
    return DRUNet(in_nc=4, out_nc=3, nc=[4, 8, 8, 8], nb=2)


def test_drunet_noise_map_level(tmp_path: Path) -> None:
    handle = load_model(save_state_dict(_tiny_drunet(0).state_dict(), tmp_path / "drunet.safetensors"))
    assert handle.noise_map
    assert handle.architecture == "DRUNet"
    assert handle.input_channels == 3
    image = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        default = handle(image)
        assert torch.equal(handle.with_noise_map_level(15 / 255)(image), default)
        assert not torch.equal(handle.with_noise_map_level(0.5)(image), default)
    protocol = get_protocol("quick", "denoise").replace(size=16, iterations=5)
    base = extract_critical_image(handle, protocol).critical_image
    changed = extract_critical_image(handle, protocol.replace(noise_map_level=0.5)).critical_image
    assert not torch.equal(base, changed)
    assert torch.equal(changed, extract_critical_image(handle, protocol.replace(noise_map_level=0.5)).critical_image)


def test_fdncnn_noise_map_level(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DnCNN(in_nc=2, out_nc=1, nc=8, nb=8, act_mode="R", mode="FDnCNN")
    handle = load_model(save_state_dict(model.state_dict(), tmp_path / "fdncnn.safetensors"))
    assert handle.noise_map
    assert handle.input_channels == 1
    image = torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        assert not torch.equal(handle.with_noise_map_level(0.0)(image), handle.with_noise_map_level(0.2)(image))


def test_noise_map_level_ignored_elsewhere(denoisers: dict[str, Path]) -> None:
    handle = load_model(denoisers["source"])
    assert not handle.noise_map
    assert handle.with_noise_map_level(0.3) is handle


def test_drunet_noise_map_end_to_end(tmp_path: Path) -> None:
    source = save_state_dict(_tiny_drunet(1).state_dict(), tmp_path / "drunet.safetensors")
    pruned = save_state_dict(prune_magnitude(read_state_dict(source), 0.10), tmp_path / "pruned.safetensors")
    registry = Registry(tmp_path / "registry")
    protocol = get_protocol("quick", "denoise", noise_map_level=25 / 255).replace(size=24, iterations=20)
    api.register(str(source), "drunet", registry, protocol=protocol)
    assert registry.load("drunet").protocol.noise_map_level == 25 / 255
    assert api.verify_registered(str(pruned), "drunet", registry).verdict == "derived"


# ------------------------------------------- the same weights at several inputs


@pytest.fixture(scope="module")
def drunet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DRUNet, a model with a noise-level input."""
    return save_state_dict(_tiny_drunet(2).state_dict(), tmp_path_factory.mktemp("drunet") / "drunet.safetensors")


def _register_cli(model: Path, name: str, registry: Path, *options: str) -> None:
    code, _, stderr = run("register", model, "--name", name, "--registry", registry, *FAST, *options)
    assert code == 0, stderr


def _show(name: str, registry: Path) -> dict[str, object]:
    code, stdout, stderr = run("show", name, "--registry", registry, "--json")
    assert code == 0, stderr
    return json.loads(stdout)


def _verify(model: Path, name: str, registry: Path) -> dict[str, object]:
    code, stdout, stderr = run("verify", model, "--against", name, "--registry", registry, "--json")
    assert code == 0, stderr
    return json.loads(stdout)


def test_same_drunet_at_two_map_levels(tmp_path: Path, drunet_file: Path) -> None:
    registry = tmp_path / "registry"
    _register_cli(drunet_file, "low", registry, "--noise-map-level", "5/255")
    _register_cli(drunet_file, "high", registry, "--noise-map-level", "0.2")
    low, high = _show("low", registry), _show("high", registry)
    assert low["noise_map_level"] == 5 / 255
    assert high["noise_map_level"] == 0.2
    assert low["protocol_settings"]["noise_map_level"] == 5 / 255  # type: ignore[index]
    assert low["protocol"] == "custom"
    assert low["model_sha256"] == high["model_sha256"]
    assert low["features"] != high["features"]
    # Each verification probes the same weights at its record's level, so the features match exactly.
    for name, level in (("low", 5 / 255), ("high", 0.2)):
        result = _verify(drunet_file, name, registry)
        assert result["verdict"] == "derived"
        assert result["distance"] == 0.0
        assert result["protocol_settings"]["noise_map_level"] == level  # type: ignore[index]
    code, stdout, _ = run("list", "--registry", registry, "--json")
    assert [(row["name"], row["noise_map_level"]) for row in json.loads(stdout)] == [("high", 0.2), ("low", 5 / 255)]
    code, stdout, _ = run("list", "--registry", registry)
    assert "0.01961 (5/255)" in stdout


def test_noise_map_default_recorded(tmp_path: Path, drunet_file: Path) -> None:
    registry = tmp_path / "registry"
    _register_cli(drunet_file, "plain", registry)
    assert _show("plain", registry)["noise_map_level"] == DEFAULT_NOISE_MAP_LEVEL == 15 / 255
    handle = load_model(drunet_file)
    assert api.resolve_protocol(handle, "quick").replace(name="quick") == get_protocol(
        "quick", "denoise", noise_map_level=15 / 255
    )
    # A protocol passed in is the one to probe with: its level stays as it is, None included.
    assert api.resolve_protocol(handle, get_protocol("quick", "denoise")).noise_map_level is None


def test_blind_denoiser_two_sigmas(tmp_path: Path, denoisers: dict[str, Path]) -> None:
    registry = tmp_path / "registry"
    _register_cli(denoisers["source"], "sigma-low", registry, "--noise-sigma", "25/255")
    _register_cli(denoisers["source"], "sigma-high", registry, "--noise-sigma", "1")
    low, high = _show("sigma-low", registry), _show("sigma-high", registry)
    assert low["noise_sigma"] == 25 / 255
    assert high["noise_sigma"] == 1.0
    assert low["noise_map_level"] is None
    assert high["noise_map_level"] is None
    assert low["features"] != high["features"]
    for name in ("sigma-low", "sigma-high"):
        result = _verify(denoisers["source"], name, registry)
        assert result["verdict"] == "derived"
        assert result["distance"] == 0.0
    assert _verify(denoisers["pruned"], "sigma-low", registry)["verdict"] == "derived"


def test_identify_probes_once_per_input(
    tmp_path: Path, drunet_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(tmp_path / "registry")
    protocol = Protocol(name="test", task="denoise", size=24, iterations=20)
    api.register(drunet_file, "low", registry, protocol=protocol, noise_map_level=5 / 255)
    api.register(drunet_file, "low-again", registry, protocol=protocol, noise_map_level=5 / 255)
    api.register(drunet_file, "high", registry, protocol=protocol, noise_map_level=0.2)
    levels: list[float | None] = []
    real = api.extract_critical_image

    def counting(handle: object, settings: Protocol, *args: object) -> object:
        levels.append(settings.noise_map_level)
        return real(handle, settings, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(api, "extract_critical_image", counting)
    results = api.identify(drunet_file, registry)
    assert sorted(levels) == [5 / 255, 0.2]  # type: ignore[type-var]
    assert sorted((result.source, result.verdict) for result in results) == [
        ("high", "derived"), ("low", "derived"), ("low-again", "derived"),
    ]
    assert {result.source: result.protocol_settings["noise_map_level"] for result in results} == {
        "high": 0.2, "low": 5 / 255, "low-again": 5 / 255,
    }


def test_identify_cli_reports_both_records(tmp_path: Path, denoisers: dict[str, Path]) -> None:
    registry = tmp_path / "registry"
    _register_cli(denoisers["source"], "sigma-low", registry, "--noise-sigma", "0.1")
    _register_cli(denoisers["source"], "sigma-high", registry)
    code, stdout, stderr = run("identify", denoisers["pruned"], "--registry", registry, "--json")
    assert code == 0, stderr
    assert {(row["source"], row["verdict"]) for row in json.loads(stdout)} == {
        ("sigma-low", "derived"), ("sigma-high", "derived"),
    }


def test_old_record_verifies_unchanged(tmp_path: Path, drunet_file: Path) -> None:
    # A record written before registration stated the level: the protocol has none.
    registry = Registry(tmp_path / "registry")
    protocol = Protocol(name="test", task="denoise", size=24, iterations=20)
    registry.add("old", api.fingerprint_model(drunet_file, protocol))
    assert registry.load("old").protocol.noise_map_level is None
    details = _show("old", tmp_path / "registry")
    assert details["noise_map_level"] is None
    code, stdout, _ = run("show", "old", "--registry", tmp_path / "registry")
    assert "noise_map_level: - (no noise-level input, or a record older than this field" in stdout
    # The suspect gets the default map, as it did then, which is the level new records state.
    result = _verify(drunet_file, "old", tmp_path / "registry")
    assert result["verdict"] == "derived"
    assert result["distance"] == 0.0
    new = api.register(drunet_file, "new", registry, protocol=protocol)
    assert registry.load("new").protocol.noise_map_level == 15 / 255
    assert new.noise_input == (1.0, 15 / 255)
    assert torch.equal(registry.load("new").features, registry.load("old").features)


def test_library_register_noise_input(tmp_path: Path, drunet_file: Path, denoisers: dict[str, Path]) -> None:
    registry = Registry(tmp_path / "registry")
    protocol = Protocol(name="test", task="denoise", size=24, iterations=20)
    entry = api.register(drunet_file, "drunet", registry, protocol=protocol, noise_sigma=0.5, noise_map_level=0.1)
    record = registry.load("drunet").protocol
    assert entry.protocol == "custom"
    assert record.noise_sigma == 0.5
    assert record.noise_map_level == 0.1
    assert entry.to_dict()["noise_sigma"] == 0.5
    with pytest.raises(IncompatibleModelError, match="invalid noise_map_level 0.1 .* has no noise-level input"):
        api.register(denoisers["source"], "dncnn", registry, protocol=protocol, noise_map_level=0.1)
    # A protocol that carries a level cannot make a record claim one the model never received.
    with pytest.raises(IncompatibleModelError, match="has no noise-level input"):
        api.register(denoisers["source"], "dncnn", registry, protocol=protocol.replace(noise_map_level=0.1))
    with pytest.raises(InvalidInputError, match="invalid noise_sigma -1"):
        api.register(denoisers["source"], "dncnn", registry, protocol=protocol, noise_sigma=-1.0)
    assert not registry.contains("dncnn")


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["--noise-sigma=-0.1"], 2, "error: invalid --noise-sigma '-0.1': expected a finite number >= 0"),
        (["--noise-map-level", "-1/255"], 2, "error: invalid --noise-map-level '-1/255': expected a finite number"),
        (["--noise-sigma", "nan"], 2, "error: invalid --noise-sigma 'nan': expected a finite number"),
        (["--noise-sigma", "high"], 2, "error: invalid --noise-sigma 'high': expected a number on the [0, 1] scale"),
        (["--noise-map-level", "0.1"], 1, "error: invalid noise_map_level 0.1 (--noise-map-level): model "),
    ],
)
def test_noise_option_errors(
    tmp_path: Path, denoisers: dict[str, Path], arguments: list[str], code: int, message: str
) -> None:
    exit_code, _, stderr = run(
        "register", denoisers["source"], "--name", "bad", "--registry", tmp_path, *FAST, *arguments
    )
    assert exit_code == code
    assert stderr.startswith(message)
    assert stderr.count("\n") == 1


def test_noise_value_above_one_warns(tmp_path: Path, denoisers: dict[str, Path]) -> None:
    exit_code, _, stderr = run(
        "register", denoisers["source"], "--name", "loud", "--registry", tmp_path, *FAST, "--noise-sigma", "25"
    )
    assert exit_code == 0
    assert stderr == (
        "warning: --noise-sigma 25 is above 1 on the [0, 1] scale; write 25/255 for 25 on the 0-255 scale\n"
    )


@pytest.mark.parametrize("command", ["verify", "identify"])
@pytest.mark.parametrize("option", ["--noise-sigma", "--noise-map-level"])
def test_probe_input_override_rejected(
    tmp_path: Path, denoisers: dict[str, Path], command: str, option: str
) -> None:
    target = ["--against", "alpha"] if command == "verify" else []
    exit_code, _, stderr = run(command, denoisers["source"], *target, "--registry", tmp_path, option, "0.2")
    assert exit_code == 2
    assert stderr.startswith(f"error: {command} takes no {option} (0.2): the suspect is probed at the input")
    assert stderr.count("\n") == 1
