"""The protocol study (``critprint bench --study protocol``) on the reduced plan, at toy size."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import critprint.evaluation.protocol_study as study_module
import critprint.evaluation.runner as runner_module
from critprint import zoo
from critprint.cli.app import app
from critprint.decision import decide, feature_distance, threshold
from critprint.errors import InvalidInputError
from critprint.evaluation import get_plan
from critprint.evaluation.protocol_study import (
    DEFAULT_GRIDS,
    SettingScore,
    choose_setting,
    leave_one_source_out,
    parse_setting,
    protocol_key,
    run_protocol_study,
)
from critprint.calibration import calibrated_decision
from critprint.evaluation.metrics import held_out_null
from critprint.evaluation.runner import AttackedModels
from critprint.features import feature_vector
from critprint.fingerprint import load_fingerprint
from critprint.models import load_model
from critprint.protocol import FeatureSettings, get_protocol
from critprint.query import ProbeSettings, model_query, probe_inputs, query_distance, run_queries


def _plan():  # type: ignore[no-untyped-def]
    """Three denoisers, two attacks that need no training, 4 Adam steps."""
    return get_plan("quick", ("denoise",), attacks=("prune", "quantize"), iterations=4, methods=("critprint",))


def test_parse_setting_reads_protocol_feature_and_study_keys() -> None:
    setting = parse_setting("noise_sigma=0.3,iterations=250,colour_bins=8,lgp_points=8,lgp_radius=1,seeds=2,"
                            "extra_noise=0.1+0.5,schedule=cosine")
    assert setting.changes == (("noise_sigma", 0.3), ("iterations", 250), ("schedule", "cosine"))
    assert (setting.colour_bins, setting.lgp_points, setting.lgp_radius) == (8, 8, 1.0)
    assert (setting.seeds, setting.extra_noise) == (2, (0.1, 0.5))
    assert not setting.expressible
    base = get_protocol("quick", "denoise")
    assert setting.cost(base) == pytest.approx(0.5 * 2 * 3)
    protocols = setting.extraction_protocols(base)
    assert [[(p.noise_sigma, p.seed, p.iterations) for p in strength] for strength in protocols] == [
        [(0.3, 0, 250), (0.3, 1, 250)], [(0.1, 0, 250), (0.1, 1, 250)], [(0.5, 0, 250), (0.5, 1, 250)],
    ]
    assert parse_setting("base") == parse_setting("")
    assert parse_setting("base").expressible
    assert parse_setting("size=96").cost(base) == pytest.approx(2.25)
    query = parse_setting("noise_sigma=0.3,statistic=query")
    assert (query.statistic, query.changes, query.expressible) == ("query", (("noise_sigma", 0.3),), False)
    assert parse_setting("statistic=d").expressible
    assert parse_setting("statistic=query,probe_count=8,probe_jitter=0.1").probes == ProbeSettings(8, 0.1)
    assert parse_setting("statistic=query").probes == ProbeSettings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo=1", "invalid setting key 'foo' in 'foo=1': expected one of"),
        ("size=big", "invalid setting value size='big': expected int"),
        ("noise_sigma", "invalid setting 'noise_sigma' in 'noise_sigma': expected key=value"),
        ("size=64,size=96", "key 'size' appears twice; give it once"),
        ("seeds=0", "invalid setting seeds=0 in 'seeds=0': expected an integer >= 1"),
        ("extra_noise=0.1+-1", "expected numbers >= 0 joined by +"),
        ("seed=3", "invalid setting key 'seed'"),
        ("statistic=p", "invalid setting statistic=p in 'statistic=p': expected d, query or combined"),
        ("statistic=query,seeds=2", "statistic=query uses one critical image; drop seeds and extra_noise"),
        ("statistic=combined,extra_noise=0.3", "statistic=combined uses one critical image"),
        ("probe_count=8", "probe_count and probe_jitter need statistic=query or statistic=combined"),
        ("statistic=query,probe_count=0", "invalid probe count 0: expected an integer >= 1"),
        ("statistic=query,probe_jitter=0.1,probe_jitter=0.2", "key 'probe_jitter' appears twice"),
    ],
)
def test_parse_setting_rejects_bad_text(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        parse_setting(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("task", sorted(DEFAULT_GRIDS))
def test_grid_holds_the_tuned_setting_and_its_rules(task: str) -> None:
    scale = 4 if task == "sr" else 1
    base = get_protocol("quick", task, scale=scale)
    tuned = get_protocol("tuned", task, scale=scale)
    settings = [parse_setting(text) for text in DEFAULT_GRIDS[task]]
    # The preset is one of the grid's settings, so a study run can choose it.
    assert any(s.expressible and s.protocol(base).replace(name="tuned") == tuned for s in settings)
    rules = [s for s in settings if s.statistic != "d"]
    assert [s.statistic for s in rules] == ["query", "combined"]
    for rule in rules:
        assert rule.protocol(base).replace(name="tuned") == tuned


def _score(name: str, tpr: float, cost: float, auc: float, derived: int = 1, expressible: bool = True,
           gap: tuple[float, float] = (2.0, 0.5)) -> SettingScore:
    return SettingScore(setting=name, auc=auc, tpr=tpr, derived_positives=derived, false_positives=0, positives=2,
                        negatives=2, min_negative=(gap[0], "a", "b"), max_positive=(gap[1], "a", "a+x"), missed=(),
                        confused=(), cost=cost, seconds=0.0, length=30, expressible=expressible)


def test_choose_setting_ranks_tpr_cost_verdicts_auc_gap() -> None:
    scores = [_score("a", 0.9, 1.0, 1.0), _score("b", 0.95, 2.0, 0.97), _score("c", 0.95, 1.0, 0.96),
              _score("d", 0.95, 1.0, 0.99), _score("e", 1.0, 0.5, 1.0, expressible=False)]
    assert choose_setting(scores).setting == "d"
    # Same TPR and cost: more positives called derived under d < eta win over a higher AUC.
    assert choose_setting([*scores, _score("f", 0.95, 1.0, 0.9, derived=2)]).setting == "f"
    # ... unless they come with a negative called derived.
    accusing = replace(_score("h", 0.95, 1.0, 0.99, derived=2), false_positives=1)
    assert choose_setting([*scores, accusing]).setting == "d"
    # Everything else equal: the wider gap between negatives and positives wins.
    wide = _score("g", 0.95, 1.0, 0.99, gap=(8.0, 0.5))
    assert choose_setting([*scores, wide]).setting == "g"
    with pytest.raises(InvalidInputError, match="no setting a protocol can record"):
        choose_setting([scores[-1]])


def test_study_scores_match_decide_and_reuse_extractions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ["base", "colour_bins=8", "seeds=2", "extra_noise=0.3"]
    summary = run_protocol_study(["denoise"], tmp_path, {"denoise": settings}, _plan())
    result = summary["tasks"]["denoise"]
    assert [score["setting"] for score in result["scores"]] == settings
    assert result["positives"] == 4
    assert result["excluded_positives"] == []
    assert summary == json.loads((tmp_path / "protocol-study.json").read_text(encoding="utf-8"))
    assert "| `colour_bins=8` |" in (tmp_path / "protocol-study.md").read_text(encoding="utf-8")
    with Image.open(tmp_path / "denoise" / "protocol-study.png") as chart:
        assert chart.size[1] > 4 * 20

    base = get_protocol("quick", "denoise", iterations=4)

    def record(name: str, **changes: object):  # type: ignore[no-untyped-def]
        return load_fingerprint(tmp_path / "denoise" / "study" / protocol_key(base.replace(**changes))
                                / f"{name}.safetensors")

    scores = {score["setting"]: score for score in result["scores"]}
    # The base setting is the paper's rule on the stored features.
    worst = max((decide(record(s).features, record(f"{s}+{a}").features).ratio, f"{s}+{a}")
                for s in ("dncnn", "compact-dn") for a in ("prune", "quantize"))
    assert scores["base"]["max_positive"]["ratio"] == pytest.approx(worst[0], rel=1e-12)
    assert scores["base"]["max_positive"]["suspect"] == worst[1]
    # Eight colour bins: features recomputed from the same images, eta for L = 3 * 8 + 18.
    eight = FeatureSettings(colour_bins=8)
    pairs = [(a, b) for a in ("dncnn", "compact-dn", "dncnn-h") for b in ("dncnn", "compact-dn", "dncnn-h") if a != b]
    lowest = min(feature_distance(feature_vector(record(a).critical_image, eight),
                                  feature_vector(record(b).critical_image, eight)) / threshold(42) for a, b in pairs)
    assert scores["colour_bins=8"]["length"] == 42
    assert scores["colour_bins=8"]["min_negative"]["ratio"] == pytest.approx(lowest, rel=1e-12)
    # Two seeds: seed 1 was extracted, and the features are the mean of both.
    def averaged(name: str):  # type: ignore[no-untyped-def]
        return (record(name).features + record(name, seed=1).features) / 2

    lowest = min(feature_distance(averaged(a), averaged(b)) / threshold(30) for a, b in pairs)
    assert scores["seeds=2"]["min_negative"]["ratio"] == pytest.approx(lowest, rel=1e-12)
    assert scores["extra_noise=0.3"]["length"] == 60
    assert scores["seeds=2"]["cost"] == 2.0
    assert scores["base"]["cost"] == 1.0

    def no_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second run extracted again")

    monkeypatch.setattr(runner_module, "fingerprint_model", no_extraction)
    again = run_protocol_study(["denoise"], tmp_path, {"denoise": settings}, _plan())
    assert [score["auc"] for score in again["tasks"]["denoise"]["scores"]] == [score["auc"] for score in
                                                                               result["scores"]]


def test_query_and_combined_rules_held_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ["base", "statistic=query", "statistic=combined"]
    summary = run_protocol_study(["denoise"], tmp_path, {"denoise": settings}, _plan())
    result = summary["tasks"]["denoise"]
    _, query, combined = result["scores"]
    assert result["chosen"] == "base"
    assert (query["length"], query["expressible"], query["cost"]) == (0, False, 1.0)
    assert (combined["length"], combined["expressible"]) == (30, False)
    assert (query["positives"], query["negatives"]) == (4, 6)
    assert "the ratio columns hold q (d x q) over its held-out threshold" in (
        tmp_path / "protocol-study.md").read_text()

    # q computed here from the cached critical images, probe by probe.
    base = get_protocol("quick", "denoise", iterations=4)
    folder = tmp_path / "denoise" / "study" / protocol_key(base)
    models = {name: load_model(path) for name, path in _plan_paths(tmp_path).items()}

    def q(source: str, suspect: str) -> float:
        record = load_fingerprint(folder / f"{source}.safetensors")
        probes = probe_inputs(record.critical_image, record.protocol, ProbeSettings())
        expected = run_queries(model_query(models[source], record.protocol), probes, 1)
        return query_distance(expected, run_queries(model_query(models[suspect], record.protocol), probes, 1))

    references = ("dncnn", "compact-dn", "dncnn-h")
    null = {(a, b): q(a, b) for a in references for b in references if a != b}
    ratios = {pair: calibrated_decision(held_out_null(null, *pair), value, 0.01, "q").ratio
              for pair, value in null.items()}
    lowest = min(ratios, key=ratios.__getitem__)
    assert query["min_negative"] == {"ratio": pytest.approx(ratios[lowest], rel=1e-12), "source": lowest[0],
                                     "suspect": lowest[1]}
    copy = ("dncnn", "dncnn+prune")
    copy_ratio = calibrated_decision(held_out_null(null, *copy), q(*copy), 0.01, "q").ratio
    assert copy_ratio <= query["max_positive"]["ratio"]
    assert query["derived_positives"] == 4 - len(query["missed"])

    # combined: d x q against the held-out threshold of the products.
    def d(source: str, suspect: str) -> float:
        return feature_distance(load_fingerprint(folder / f"{source}.safetensors").features,
                                load_fingerprint(folder / f"{suspect}.safetensors").features)

    products = {pair: d(*pair) * value for pair, value in null.items()}
    ratios = {pair: calibrated_decision(held_out_null(products, *pair), value, 0.01, "dq").ratio
              for pair, value in products.items()}
    lowest = min(ratios, key=ratios.__getitem__)
    assert combined["min_negative"] == {"ratio": pytest.approx(ratios[lowest], rel=1e-9), "source": lowest[0],
                                        "suspect": lowest[1]}

    # The two statistics share one cache of q.
    (cache,) = folder.glob("query-*.json")
    assert len(json.loads(cache.read_text())["values"]) == 10

    def no_query(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second run queried again")

    monkeypatch.setattr(study_module, "query_distances", no_query)
    again = run_protocol_study(["denoise"], tmp_path, {"denoise": settings}, _plan())
    assert again["tasks"]["denoise"]["scores"][1:] == [query, combined]
    with pytest.raises(InvalidInputError, match="no setting for task 'denoise' that a protocol can record"):
        run_protocol_study(["denoise"], tmp_path, {"denoise": ["statistic=query"]}, _plan())


def test_leave_one_source_out_judges_each_source_unseen(tmp_path: Path) -> None:
    settings = ["base", "colour_bins=8", "statistic=query"]
    result = leave_one_source_out("denoise", tmp_path, settings, _plan())
    assert result["in_sample_setting"] in settings[:2]
    folds = {fold["source"]: fold for fold in result["folds"]}
    assert list(folds) == ["dncnn", "compact-dn"]
    base = get_protocol("quick", "denoise", iterations=4)
    folder = tmp_path / "denoise" / "study" / protocol_key(base)
    for source, fold in folds.items():
        assert fold["chosen"] in settings[:2]  # the query rule never takes part
        assert (fold["positives"], fold["negatives"]) == (2, 4)
        bins = 8 if fold["chosen"] == "colour_bins=8" else 4
        features = FeatureSettings(colour_bins=bins)

        def ratio(a: str, b: str) -> float:
            vectors = [feature_vector(load_fingerprint(folder / f"{name}.safetensors").critical_image, features)
                       for name in (a, b)]
            return feature_distance(*vectors) / threshold(int(vectors[0].numel()))

        copies = [ratio(source, f"{source}+{attack}") for attack in ("prune", "quantize")]
        assert fold["derived_positives"] == sum(value < 1 for value in copies)
    for pooled in (result["held_out"], result["in_sample"]):
        assert (pooled["positives"], pooled["negatives"]) == (4, 8)
        assert 0.0 <= pooled["tpr"] <= 1.0
    with pytest.raises(InvalidInputError, match="no setting for task 'denoise' that a protocol can record"):
        leave_one_source_out("denoise", tmp_path, ["statistic=query"], _plan())


def _plan_paths(folder: Path) -> dict[str, Path]:
    """Paths of the quick denoise plan's references and attacked copies, as the bench lays them out."""
    paths = {name: zoo.model_path(name) for name in ("dncnn", "compact-dn", "dncnn-h")}
    return paths | {path.stem: path for path in (folder / "denoise" / "models").glob("*+*.safetensors")}


