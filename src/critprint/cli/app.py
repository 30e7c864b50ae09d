"""Commands of the ``critprint`` tool.

Exit status: 0 on success whatever the verdict, 1 on a failure and 2 on a
usage error. A failure prints one line on standard error, and ``--debug``
shows its traceback.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import time
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from critprint import __version__, api, zoo
from critprint.checks import check_choice
from critprint.cli import verdict as verdict_cli
from critprint.cli.studies import StudyOptions, run_study
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
from critprint.demo import DEMO_PRUNE_FRACTION, run_demo
from critprint.errors import InvalidInputError, ModelLoadError
from critprint.extraction import Runtime
from critprint.fingerprint import load_fingerprint, save_fingerprint
from critprint.images import write_png
from critprint.models import (
    ArchSpec,
    ModelHandle,
    infer_task,
    load_model,
    parse_arch_kwargs,
    parse_arch_spec,
    read_state_dict,
    save_state_dict,
)
from critprint.protocol import DEFAULT_PROTOCOL, PRESETS, TASKS
from critprint.registry import Registry

__all__ = ["app", "main"]

app = typer.Typer(
    name="critprint",
    help="Fingerprint image-restoration models and verify whether a suspect model is derived from yours.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help lists flags without the "<bool>" type hints that
    # Typer's rich help shows, which read as if the flags took a value.
    rich_markup_mode=None,
)
zoo_app = typer.Typer(help="List the models bundled with critprint.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(zoo_app, name="zoo")
verdict_cli.register_commands(app)


_TASK_HELP = ", ".join(TASKS)
_PROTOCOL_HELP = " or ".join(PRESETS)


def _check_names(task: str | None = None, protocol: str | None = None) -> None:
    """Reject an unknown task or protocol name before any work, with the valid names."""
    if task is not None:
        check_choice("task", task, TASKS)
    if protocol is not None:
        check_choice("protocol", protocol, PRESETS)


RegistryOption = Annotated[
    Optional[str],
    typer.Option(
        "--registry",
        metavar="DIR|URL",
        help="Registry folder, or postgresql://USER@HOST:PORT/DB of a shared registry. "
        "Default: $CRITPRINT_REGISTRY, else $CRITPRINT_HOME, else the user data folder.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on standard output.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Hide progress bars.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Log details and show tracebacks of failures.")]
TorchScriptOption = Annotated[
    bool,
    typer.Option(
        "--torchscript",
        help="Allow TorchScript model files. Their code runs when the model is called: use only trusted files.",
    ),
]
ArchOption = Annotated[
    Optional[str],
    typer.Option(
        "--arch",
        metavar="MODULE:CALLABLE",
        help=(
            "Build the network with this Python callable (package.module:callable, importable through "
            "PYTHONPATH) and load the model file as its state dict, for architectures spandrel does not detect. "
            "Importing the module runs its code: use only code you trust."
        ),
    ),
]
ArchKwargsOption = Annotated[
    Optional[str],
    typer.Option(
        "--arch-kwargs", metavar="JSON", help='Keyword arguments of the --arch callable, a JSON object: \'{"nc": 32}\'.'
    ),
]
AllowCustomOption = Annotated[
    bool,
    typer.Option(
        "--allow-custom",
        help="Run the custom degradation a fingerprint names. It imports that module: use only for fingerprints you trust.",
    ),
]
TaskOption = Annotated[
    Optional[str],
    typer.Option(
        "--task",
        metavar="TASK",
        help=f"Restoration task: {_TASK_HELP}. Inferred when the model states it (scale > 1 means sr).",
    ),
]
DeviceOption = Annotated[
    str,
    typer.Option("--device", metavar="DEVICE", help="Run the extraction on this torch device: cpu, cuda or cuda:N."),
]
AutocastOption = Annotated[
    str,
    typer.Option(
        "--autocast",
        metavar="DTYPE",
        help=(
            "Run the model in lower precision on a GPU: none, bfloat16 or float16. Faster; the critical image "
            "then matches a float32 one within the decision's tolerance, not bit for bit."
        ),
    ),
]
ProtocolOption = Annotated[
    str, typer.Option("--protocol", metavar="NAME", help=f"Extraction protocol preset: {_PROTOCOL_HELP}.")
]


NoiseSigmaOption = Annotated[
    Optional[str],
    typer.Option(
        "--noise-sigma",
        metavar="SIGMA",
        help=(
            "Override the standard deviation of the degradation's Gaussian noise, on the [0, 1] intensity scale "
            "(0.1), or as N/255 for N on the 0-255 scale (25/255); for sr it is added to the low-resolution "
            "input. Default: the task's (1 for denoise, 0 for sr). Use it to fingerprint a blind denoiser "
            "at another noise level."
        ),
    ),
]
NoiseMapLevelOption = Annotated[
    Optional[str],
    typer.Option(
        "--noise-map-level",
        metavar="LEVEL",
        help=(
            "Value of the noise-level map fed to a model with a noise-level input (DRUNet, FDnCNN), on the "
            "[0, 1] scale (0.1) or as N/255 (25/255). Default: the architecture's, 15/255."
        ),
    ),
]
# Hidden options of verify and identify: a value is rejected with the reason and the fix.
ProbeNoiseSigmaOption = Annotated[Optional[str], typer.Option("--noise-sigma", hidden=True)]
ProbeNoiseMapLevelOption = Annotated[Optional[str], typer.Option("--noise-map-level", hidden=True)]

# N/255: a level on the 0-255 scale, divided by 255 exactly as Python divides.
_PER_255 = re.compile(r"^\s*(?P<number>[^/]+?)\s*/\s*255\s*$")


def _noise_value(option: str, text: str | None) -> float | None:
    """Parse a noise option, a number on the [0, 1] scale or N/255; exit with status 2 on a bad value.

    A plain number above 1 is kept, with a warning that N/255 may have been meant.
    """
    if text is None:
        return None
    match = _PER_255.match(text)
    try:
        value = float(match.group("number")) / 255 if match else float(text)
    except ValueError:
        usage_error(f"invalid {option} {text!r}: expected a number on the [0, 1] scale (0.1) or N/255 (25/255)")
    if not math.isfinite(value) or value < 0:
        usage_error(f"invalid {option} {text!r}: expected a finite number >= 0 on the [0, 1] scale, or N/255")
    if value > 1 and match is None:
        stderr.print(
            f"warning: {option} {text} is above 1 on the [0, 1] scale; write {text}/255 for {text} on the 0-255 scale",
            markup=False,
        )
    return value


def _reject_probe_overrides(command: str, noise_sigma: str | None, noise_map_level: str | None) -> None:
    """Exit with status 2 if verify or identify was given an input the fingerprints already record."""
    for option, value in (("--noise-sigma", noise_sigma), ("--noise-map-level", noise_map_level)):
        if value is not None:
            usage_error(
                f"{command} takes no {option} ({value}): the suspect is probed at the input each fingerprint "
                f"records; to compare at {value}, register the source under another name with {option} {value}"
            )


def _level_text(value: float | None) -> str:
    """Return a noise value on the [0, 1] scale for people: ``0.0588 (15/255)``, or ``-`` for None."""
    if value is None:
        return "-"
    steps = round(value * 255)
    if 0 < value < 1 and steps / 255 == value:
        return f"{value:.4g} ({steps}/255)"
    return f"{value:.4g}"


def _arch_arguments(arch: str | None, arch_kwargs: str | None) -> tuple[ArchSpec | None, dict[str, Any] | None]:
    """Parse --arch and --arch-kwargs, exiting with status 2 on a malformed value."""
    if arch_kwargs is not None and arch is None:
        usage_error("--arch-kwargs needs --arch package.module:callable")
    try:
        spec = parse_arch_spec(arch) if arch is not None else None
        kwargs = parse_arch_kwargs(arch_kwargs) if arch_kwargs is not None else None
    except InvalidInputError as error:
        usage_error(str(error))
    return spec, kwargs


def _runtime(device: str, autocast: str) -> Runtime:
    """Build the extraction's runtime from --device and --autocast."""
    return Runtime(device=device, autocast=autocast)  # type: ignore[arg-type]  # checked in Runtime


