"""Commands for defensible verdicts: ``calibrate``, ``report``, and ``verify --rule calibrated`` or ``--query-only``.

:func:`register_commands` adds ``calibrate`` and ``report`` to the app;
:func:`verify_beyond_paper` runs the parts of ``verify`` that go beyond the
chi-squared rule (``--rule calibrated``, ``--query-only``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from critprint import api
from critprint.calibration import (
    Calibration,
    calibrate_references,
    calibration_path,
    find_calibration,
    save_calibration,
    zoo_references,
)
from critprint.checks import check_choice
from critprint.cli.output import (
    ExtractionProgress,
    JobProgress,
    fail_on_errors,
    print_json,
    stderr,
    stdout,
    usage_error,
    verification_table,
)
from critprint.errors import InvalidInputError
from critprint.fingerprint import Fingerprint, atomic_write_bytes, load_fingerprint, now_utc, software_versions
from critprint.models import ModelHandle, load_model
from critprint.protocol import DEFAULT_PROTOCOL, PRESETS, TASKS, get_protocol
from critprint.query import ProbeSettings, command_query, model_query
from critprint.registry import Registry
from critprint.verdict import QueryVerification, calibrated_verdict, combined_verdict, verify_query

__all__ = [
    "RuleOption",
    "FprOption",
    "CalibrationOption",
    "QueryOnlyOption",
    "QueryCommandOption",
    "QueryTimeoutOption",
    "RULES",
    "register_commands",
    "verify_beyond_paper",
    "check_fpr",
    "calibrate",
    "report",
]

logger = logging.getLogger(__name__)

RULES = ("paper", "calibrated", "combined")

RuleOption = Annotated[
    str,
    typer.Option(
        "--rule",
        metavar="RULE",
        help=(
            "paper: the chi-squared threshold with the assumed sigma_h; calibrated: the threshold at --fpr "
            "of the d measured between independent models (critprint calibrate); combined: the threshold at "
            "--fpr of d x q, d times the query-only q, measured the same way."
        ),
    ),
]
FprOption = Annotated[
    float, typer.Option("--fpr", help="False-positive rate of the calibrated threshold, in (0, 1).")
]
CalibrationOption = Annotated[
    Optional[Path],
    typer.Option("--calibration", help="Calibration file; default: the registry's for the fingerprint's protocol."),
]
QueryOnlyOption = Annotated[
    bool,
    typer.Option(
        "--query-only",
        help="Use only the suspect's outputs on probes made from the source's critical image, never its gradients; "
        "always decided with the calibrated threshold.",
    ),
]
QueryCommandOption = Annotated[
    Optional[str],
    typer.Option(
        "--query-command",
        metavar="'CMD {in} {out}'",
        help="Query the suspect through a command that reads the PNG {in} and writes the PNG {out} (run without a "
        "shell); implies --query-only, and SUSPECT is then only a label.",
    ),
]
QueryTimeoutOption = Annotated[
    float, typer.Option("--query-timeout", min=0.001, help="Seconds each --query-command call may run.")
]


def check_fpr(fpr: float) -> None:
    """Stop with a usage error unless ``--fpr`` lies in (0, 1)."""
    if not 0.0 < fpr < 1.0:
        usage_error(f"invalid --fpr {fpr!r}; expected a value in (0, 1), such as 0.01")


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        warnings.simplefilter("ignore")  # as the other commands: keep standard error to one-line messages


def _load_source(against: str | None, fingerprint: Path | None, registry: Path | None) -> tuple[str, Fingerprint]:
    if fingerprint is not None:
        source = load_fingerprint(fingerprint)
        return source.name or fingerprint.stem, source
    name = against or ""
    return name, Registry(registry).load(name)


def _probe_settings(source: Fingerprint) -> ProbeSettings:
    return ProbeSettings.from_dict(source.probe_settings) if source.probe_settings is not None else ProbeSettings()


def _calibration(source: Fingerprint, registry: Path | None, path: Path | None) -> Calibration:
    return find_calibration(Registry(registry).root, source.protocol, _probe_settings(source), path)


def _query_table(result: QueryVerification) -> Table:
    table = Table(title=f"query-only, {result.probes} probes, calibrated at FPR {result.fpr:g} on {result.null_size} "
                        "independent pairs")
    for column in ("suspect", "source", "q", "threshold", "q/threshold", "p (empirical)", "verdict"):
        table.add_column(column, justify="left" if column in ("suspect", "source", "verdict") else "right")
    colour = "red" if result.verdict == "derived" else "green"
    table.add_row(result.suspect, result.source, f"{result.q:.3e}", f"{result.threshold:.3e}", f"{result.ratio:.3f}",
                  f"{result.p_empirical:.3g}", f"[{colour}]{result.verdict}[/{colour}]")
    return table


def verify_beyond_paper(
    *,
    suspect: str,
    against: str | None,
    fingerprint: Path | None,
    registry: Path | None,
    rule: str,
    fpr: float,
    calibration: Path | None,
    query_only: bool,
    query_command: str | None,
    query_timeout: float,
    load: Callable[[str], ModelHandle],
    allow_custom: bool,
    json_output: bool,
    quiet: bool,
    debug: bool,
) -> None:
    """Run ``verify`` with the calibrated rule or query-only; ``load(suspect)`` loads a local model."""
    if rule not in RULES:
        usage_error(f"unknown rule {rule!r}; expected one of: {', '.join(RULES)}")
    query = query_only or query_command is not None
    if query and rule == "combined":
        usage_error("--rule combined needs the suspect's gradients; drop --query-only and --query-command")
    queried: QueryVerification | None = None
    with fail_on_errors(debug), ExtractionProgress(quiet) as progress:
        source_name, source = _load_source(against, fingerprint, registry)
        chosen = _calibration(source, registry, calibration)
        if query:
            if query_command is not None:
                function = command_query(query_command, query_timeout)
                label, sha = suspect, ""
            else:
                handle: ModelHandle = load(suspect)
                function = model_query(handle, source.protocol)
                label, sha = handle.source, handle.sha256
            result = verify_query(function, source, chosen, fpr, source_name, label, sha)
        else:
            handle = load(suspect)
            white = api.verify(handle, source, source_name, progress.callback(f"verify {suspect}"), allow_custom)
            if rule == "combined":
                queried = verify_query(model_query(handle, source.protocol), source, chosen, fpr, source_name,
                                       handle.source, handle.sha256)
                decision = combined_verdict(white, queried, chosen, fpr)
            else:
                decision = calibrated_verdict(white, chosen, fpr)
    if query:
        if json_output:
            print_json(result.to_dict())
            return
        stdout.print(_query_table(result))
        return
    if json_output:
        extra = {"query": queried.to_dict()} if queried is not None else {}
        print_json(white.to_dict() | {"rule": rule, rule: decision.to_dict(), **extra,
                                      "verdict": decision.verdict, "paper_verdict": white.verdict})
        return
    stdout.print(verification_table([white], title="paper rule"))
    colour = "red" if decision.verdict == "derived" else "green"
    value = f"d = {decision.value:.3e}" if queried is None else (
        f"d x q = {white.distance:.3e} x {queried.q:.3e} = {decision.value:.3e}")
    stdout.print(
        f"{rule} rule: {value}, threshold {decision.threshold:.3e} at FPR {fpr:g} "
        f"({decision.null.n} independent pairs; empirical {decision.null.empirical:.3e}, log-normal fit "
        f"{decision.null.fitted if decision.null.fitted is None else format(decision.null.fitted, '.3e')}), "
        f"p = {decision.p_empirical:.3g}: [{colour}]{decision.verdict}[/{colour}]"
    )


def calibrate(
    against: Annotated[Optional[str], typer.Option("--against", help="Calibrate for this registered fingerprint's protocol.")] = None,
    fingerprint: Annotated[Optional[Path], typer.Option("--fingerprint", help="Calibrate for this fingerprint file's protocol.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", metavar="TASK", help=f"Task, with --protocol: {', '.join(TASKS)}.")] = None,
    protocol: Annotated[str, typer.Option("--protocol", metavar="NAME", help=f"Preset with --task: {' or '.join(PRESETS)}.")] = DEFAULT_PROTOCOL,
    scale: Annotated[int, typer.Option("--scale", min=1, help="Model scale with --task.")] = 1,
    references: Annotated[
        Optional[list[str]],
        typer.Option("--reference", metavar="MODEL", help="An independent reference model; repeat. Default: the bundled models of the task and scale."),
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the calibration here instead of the registry.")] = None,
    fpr: FprOption = 0.01,
    registry: Annotated[Optional[Path], typer.Option("--registry", help="Registry folder.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Hide progress.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Measure d and q between independent reference models, the null sample of the calibrated rule.

    The calibration is keyed by the full protocol and stored in the registry (or --out), where
    verify --rule calibrated, verify --query-only and report find it.
    """
    _configure_logging(debug)
    if sum(value is not None for value in (against, fingerprint, task)) != 1:
        usage_error("pass exactly one of --against NAME, --fingerprint FILE or --task TASK")
    check_fpr(fpr)
    with fail_on_errors(debug), JobProgress(quiet, "calibrate") as progress:
        if task is not None:
            check_choice("task", task, TASKS)
            check_choice("protocol", protocol, PRESETS)
            chosen = get_protocol(protocol, task, scale=scale)  # type: ignore[arg-type]
            channels, probes = 3, ProbeSettings()
        else:
            _, source = _load_source(against, fingerprint, registry)
            chosen, channels, probes = source.protocol, source.model.input_channels, _probe_settings(source)
        models: list[str] = list(references) if references else zoo_references(chosen.task, chosen.scale, channels)
        if references and len(models) < 2:
            raise InvalidInputError(
                f"a calibration needs at least two independent reference models, got {len(models)}; "
                "add --reference MODEL"
            )
        if len(models) < 2:
            raise InvalidInputError(
                f"no bundled reference models for task {chosen.task} at scale {chosen.scale}; pass two or more "
                "--reference MODEL"
            )
        root = Registry(registry).root
        note = "references: " + ("the user's models" if references else "the bundled models of the task")
        result = calibrate_references(models, chosen, probes, root / "calibrations" / "fingerprints", note,
                                      progress.note)
        target = out if out is not None else calibration_path(root, chosen, probes)
        save_calibration(result, target)
    summary = result.summary(fpr) | {"path": str(target)}
    if json_output:
        print_json(summary)
        return
    d, q = summary["d"], summary["q"]
    stdout.print(f"calibration {summary['key']} for task {result.task}: {len(result.references)} references, "
                 f"written to {target}", markup=False)
    stdout.print(f"d: {d['n']} independent pairs, threshold at FPR {fpr:g}: {d['threshold']:.3e} (empirical "
                 f"{d['empirical']:.3e}, log-normal fit {d['fitted']:.3e}); paper eta {summary['paper_eta']:.3e}",
                 markup=False)
    stdout.print(f"sigma_h: paper {summary['paper_sigma_h']:g}; of the calibrated threshold "
                 f"{summary['sigma_h_of_calibrated_threshold']:.4f}; of the median independent d "
                 f"{summary['sigma_h_of_median_null']:.4f}", markup=False)
    if q is not None:
        stdout.print(f"q: {q['n']} independent pairs, threshold at FPR {fpr:g}: {q['threshold']:.3e} (empirical "
                     f"{q['empirical']:.3e}, log-normal fit {q['fitted']:.3e})", markup=False)
        dq = summary["dq"]
        stdout.print(f"d x q: threshold at FPR {fpr:g}: {dq['threshold']:.3e} (empirical {dq['empirical']:.3e})",
                     markup=False)


