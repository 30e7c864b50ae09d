"""The ``critprint scan`` command: register or identify many models, locally or on Ray."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from critprint.checks import check_choice
from critprint.cli.app import (
    AllowCustomOption,
    DebugOption,
    JsonOption,
    ProtocolOption,
    QuietOption,
    RegistryOption,
    TorchScriptOption,
    _configure_logging,
    app,
)
from critprint.cli.output import fail_on_errors, print_json, stderr, stdout, usage_error
from critprint.errors import InvalidInputError
from critprint.protocol import DEFAULT_PROTOCOL, PRESETS
from critprint.registry import Registry
from critprint.scan import EXECUTORS, ScanCounts, ScanJob, ScanResult, collect_items, make_executor, run_scan

__all__ = ["scan", "ScanProgress"]


class ScanProgress:
    """One bar over a scan's models on standard error: done, failed, remaining and rate.

    Disabled with ``quiet`` or when standard error is not a terminal.
    """

    def __init__(self, quiet: bool) -> None:
        self.enabled = not quiet and stderr.is_terminal
        self._progress = Progress(
            TextColumn("scan"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}, remaining {task.fields[remaining]}, {task.fields[rate]}/min"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            disable=not self.enabled,
            transient=False,
        )
        self._task_id = self._progress.add_task("scan", total=None, failed=0, remaining="?", rate="-")

    def __enter__(self) -> ScanProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def update(self, counts: ScanCounts, result: ScanResult | None) -> None:
        """Show a scan's counts; the hook :func:`critprint.scan.run_scan` calls."""
        self._progress.update(
            self._task_id, total=counts.total, completed=counts.resumed + counts.done, failed=counts.failed,
            remaining=counts.remaining, rate=f"{counts.per_minute:.1f}" if counts.done else "-",
        )


@app.command()
def scan(
    sources: Annotated[
        list[str],
        typer.Argument(metavar="SOURCES...", help="Model files, zoo:NAME, folders (searched recursively) or .jsonl manifests."),
    ],
    register_mode: Annotated[
        bool, typer.Option("--register", help="Register each model under its name (the file stem or the manifest's).")
    ] = False,
    identify_mode: Annotated[
        bool, typer.Option("--identify", help="Compare each model with every registered fingerprint of its task.")
    ] = False,
    executor: Annotated[
        str, typer.Option("--executor", metavar="NAME", help="Where models run: local (a process pool) or ray.")
    ] = "local",
    workers: Annotated[
        int,
        typer.Option("--workers", min=1, help="Worker processes (local), or CPUs of the local Ray instance that starts "
                     "without --ray-address."),
    ] = 1,
    out: Annotated[
        Path, typer.Option("--out", help="Results file: JSON lines, one per model, written as each finishes.")
    ] = Path("scan-results.jsonl"),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the scan of --out: skip the models already in it.")
    ] = False,
    ray_address: Annotated[
        Optional[str], typer.Option("--ray-address", metavar="ADDRESS", help="Ray cluster to join; default: start a local Ray instance.")
    ] = None,
    cpus_per_model: Annotated[
        int, typer.Option("--cpus-per-model", min=1, help="CPU cores (and torch threads) each model gets.")
    ] = 1,
    files: Annotated[
        Optional[str],
        typer.Option("--files", metavar="LOCATION", help="Fingerprint files of a database registry: a folder or an "
                     "fsspec URL. Default: $CRITPRINT_FILES."),
    ] = None,
    task: Annotated[
        Optional[str], typer.Option("--task", metavar="TASK", help="Task of every model a manifest does not set; default: inferred.")
    ] = None,
    protocol: ProtocolOption = DEFAULT_PROTOCOL,
    size: Annotated[Optional[int], typer.Option("--size", min=8, help="--register: critical-image side, in pixels.")] = None,
    iterations: Annotated[Optional[int], typer.Option("--iterations", min=1, help="--register: Adam steps.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="--register: random seed.")] = None,
    top: Annotated[Optional[int], typer.Option("--top", min=1, help="--identify: keep the K closest fingerprints.")] = None,
    torchscript: TorchScriptOption = False,
    allow_custom: AllowCustomOption = False,
    registry: RegistryOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Register or identify every model of SOURCES, on a process pool or a Ray cluster.

    Results go to --out as JSON lines, one per model, as each finishes; a broken model gives an
    error line and the scan goes on. An interrupted scan continues with --resume, each model ending
    in the file exactly once. Exits with status 1 when any model of the scan has an error line.
    """
    from dataclasses import replace

    _configure_logging(debug)
    if register_mode == identify_mode:
        usage_error("pass exactly one of --register or --identify")
    if ray_address is not None and executor != "ray":
        usage_error(f"--ray-address needs --executor ray, got --executor {executor}")
    if executor not in EXECUTORS:
        usage_error(f"unknown --executor {executor!r}; valid executors are {', '.join(EXECUTORS)}")
    mode = "register" if register_mode else "identify"
    if mode == "identify":
        ignored = [name for name, value in (("--size", size), ("--iterations", iterations), ("--seed", seed)) if value is not None]
        if ignored or protocol != DEFAULT_PROTOCOL:
            usage_error(f"{', '.join(ignored) or '--protocol'} sets how --register extracts; --identify probes each "
                        "suspect with the protocol of the fingerprint it is compared with")
    elif top is not None:
        usage_error("--top needs --identify")
    start = time.perf_counter()
    with fail_on_errors(debug):
        check_choice("protocol", protocol, PRESETS)
        if task is not None:
            from critprint.protocol import TASKS

            check_choice("task", task, TASKS)
        items = collect_items(sources)
        if task is not None:
            items = [item if item.task else replace(item, task=task) for item in items]
        # Resolved here, from the options and the environment, so that workers
        # on other machines get the same registry.
        store = Registry(registry, files=files)
        if mode == "identify" and not store.entries():
            raise InvalidInputError(
                f"registry {store.location} contains no fingerprint to identify models against; "
                "register the owners' models first (critprint scan --register or critprint register)"
            )
        files_location = store.files_location
        if "://" not in files_location:
            files_location = str(Path(files_location).absolute())
        job = ScanJob(
            mode=mode, registry=store.database_url or str(Path(store.location).absolute()), files=files_location,
            protocol=protocol,
            size=size, iterations=iterations, seed=seed, top=top, allow_custom=allow_custom,
            torchscript=torchscript, threads=cpus_per_model, show_warnings=debug,
        )
        pool = make_executor(executor, workers, ray_address, cpus_per_model, quiet_logs=not debug)
        with ScanProgress(quiet) as progress:
            summary = run_scan(items, job, pool, out, resume=resume, progress=progress.update)
    if json_output:
        print_json({**summary.to_dict(), "elapsed_seconds": time.perf_counter() - start})
    else:
        stdout.print(
            f"scanned {summary.ran} of {summary.total} models ({summary.resumed} done before), {summary.failed} failed, "
            f"{summary.models_per_minute:.1f} models/min; results in {summary.out}",
            markup=False,
        )
    if summary.failed_total:
        stderr.print(f"error: {summary.failed_total} of {summary.total} models failed; see their error lines in {out}",
                     markup=False)
        raise typer.Exit(code=1)