def _load(model: str, torchscript: bool, arch: tuple[ArchSpec | None, dict[str, Any] | None]) -> ModelHandle:
    """Load MODEL with the format options of a command."""
    spec, kwargs = arch
    return load_model(model, allow_torchscript=torchscript, arch=spec, arch_kwargs=kwargs)


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # torch and spandrel warn about their own deprecations on standard error,
    # which would break the one-line error messages; --debug shows them.
    if not debug:
        warnings.simplefilter("ignore")


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        stdout.print(f"critprint {__version__}")
        raise typer.Exit()


@app.command()
def register(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model file (.pth, .pt, .ckpt, .safetensors, .onnx, TorchScript) or zoo:NAME.")],
    name: Annotated[str, typer.Option("--name", help="Unique name for the fingerprint.")],
    task: TaskOption = None,
    protocol: ProtocolOption = DEFAULT_PROTOCOL,
    size: Annotated[
        Optional[int], typer.Option("--size", min=8, help="Override the critical-image side, in pixels.")
    ] = None,
    iterations: Annotated[
        Optional[int], typer.Option("--iterations", min=1, help="Override the number of Adam steps.")
    ] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="Override the random seed.")] = None,
    noise_sigma: NoiseSigmaOption = None,
    noise_map_level: NoiseMapLevelOption = None,
    custom_degradation: Annotated[
        Optional[str],
        typer.Option(
            "--custom-degradation", metavar="MODULE:FUNCTION",
            help="Your degradation for --task custom; the module is imported, so its code runs.",
        ),
    ] = None,
    torchscript: TorchScriptOption = False,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    device: DeviceOption = "cpu",
    autocast: AutocastOption = "none",
    registry: RegistryOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Extract a model's fingerprint and store it in the registry.

    Overriding --size, --iterations, --seed, --noise-sigma or --noise-map-level records the
    protocol as "custom". The same weights may be registered under several names, at
    different noise inputs; a suspect is then probed at each record's input.
    """
    _configure_logging(debug)
    architecture = _arch_arguments(arch, arch_kwargs)
    sigma = _noise_value("--noise-sigma", noise_sigma)
    level = _noise_value("--noise-map-level", noise_map_level)
    start = time.perf_counter()
    with fail_on_errors(debug), ExtractionProgress(quiet) as progress:
        _check_names(task, protocol)
        runtime = _runtime(device, autocast)
        store = Registry(registry)
        handle = _load(model, torchscript, architecture)
        settings = api.resolve_protocol(
            handle, protocol, task, custom_degradation, noise_sigma=sigma, noise_map_level=level
        )
        overrides = {
            key: value for key, value in (("size", size), ("iterations", iterations), ("seed", seed))
            if value is not None
        }
        if overrides:
            settings = settings.replace(name="custom", **overrides)
        entry = api.register(
            handle, name, store, protocol=settings, progress=progress.callback(f"register {name}"), runtime=runtime
        )
    if json_output:
        print_json({**entry.to_dict(), "elapsed_seconds": time.perf_counter() - start})
        return
    stdout.print(f"registered {entry.name}: task {entry.task}, protocol {entry.protocol}, {entry.architecture}")
    recorded_sigma, recorded_level = entry.noise_input
    stdout.print(f"  noise sigma  {_level_text(recorded_sigma)}", markup=False)
    if recorded_level is not None:
        stdout.print(f"  noise map    {_level_text(recorded_level)}", markup=False)
    stdout.print(f"  model sha256 {entry.model_sha256}")
    stdout.print(f"  fingerprint  {entry.path}")


@app.command()
def verify(
    suspect: Annotated[str, typer.Argument(metavar="SUSPECT", help="Suspect model file or zoo:NAME.")],
    against: Annotated[Optional[str], typer.Option("--against", help="Name of the registered source fingerprint.")] = None,
    fingerprint: Annotated[
        Optional[Path], typer.Option("--fingerprint", help="Source fingerprint file, instead of --against.")
    ] = None,
    torchscript: TorchScriptOption = False,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    allow_custom: AllowCustomOption = False,
    device: DeviceOption = "cpu",
    autocast: AutocastOption = "none",
    registry: RegistryOption = None,
    rule: verdict_cli.RuleOption = "paper",
    fpr: verdict_cli.FprOption = 0.01,
    calibration: verdict_cli.CalibrationOption = None,
    query_only: verdict_cli.QueryOnlyOption = False,
    query_command: verdict_cli.QueryCommandOption = None,
    query_timeout: verdict_cli.QueryTimeoutOption = 60.0,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
    noise_sigma: ProbeNoiseSigmaOption = None,
    noise_map_level: ProbeNoiseMapLevelOption = None,
) -> None:
    """Decide whether SUSPECT is derived from a source fingerprint.

    The suspect is probed with exactly the source's recorded protocol and random draws, its
    noise sigma and noise-map level included.
    """
    _configure_logging(debug)
    _reject_probe_overrides("verify", noise_sigma, noise_map_level)
    if (against is None) == (fingerprint is None):
        usage_error("pass exactly one of --against NAME or --fingerprint FILE")
    verdict_cli.check_fpr(fpr)
    architecture = _arch_arguments(arch, arch_kwargs)
    if rule != "paper" or query_only or query_command is not None:
        verdict_cli.verify_beyond_paper(
            suspect=suspect, against=against, fingerprint=fingerprint, registry=registry, rule=rule, fpr=fpr,
            calibration=calibration, query_only=query_only, query_command=query_command, query_timeout=query_timeout,
            load=lambda model: _load(model, torchscript, architecture), allow_custom=allow_custom,
            json_output=json_output, quiet=quiet, debug=debug,
        )
        return
    with fail_on_errors(debug), ExtractionProgress(quiet) as progress:
        runtime = _runtime(device, autocast)
        if fingerprint is not None:
            source = load_fingerprint(fingerprint)
            source_name = source.name or fingerprint.stem
        else:
            source_name = against or ""
            source = Registry(registry).load(source_name)
        handle = _load(suspect, torchscript, architecture)
        result = api.verify(
            handle, source, source_name, progress.callback(f"verify {suspect}"), allow_custom, runtime
        )
    if json_output:
        print_json(result.to_dict())
        return
    stdout.print(verification_table([result]))


@app.command()
def identify(
    suspect: Annotated[str, typer.Argument(metavar="SUSPECT", help="Suspect model file or zoo:NAME.")],
    top: Annotated[Optional[int], typer.Option("--top", min=1, help="Show only the K closest fingerprints.")] = None,
    task: TaskOption = None,
    torchscript: TorchScriptOption = False,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    allow_custom: AllowCustomOption = False,
    device: DeviceOption = "cpu",
    autocast: AutocastOption = "none",
    registry: RegistryOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
    noise_sigma: ProbeNoiseSigmaOption = None,
    noise_map_level: ProbeNoiseMapLevelOption = None,
) -> None:
    """Compare SUSPECT with every registered fingerprint of its task, closest first.

    The suspect is probed once per distinct recorded protocol, at each one's noise sigma and
    noise-map level.
    """
    _configure_logging(debug)
    _reject_probe_overrides("identify", noise_sigma, noise_map_level)
    architecture = _arch_arguments(arch, arch_kwargs)
    with fail_on_errors(debug), ExtractionProgress(quiet) as progress:
        _check_names(task)
        results = api.identify(
            _load(suspect, torchscript, architecture),
            Registry(registry),
            top=top,
            task=task,
            progress=progress.callback(f"identify {suspect}"),
            allow_custom=allow_custom,
            runtime=_runtime(device, autocast),
        )
    if json_output:
        print_json([result.to_dict() for result in results])
        return
    if not results:
        stdout.print("no registered fingerprint matches the suspect's task, scale and channels")
        return
    stdout.print(verification_table(results))


@app.command("list")
def list_fingerprints(
    registry: RegistryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List the registered fingerprints."""
    _configure_logging(debug)
    with fail_on_errors(debug):
        entries = Registry(registry).entries()
    if json_output:
        print_json([entry.to_dict() for entry in entries])
        return
    if not entries:
        stdout.print("no fingerprints registered")
        return
    table = Table()
    columns = ("name", "task", "protocol", "noise sigma", "noise map", "architecture", "scale", "model sha256", "created")
    for column in columns:
        table.add_column(column)
    for entry in entries:
        recorded_sigma, recorded_level = entry.noise_input
        table.add_row(
            entry.name, entry.task, entry.protocol, _level_text(recorded_sigma), _level_text(recorded_level),
            entry.architecture, str(entry.scale), entry.model_sha256[:16], entry.created_at,
        )
    stdout.print(table)