def report(
    suspect: Annotated[str, typer.Argument(metavar="SUSPECT", help="Suspect model file or zoo:NAME.")],
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")],
    against: Annotated[Optional[str], typer.Option("--against", help="Name of the registered source fingerprint.")] = None,
    fingerprint: Annotated[Optional[Path], typer.Option("--fingerprint", help="Source fingerprint file.")] = None,
    calibration: CalibrationOption = None,
    fpr: FprOption = 0.01,
    torchscript: Annotated[bool, typer.Option("--torchscript", help="Allow a TorchScript suspect (its code runs).")] = False,
    allow_custom: Annotated[bool, typer.Option("--allow-custom", help="Run the fingerprint's custom degradation.")] = False,
    registry: Annotated[Optional[Path], typer.Option("--registry", help="Registry folder.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the verdicts as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Hide progress.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Verify SUSPECT and write one self-contained HTML evidence report.

    It shows both critical images, both histograms, d against the calibrated null distribution,
    the query-only result, the protocol, the hashes and the software versions.
    """
    from critprint.report_html import Evidence, render_report

    _configure_logging(debug)
    if (against is None) == (fingerprint is None):
        usage_error("pass exactly one of --against NAME or --fingerprint FILE")
    check_fpr(fpr)
    with fail_on_errors(debug), ExtractionProgress(quiet) as progress:
        source_name, source = _load_source(against, fingerprint, registry)
        handle = load_model(suspect, allow_torchscript=torchscript)
        try:
            chosen: Calibration | None = _calibration(source, registry, calibration)
        except InvalidInputError as error:
            if calibration is not None:
                raise
            stderr.print(f"warning: {error}; the report shows the paper rule only", markup=False)
            chosen = None
        white, image, features = api.verify_detailed(handle, source, source_name,
                                                     progress.callback(f"verify {suspect}"), allow_custom)
        decision = calibrated_verdict(white, chosen, fpr) if chosen is not None else None
        query = None
        if chosen is not None and chosen.q_null and source.probe_outputs is not None:
            query = verify_query(model_query(handle, source.protocol), source, chosen, fpr, source_name,
                                 handle.source, handle.sha256)
        combined = combined_verdict(white, query, chosen, fpr) if query is not None and chosen is not None else None
        evidence = Evidence(source_name=source_name, source=source, suspect_image=image, suspect_features=features,
                            verification=white, calibrated=decision, calibration=chosen, query=query,
                            created_at=now_utc(), versions=software_versions(), combined=combined)
        atomic_write_bytes(out, render_report(evidence).encode("utf-8"))
    verdicts: dict[str, Any] = {"paper": white.verdict, "calibrated": decision.verdict if decision else None,
                                "query_only": query.verdict if query else None,
                                "combined": combined.verdict if combined else None, "report": str(out)}
    if json_output:
        print_json(verdicts | {"verification": white.to_dict()})
        return
    stdout.print(f"paper rule: {white.verdict}; calibrated rule: {verdicts['calibrated'] or 'n/a'}; query-only: "
                 f"{verdicts['query_only'] or 'n/a'}; combined rule: {verdicts['combined'] or 'n/a'}; report written "
                 f"to {out}", markup=False)


def register_commands(app: typer.Typer) -> None:
    """Add ``calibrate`` and ``report`` to the app."""
    app.command()(calibrate)
    app.command()(report)