def test_copies_past_the_psnr_budget_are_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = {name: zoo.model_path(name) for name in ("dncnn", "compact-dn", "dncnn-h")}
    paths |= {"dncnn+prune": zoo.model_path("dncnn"), "compact-dn+prune": zoo.model_path("compact-dn")}
    attacks = [{"source": "dncnn", "model": "dncnn+prune", "psnr_change_db": -0.4},
               {"source": "compact-dn", "model": "compact-dn+prune", "psnr_change_db": -1.6}]
    monkeypatch.setattr(study_module, "attacked_models",
                        lambda *args, **kwargs: AttackedModels(paths=paths, attacks=attacks, failures=[]))
    plan = get_plan("quick", ("denoise",), attacks=("prune",), iterations=2, methods=("critprint",))
    summary = run_protocol_study(["denoise"], tmp_path, {"denoise": ["base"]}, plan)
    result = summary["tasks"]["denoise"]
    assert result["positives"] == 1
    assert result["excluded_positives"] == [{"model": "compact-dn+prune", "psnr_change_db": -1.6}]
    score = result["scores"][0]
    # The same weights under another name: d = 0, the largest positive ratio.
    assert score["max_positive"] == {"ratio": 0.0, "source": "dncnn", "suspect": "dncnn+prune"}
    assert score["positives"] == 1
    assert score["negatives"] == 6