_NO_LEVEL = "- (no noise-level input, or a record older than this field: such a model got 15/255)"


@app.command()
def show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Registered fingerprint name.")],
    registry: RegistryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show a registered fingerprint: model, protocol, noise input, versions and features.

    noise_sigma is the degradation's noise and noise_map_level the value of the noise-level
    map (models with a noise-level input), both on the [0, 1] scale.
    """
    _configure_logging(debug)
    with fail_on_errors(debug):
        store = Registry(registry)
        entry = store.get(name)
        record = store.load(name)
    details = {
        **entry.to_dict(),
        "model": record.model.to_dict(),
        "protocol_settings": record.protocol.to_dict(),
        "versions": record.versions,
        "loss": record.loss,
        "extraction_seconds": record.seconds,
        "features": record.features.tolist(),
    }
    if json_output:
        print_json(details)
        return
    for key, value in details.items():
        if key == "features":
            value = " ".join(f"{item:.4f}" for item in record.features.tolist())
        if key == "noise_sigma":
            value = _level_text(value)
        if key == "noise_map_level":
            value = _level_text(value) if value is not None else _NO_LEVEL
        if isinstance(value, dict):
            stdout.print(f"{key}:", markup=False)
            for inner_key, inner_value in value.items():
                stdout.print(f"  {inner_key}: {inner_value}", markup=False)
            continue
        stdout.print(f"{key}: {value}", markup=False)


@app.command()
def export(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Registered fingerprint name.")],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="File to write: .png for the critical image, .safetensors for the fingerprint."),
    ] = None,
    bundle: Annotated[
        Optional[Path],
        typer.Option("--bundle", help="Fingerprint file with all its metadata, for `critprint import` elsewhere."),
    ] = None,
    scale: Annotated[int, typer.Option("--scale", min=1, help="Enlarge the PNG picture by this integer factor.")] = 1,
    registry: RegistryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Write a registered fingerprint's critical image as PNG, or the fingerprint file itself.

    A fingerprint file (--bundle, or --out FILE.safetensors) contains the protocol, the model's
    identity, the versions and the name. On another machine, `critprint import` registers it and
    `critprint verify --fingerprint` compares a suspect with it.
    """
    _configure_logging(debug)
    if (out is None) == (bundle is None):
        usage_error("pass exactly one of --out FILE or --bundle FILE")
    if out is not None and out.suffix.lower() not in (".png", ".safetensors"):
        usage_error(f"invalid --out {str(out)!r}: expected a .png or .safetensors file name")
    with fail_on_errors(debug):
        record = Registry(registry).load(name)
        if out is not None and out.suffix.lower() == ".png":
            path = write_png(record.critical_image, out, scale=scale)
        else:
            path = save_fingerprint(record, bundle or out)
    if json_output:
        print_json({"name": name, "path": str(path)})
        return
    stdout.print(f"wrote {path}")


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Fingerprint file written by `critprint export`.")],
    name: Annotated[
        Optional[str], typer.Option("--name", help="Register under this name instead of the one the file records.")
    ] = None,
    registry: RegistryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Add a fingerprint file made on another machine to the registry."""
    _configure_logging(debug)
    with fail_on_errors(debug):
        entry = api.import_fingerprint(file, name, Registry(registry))
    if json_output:
        print_json(entry.to_dict())
        return
    stdout.print(f"imported {entry.name}: task {entry.task}, protocol {entry.protocol}, {entry.architecture}")


@app.command()
def remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Registered fingerprint name.")],
    registry: RegistryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Remove a fingerprint from the registry and delete its file."""
    _configure_logging(debug)
    with fail_on_errors(debug):
        entry = Registry(registry).remove(name)
    if json_output:
        print_json(entry.to_dict())
        return
    stdout.print(f"removed {entry.name}")


