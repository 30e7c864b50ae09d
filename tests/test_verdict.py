"""The calibrated rule, query-only verification and their command-line options."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from critprint.api import fingerprint_model
from critprint.attacks.pruning import prune_magnitude
from critprint.calibration import (
    Calibration,
    calibrate_references,
    calibrated_decision,
    empirical_p_value,
    find_calibration,
    implied_sigma_h,
    load_calibration,
    null_threshold,
    save_calibration,
)
from critprint.cli import app
from critprint.decision import threshold
from critprint.errors import IncompatibleModelError, InvalidInputError
from critprint.fingerprint import load_fingerprint, save_fingerprint
from critprint.models import load_model, read_state_dict, save_state_dict
from critprint.protocol import Protocol
from critprint.query import (
    ProbeSettings,
    QueryCommandError,
    command_query,
    model_query,
    probe_inputs,
    query_distance,
    run_queries,
)
from critprint.verdict import verify_query
from tests.conftest import tiny_denoiser

runner = CliRunner()
DATA = Path(__file__).parent / "data"
SCRIPT_PREFIX = [sys.executable]


# Null thresholds and p-values --------------------------------------------------


def test_empirical_threshold_counts_values_below() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    # At 5 %, five values may lie below the threshold: it is the sixth smallest.
    assert null_threshold(values, 0.05).empirical == 6.0
    # Below 1 / n the smallest value is the threshold.
    assert null_threshold(values, 0.001).empirical == 1.0


def test_fitted_threshold_is_lognormal_quantile() -> None:
    logs = np.array([-4.0, -3.0, -2.0])  # mean -3, standard deviation 1
    result = null_threshold(list(10**logs), 0.01)
    assert result.log10_mean == pytest.approx(-3.0)
    assert result.log10_std == pytest.approx(1.0)
    assert result.fitted == pytest.approx(10 ** (-3.0 - 2.3263478740408408))
    assert result.threshold == min(result.empirical, result.fitted)
    assert not result.resolved


def test_large_sample_uses_empirical_quantile() -> None:
    # 200 values at 1 % resolve the rate: the third smallest is the threshold even though the fit lies lower.
    values = [1.0, 2.0] + [100.0 + k for k in range(198)]
    result = null_threshold(values, 0.01)
    assert result.resolved
    assert result.empirical == 100.0
    assert result.fitted is not None
    assert result.fitted < result.empirical
    assert result.threshold == 100.0


def test_p_value_counts_ties_and_adds_one() -> None:
    assert empirical_p_value([1.0, 2.0, 3.0], 2.0) == pytest.approx(3 / 4)
    assert empirical_p_value([1.0, 2.0, 3.0], 0.1) == pytest.approx(1 / 4)


def test_implied_sigma_h_inverts_paper_threshold() -> None:
    assert implied_sigma_h(threshold(30, 0.05, 0.03), 30) == pytest.approx(0.03)


def test_calibrated_decision_below_threshold_is_derived() -> None:
    null = [1e-3, 2e-3, 4e-3, 8e-3]
    assert calibrated_decision(null, 1e-4, 0.01).verdict == "derived"
    assert calibrated_decision(null, 3e-3, 0.01).verdict == "independent"


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1, 2.0])
def test_invalid_fpr_rejected(fpr: float) -> None:
    with pytest.raises(InvalidInputError, match="false-positive rate"):
        null_threshold([1.0, 2.0], fpr)


def test_empty_null_rejected() -> None:
    with pytest.raises(InvalidInputError, match="at least two"):
        null_threshold([], 0.01)


# Probes and queries ---------------------------------------------------------------


def test_probes_are_8bit_and_deterministic(fast_denoise: Protocol) -> None:
    image = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(1))
    first = probe_inputs(image, fast_denoise, ProbeSettings(count=3))
    second = probe_inputs(image, fast_denoise, ProbeSettings(count=3))
    assert first.shape == (3, 3, 24, 24)
    assert torch.equal(first, second)
    assert torch.equal(first * 255, (first * 255).round())
    assert not torch.equal(first[0], first[1])


def test_sr_probe_is_low_resolution(fast_sr: Protocol) -> None:
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert probe_inputs(image, fast_sr, ProbeSettings(count=2)).shape == (2, 3, 8, 8)


def _write_script(folder: Path, body: str) -> Path:
    script = folder / "suspect.py"
    script.write_text(
        "import sys\nimport numpy as np\nfrom PIL import Image\n"
        "source, target = sys.argv[1], sys.argv[2]\n" + body
    )
    return script


def test_command_query_round_trips_png(tmp_path: Path) -> None:
    # The command inverts the image; in memory the same function gives the same 8-bit output.
    script = _write_script(
        tmp_path,
        "a = np.asarray(Image.open(source).convert('RGB'))\nImage.fromarray(255 - a).save(target)\n",
    )
    query = command_query(f"{sys.executable} {script} {{in}} {{out}}")
    probes = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)).mul(255).round().div(255)
    outputs = run_queries(query, probes, 1)
    assert torch.allclose(outputs, 1 - probes, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("sys.exit(3)\n", "exited with status 3"),
        ("pass\n", "wrote no image"),
        ("open(target, 'w').write('not a png')\n", "not a valid image"),
        ("import time\ntime.sleep(5)\n", "timed out"),
    ],
)
def test_command_failures_are_one_line(tmp_path: Path, body: str, message: str) -> None:
    script = _write_script(tmp_path, body)
    query = command_query(f"{sys.executable} {script} {{in}} {{out}}", timeout=1.5)
    with pytest.raises(QueryCommandError, match=message):
        query(torch.zeros(3, 4, 4))


@pytest.mark.parametrize(
    ("command", "message"),
    [("", "empty query command"), ("prog {in}", "is missing"), ("prog 'unclosed {in} {out}", "invalid query command")],
)
def test_malformed_commands_rejected(command: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        command_query(command)


def test_missing_program_reported() -> None:
    query = command_query("critprint-no-such-program {in} {out}")
    with pytest.raises(QueryCommandError, match="not found"):
        query(torch.zeros(3, 4, 4))


def test_wrong_output_shape_reported(tmp_path: Path) -> None:
    script = _write_script(tmp_path, "Image.new('RGB', (3, 3)).save(target)\n")
    with pytest.raises(IncompatibleModelError, match="shape"):
        run_queries(command_query(f"{sys.executable} {script} {{in}} {{out}}"), torch.zeros(1, 3, 4, 4), 1)


# Fingerprints with probe outputs ---------------------------------------------------


def test_fingerprint_keeps_probe_outputs(model_dir: Path, fast_denoise: Protocol, tmp_path: Path) -> None:
    record = fingerprint_model(model_dir / "denoiser_a.safetensors", fast_denoise)
    assert record.probe_outputs is not None
    assert record.probe_outputs.shape == (ProbeSettings().count, 3, 24, 24)
    loaded = load_fingerprint(save_fingerprint(record, tmp_path / "a.safetensors"))
    assert loaded.probe_outputs is not None
    assert torch.equal(loaded.probe_outputs, record.probe_outputs)
    assert loaded.probe_settings == ProbeSettings().to_dict()


def test_old_fingerprint_loads_without_probes() -> None:
    record = load_fingerprint(DATA / "dncnn-32px.safetensors")
    assert record.probe_outputs is None
    assert record.probe_settings is None


# Calibration ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("references")
    paths = []
    for seed in (1, 2, 3):
        paths.append(save_state_dict(tiny_denoiser(seed).state_dict(), folder / f"ref{seed}.safetensors"))
    return paths


@pytest.fixture(scope="module")
def calibration(references: list[Path]) -> Calibration:
    protocol = Protocol(name="test", task="denoise", size=24, iterations=20)
    return calibrate_references(references, protocol, note="three tiny denoisers")


def test_calibration_sample_sizes(calibration: Calibration) -> None:
    assert len(calibration.d_null) == 3  # unordered pairs of 3 models
    assert len(calibration.q_null) == 6  # ordered pairs
    assert all(value > 0 for value in calibration.d_null + calibration.q_null)
    summary = calibration.summary(0.01)
    assert summary["d"]["n"] == 3
    assert summary["paper_eta"] == pytest.approx(1.387e-4, rel=1e-3)
    assert summary["sigma_h_of_median_null"] == pytest.approx(math.sqrt(sorted(calibration.d_null)[1]))


def test_combined_null_multiplies_d_and_q(calibration: Calibration) -> None:
    d = dict(zip(calibration.d_pairs, calibration.d_null))
    expected = [d.get((a, b), d.get((b, a))) * q for (a, b), q in zip(calibration.q_pairs, calibration.q_null)]
    assert calibration.dq_null == pytest.approx(expected, rel=1e-15)
    assert calibration.values("dq") == calibration.dq_null
    assert calibration.summary(0.01)["dq"]["empirical"] == min(expected)
    no_query = dataclasses.replace(calibration, q_null=(), q_pairs=())
    assert no_query.summary(0.01)["dq"] is None


def test_calibration_is_deterministic(references: list[Path], calibration: Calibration) -> None:
    protocol = Protocol(name="test", task="denoise", size=24, iterations=20)
    again = calibrate_references(references, protocol)
    assert again.d_null == calibration.d_null
    assert again.q_null == calibration.q_null


def test_calibration_file_round_trip(calibration: Calibration, tmp_path: Path) -> None:
    path = save_calibration(calibration, tmp_path / "c.json")
    loaded = load_calibration(path)
    assert loaded == calibration
    protocol = Protocol.from_dict(calibration.protocol)
    assert find_calibration(tmp_path, protocol, path=path) == calibration
    with pytest.raises(InvalidInputError, match="another protocol"):
        find_calibration(tmp_path, protocol.replace(iterations=21), path=path)
    with pytest.raises(InvalidInputError, match="no calibration"):
        find_calibration(tmp_path, protocol)


@pytest.mark.parametrize("content", ["not json", '{"format": "other"}', '{"format": "critprint-calibration"}'])
def test_bad_calibration_file_rejected(tmp_path: Path, content: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match="calibration"):
        load_calibration(path)


def test_duplicate_reference_rejected(references: list[Path]) -> None:
    protocol = Protocol(name="test", task="denoise", size=24, iterations=20)
    with pytest.raises(InvalidInputError, match="same weights"):
        calibrate_references([references[0], references[0]], protocol)


# Query-only verification ------------------------------------------------------------------


def test_query_only_separates_pruned_copy_from_other_model(
    references: list[Path], calibration: Calibration, tmp_path: Path
) -> None:
    protocol = Protocol.from_dict(calibration.protocol)
    source = fingerprint_model(references[0], protocol)
    pruned = save_state_dict(prune_magnitude(read_state_dict(references[0]), 0.05), tmp_path / "pruned.safetensors")
    handle = load_model(pruned)
    copy = verify_query(model_query(handle, protocol), source, calibration)
    other = verify_query(model_query(load_model(references[1]), protocol), source, calibration)
    assert copy.verdict == "derived"
    assert other.verdict == "independent"
    assert copy.q < other.q


def test_query_only_needs_probe_outputs(calibration: Calibration) -> None:
    record = load_fingerprint(DATA / "dncnn-32px.safetensors")
    with pytest.raises(InvalidInputError, match="register the source model again"):
        verify_query(lambda probe: probe, record, calibration)


def test_query_distance_of_identical_outputs_is_zero() -> None:
    outputs = torch.rand(2, 3, 4, 4)
    assert query_distance(outputs, outputs) == 0.0
    assert query_distance(outputs, outputs + 0.1) == pytest.approx(0.01)


# Command line -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_registry(tmp_path_factory: pytest.TempPathFactory, references: list[Path]) -> Path:
    registry = tmp_path_factory.mktemp("registry")
    result = runner.invoke(app, ["register", str(references[0]), "--name", "src", "--task", "denoise",
                                 "--size", "24", "--iterations", "20", "--registry", str(registry)])
    assert result.exit_code == 0, result.output
    arguments = ["calibrate", "--against", "src", "--registry", str(registry), "--json"]
    for path in references:
        arguments += ["--reference", str(path)]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["d"]["n"] == 3
    assert Path(summary["path"]).is_file()
    return registry


def test_cli_calibrated_rule(cli_registry: Path, references: list[Path]) -> None:
    result = runner.invoke(app, ["verify", str(references[1]), "--against", "src", "--registry", str(cli_registry),
                                 "--rule", "calibrated", "--fpr", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["rule"] == "calibrated"
    assert record["calibrated"]["null"]["n"] == 3
    assert record["verdict"] == "independent"
    assert record["calibrated"]["value"] == pytest.approx(record["distance"])


def test_cli_combined_rule(cli_registry: Path, references: list[Path]) -> None:
    records = []
    for path in references[:2]:
        result = runner.invoke(app, ["verify", str(path), "--against", "src", "--registry", str(cli_registry),
                                     "--rule", "combined", "--json"])
        assert result.exit_code == 0, result.output
        records.append(json.loads(result.stdout))
    same, other = records
    for record in records:
        assert record["rule"] == "combined"
        assert record["combined"]["statistic"] == "dq"
        assert record["combined"]["value"] == pytest.approx(record["distance"] * record["query"]["q"], rel=1e-12)
        assert record["combined"]["null"]["n"] == 6
    # The source against itself: d = q = 0, below any threshold. Another reference: its own pair is in the
    # null sample, so its product cannot fall below the threshold, which is at most the smallest null value.
    assert (same["combined"]["value"], same["verdict"]) == (0.0, "derived")
    assert other["verdict"] == "independent"
    text = runner.invoke(app, ["verify", str(references[1]), "--against", "src", "--registry", str(cli_registry),
                               "--rule", "combined"])
    assert text.exit_code == 0, text.output
    assert "combined rule: d x q = " in text.stdout


def test_cli_query_command(cli_registry: Path, references: list[Path]) -> None:
    command = f"{sys.executable} {DATA / 'query_model.py'} {references[0]} {{in}} {{out}}"
    result = runner.invoke(app, ["verify", "served-copy", "--against", "src", "--registry", str(cli_registry),
                                 "--query-command", command, "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["suspect"] == "served-copy"
    assert record["verdict"] == "derived"
    assert record["q"] == 0.0  # the same model through 8-bit files gives the stored 8-bit outputs
    local = runner.invoke(app, ["verify", str(references[2]), "--against", "src", "--registry", str(cli_registry),
                                "--query-only", "--json"])
    assert local.exit_code == 0, local.output
    assert json.loads(local.stdout)["verdict"] == "independent"


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--rule", "bayes"], "unknown rule 'bayes'"), (["--rule", "calibrated", "--fpr", "1.5"], "invalid --fpr"),
     (["--rule", "combined", "--query-only"], "--rule combined needs the suspect's gradients"),
     (["--fpr", "0"], "invalid --fpr 0.0; expected a value in (0, 1)")],
)
def test_cli_usage_errors(cli_registry: Path, references: list[Path], extra: list[str], message: str) -> None:
    result = runner.invoke(app, ["verify", str(references[1]), "--against", "src", "--registry", str(cli_registry),
                                 *extra])
    assert result.exit_code == 2
    assert message in result.stderr


def test_cli_missing_calibration_is_one_line(tmp_path: Path, model_dir: Path) -> None:
    registry = tmp_path / "registry"
    result = runner.invoke(app, ["register", str(model_dir / "denoiser_a.safetensors"), "--name", "a", "--task",
                                 "denoise", "--size", "24", "--iterations", "5", "--registry", str(registry)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["verify", str(model_dir / "denoiser_b.safetensors"), "--against", "a",
                                 "--registry", str(registry), "--rule", "calibrated"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "run critprint calibrate" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["calibrate"], "exactly one of --against NAME, --fingerprint FILE or --task TASK"),
        (["calibrate", "--task", "denoise", "--against", "a"], "exactly one of"),
        (["calibrate", "--task", "denoise", "--fpr", "0"], "invalid --fpr"),
        (["report", "zoo:dncnn", "--out", "r.html"], "exactly one of --against NAME or --fingerprint FILE"),
    ],
)
def test_cli_new_commands_usage_errors(arguments: list[str], message: str) -> None:
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert message in result.stderr


def test_cli_calibrate_needs_two_references(model_dir: Path) -> None:
    result = runner.invoke(app, ["calibrate", "--task", "denoise", "--reference",
                                 str(model_dir / "denoiser_a.safetensors")])
    assert result.exit_code == 1
    assert "at least two independent reference models, got 1" in result.stderr
    assert result.stderr.count("\n") == 1


def test_cli_calibrate_rejects_unknown_task() -> None:
    result = runner.invoke(app, ["calibrate", "--task", "inpaint"])
    assert result.exit_code == 1
    assert "invalid task 'inpaint'" in result.stderr