def test_bad_setting_is_rejected_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="invalid size 7: expected an integer >= 8"):
        run_protocol_study(["denoise"], tmp_path, {"denoise": ["base", "size=7"]}, _plan())
    assert not any(tmp_path.iterdir())


cli = CliRunner()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--setting", "noise_sigma=0.3"], "--setting noise_sigma=0.3 applies only to a study; add --study protocol"),
        (["--study", "protocol", "--setting", "foo=1"], "invalid setting key 'foo'"),
        (["--study", "protocol", "--seeds", "3"], "--seeds does not apply to --study protocol; leave it out"),
        (["--study", "seeds", "--setting", "size=96"], "--setting does not apply to --study seeds; leave it out"),
        (["--study", "protocol", "--task", "inpaint"], "invalid task 'inpaint'"),
    ],
)
def test_cli_bad_protocol_study_arguments(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = cli.invoke(app, ["bench", "--out", str(tmp_path / "out"), *arguments])
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_protocol_study_json_and_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    arguments = ["bench", "--study", "protocol", "--quick", "--task", "denoise", "--iterations", "3",
                 "--setting", "base", "--setting", "lgp_points=8,lgp_radius=1", "--out", str(out)]
    result = cli.invoke(app, [*arguments, "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary == json.loads((out / "protocol-study.json").read_text(encoding="utf-8"))
    scores = summary["tasks"]["denoise"]["scores"]
    assert [score["length"] for score in scores] == [30, 3 * 4 + 10]
    assert summary["tasks"]["denoise"]["chosen"] in ("base", "lgp_points=8,lgp_radius=1")
    table = cli.invoke(app, arguments)
    assert table.exit_code == 0, table.stderr
    assert "lgp_points=8,lgp_radius=1" in table.stdout
    assert "protocol-study.md" in table.stdout