@app.command()
def check(
    registry: RegistryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Check every registered fingerprint file against the SHA-256 recorded at registration.

    Exits with status 1 when any fingerprint is missing, altered or corrupt.
    """
    _configure_logging(debug)
    with fail_on_errors(debug):
        results = Registry(registry).check()
    failures = [result for result in results if result.status != "ok"]
    if json_output:
        print_json([result.to_dict() for result in results])
    else:
        for result in results:
            detail = f": {result.message}" if result.message else ""
            stdout.print(f"{result.name}: {result.status}{detail}", markup=False)
        stdout.print(f"{len(results)} checked, {len(failures)} with problems", markup=False)
    if failures:
        raise typer.Exit(code=1)


@zoo_app.command("list")
def zoo_list(json_output: JsonOption = False) -> None:
    """List the bundled models."""
    entries = zoo.list_models()
    if json_output:
        print_json([entry.to_dict() for entry in entries])
        return
    table = Table()
    for column in ("name", "task", "architecture", "scale", "channels", "group"):
        table.add_column(column)
    for entry in entries:
        table.add_row(entry.name, entry.task, entry.architecture, str(entry.scale), str(entry.channels), entry.group)
    stdout.print(table)


@zoo_app.command("path")
def zoo_path(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Bundled model name, as `critprint zoo list` shows it.")],
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Print the path of a bundled model's weight file."""
    with fail_on_errors(debug):
        path = zoo.model_path(name)
        if not path.exists():
            raise ModelLoadError(f"bundled model file is missing: {path}; reinstall critprint")
    if json_output:
        print_json({"name": name, "path": str(path)})
        return
    stdout.print(str(path), markup=False)


@app.command()
def demo(
    protocol: ProtocolOption = "quick",
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Show critprint at work on bundled models, in a scratch registry.

    Registers a bundled denoiser, prunes 10 % of its weights, and verifies the
    pruned copy and an independently trained denoiser against it.
    """
    _configure_logging(debug)
    with tempfile.TemporaryDirectory(prefix="critprint-demo-") as workdir:
        with fail_on_errors(debug), ExtractionProgress(quiet) as progress:
            _check_names(protocol=protocol)
            result = run_demo(workdir, protocol, progress.callback)
    if json_output:
        print_json({
            "source": result.source.to_dict(),
            "verifications": [
                {**row.to_dict(), "label": label} for row, label in zip(result.verifications, result.labels, strict=True)
            ],
            "elapsed_seconds": result.seconds,
        })
        return
    title = (
        f"Suspects against {result.source.model_source} (registered as {result.source.name!r}, "
        f"protocol {result.source.protocol}); pruned copy: {round(DEMO_PRUNE_FRACTION * 100)} % smallest weights zeroed"
    )
    stdout.print(verification_table(result.verifications, title=title, labels=result.labels))
    stdout.print(f"derived means d < eta; finished in {result.seconds:.1f} s")


class AttackName(str, Enum):
    """Attacks selectable on the command line."""

    prune = "prune"
    finetune = "finetune"
    quantize = "quantize"
    weight_noise = "weight-noise"
    half = "half"
    channel_prune = "channel-prune"
    distill = "distill"


@app.command()
def attack(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model file spandrel loads (.pth, .ckpt, .safetensors) or zoo:NAME.")],
    attack_name: Annotated[AttackName, typer.Option("--attack", help="Attack to apply.")],
    out: Annotated[Path, typer.Option("--out", help="Attacked model to write, a .safetensors state dict spandrel loads.")],
    strength: Annotated[
        Optional[float], typer.Option("--strength", help="Starting strength; default: the attack's own (paper values where the paper has one).")
    ] = None,
    no_calibrate: Annotated[
        bool, typer.Option("--no-calibrate", help="Apply the strength as given instead of halving it until the PSNR drops by at most 1 dB.")
    ] = False,
    steps: Annotated[
        int, typer.Option("--steps", min=1, help="Optimiser steps of fine-tuning, channel pruning and distillation.")
    ] = 500,
    task: TaskOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Make an attacked copy of MODEL, as a thief would, and report the PSNR change it causes.

    PSNR is measured on a held-out photo the zoo models never saw (coffee); fine-tuning and
    distillation use another (chelsea).
    """
    from critprint.attacks import RestorationTask, run_attack

    _configure_logging(debug)
    if out.suffix.lower() != ".safetensors":
        usage_error(f"invalid --out {str(out)!r}: expected a .safetensors file name")
    with fail_on_errors(debug), JobProgress(quiet, f"attack {attack_name.value}") as progress:
        _check_names(task)
        handle = load_model(model)
        restoration = RestorationTask(
            task=infer_task(handle, task),
            scale=handle.scale,
            finetune_steps=steps,
            distill_steps=steps,
        )
        attacked, outcome = run_attack(
            attack_name.value, read_state_dict(model), restoration,
            strength=strength, calibrate=not no_calibrate, progress=progress.note,
        )
        path = save_state_dict(attacked, out)
    if json_output:
        print_json({**outcome.to_dict(), "model": model, "out": str(path)})
        return
    budget = "within" if outcome.within_budget else "NOT within"
    stdout.print(
        f"wrote {path}: {outcome.attack} with {outcome.parameter} {outcome.strength:g}, PSNR "
        f"{outcome.psnr_before_db:.2f} -> {outcome.psnr_after_db:.2f} dB ({outcome.psnr_change_db:+.2f} dB, "
        f"{budget} the 1 dB budget)",
        markup=False,
    )


@app.command()
def bench(
    out: Annotated[Path, typer.Option("--out", help="Folder for summary.json, report.md, pictures and cached work.")],
    quick: Annotated[bool, typer.Option("--quick", help="Run the reduced plan: few models, few attacks, minutes on a CPU.")] = False,
    tasks: Annotated[
        Optional[list[str]], typer.Option("--task", metavar="TASK", help="Run only this task; repeat for several.")
    ] = None,
    protocol: Annotated[
        Optional[str], typer.Option("--protocol", metavar="NAME", help=f"Protocol preset: {_PROTOCOL_HELP}. Default: the plan's.")
    ] = None,
    iterations: Annotated[
        Optional[int], typer.Option("--iterations", min=1, help="Override the protocol's number of Adam steps.")
    ] = None,
    methods: Annotated[
        Optional[list[str]],
        typer.Option("--method", metavar="METHOD", help="Run only this method; repeat for several. Default: all."),
    ] = None,
    sources: Annotated[
        Optional[list[str]],
        typer.Option("--source", metavar="MODEL", help="Attack only this source model (the others are still "
                     "compared); repeat for several. Default: every source of the plan."),
    ] = None,
    attacks: Annotated[
        Optional[list[str]],
        typer.Option("--attack", metavar="ATTACK", help="Run only this attack; repeat for several. Default: the plan's."),
    ] = None,
    study: Annotated[
        Optional[str],
        typer.Option("--study", metavar="NAME", help="Run a study instead of the plan: seeds (critical images of "
                     "each source model from several initialisations, and d/eta between them) or protocol "
                     "(ROC of each protocol setting on the same models and attacks)."),
    ] = None,
    seeds: Annotated[
        Optional[int], typer.Option("--seeds", metavar="N", help="Initialisations per model for --study seeds (default 4).")
    ] = None,
    settings: Annotated[
        Optional[list[str]],
        typer.Option("--setting", metavar="KEY=VALUE,...", help="A setting for --study protocol, such as "
                     "noise_sigma=0.3,iterations=1000; repeat for several. Default: the built-in grid per task."),
    ] = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Benchmark critprint and the paper's baselines on the evaluation zoo.

    Runs discriminability, robustness to every attack, the ablations and ROC, and writes
    DIR/summary.json, DIR/report.md and heat maps and montages. Work already in DIR is reused,
    so an interrupted run continues where it stopped. --study seeds writes DIR/seeds-summary.md
    and, per task, DIR/TASK/seeds-montage.png and seeds-matrix.png instead; --study protocol
    writes DIR/protocol-study.md and .json and, per task, DIR/TASK/protocol-study.png.
    """
    from critprint.evaluation import get_plan, run_bench
    from critprint.evaluation.plan import restrict_attacks

    if study is not None or seeds is not None or settings:
        unused = tuple(name for name, given in (("--method", bool(methods)), ("--source", bool(sources)),
                                                ("--attack", bool(attacks))) if given)
        options = StudyOptions(
            study=study, out=out, tasks=tuple(tasks or ()), protocol=protocol, iterations=iterations, seeds=seeds,
            settings=tuple(settings or ()), quick=quick, other_options=unused,
        )
        run_study(options, json_output, quiet, debug)
        return
    _configure_logging(debug)
    with fail_on_errors(debug), JobProgress(quiet, "bench") as progress:
        _check_names(protocol=protocol)
        changes: dict[str, Any] = {"iterations": iterations}
        if protocol is not None:
            changes["protocol"] = protocol
        if methods:
            changes["methods"] = tuple(methods)
        plan = get_plan("quick" if quick else "full", tuple(tasks) if tasks else None,
                        tuple(sources) if sources else None, **changes)
        if attacks:
            plan = restrict_attacks(plan, tuple(attacks))
        summary = run_bench(plan, out, progress.update)
    if json_output:
        print_json(summary)
        return
    table = Table(title=f"critprint bench ({plan.name} plan), {summary['seconds']:.0f} s; details in {out / 'report.md'}")
    for column in ("task", "method", "AUC", "TPR at 1 % FPR", "min ratio, sources", "min ratio, any two",
                   *plan.all_attacks):
        table.add_column(column)
    for task_name, task_summary in summary["tasks"].items():
        for method, entry in task_summary["methods"].items():
            table.add_row(
                task_name, method, _format_number(entry["auc"]), _format_number(entry["tpr_at_1pct_fpr"]),
                _format_number(entry["min_offdiag_ratio"]), _format_number(entry["min_negative_ratio"]),
                *(_format_number(entry["success_rate"].get(name)) for name in plan.all_attacks),
            )
    stdout.print(table)
    failures = sum(len(task_summary["failures"]) for task_summary in summary["tasks"].values())
    if failures:
        stdout.print(f"{failures} jobs failed; see {out / 'report.md'}", markup=False)


def _format_number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def main() -> None:
    """Run the command-line interface."""
    app()
