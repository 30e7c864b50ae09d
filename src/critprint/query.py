"""Query-only verification: compare a suspect's outputs with the source's, without gradients.

A suspect that can only be queried (a web service, a compiled app) cannot be
probed with the critical-image optimisation, which needs gradients through
it. It can still be shown the source's critical image: the probes are the
critical image passed through the task's degradation, plus a few nearby
copies of it jittered with small noise. A copy of the source restores them
almost exactly as the source does; an independent model restores them in its
own way. The statistic is the mean squared difference between the suspect's
and the source's outputs:

    q = mean over probes, channels and pixels of (O_suspect - O_source)^2

Every probe and every output goes through 8-bit quantisation (the values a
PNG file holds), so a model queried through files and a model run in memory
give the same q. For outputs rounded independently, quantisation alone adds
about 2 * (1/255)^2 / 12 = 2.6e-6 to q.

Probes are regenerated from the critical image, the protocol and
:class:`ProbeSettings`, from a generator derived from the protocol's seed, so
they are the same on every run.
"""

from __future__ import annotations

import io
import logging
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from critprint.checks import check_positive
from critprint.degradations import get_degradation
from critprint.errors import IncompatibleModelError, InvalidInputError
from critprint.images import to_uint8
from critprint.models import ModelHandle
from critprint.protocol import Protocol, seeded_generator

__all__ = [
    "ProbeSettings",
    "QueryFunction",
    "QueryCommandError",
    "probe_inputs",
    "quantize_8bit",
    "model_query",
    "command_query",
    "run_queries",
    "query_distance",
    "query_distances",
    "QUERY_STREAM",
    "DEFAULT_COMMAND_TIMEOUT",
]

logger = logging.getLogger(__name__)

QUERY_STREAM = 4
"""Stream number of :func:`critprint.protocol.seeded_generator` for the probes' draws."""

DEFAULT_COMMAND_TIMEOUT = 60.0
"""Seconds a query command may run per probe before it is stopped."""

QueryFunction = Callable[[torch.Tensor], torch.Tensor]
"""Maps one probe (C, H, W) in [0, 1] to the suspect's output (C, H * s, W * s) in [0, 1]."""


class QueryCommandError(IncompatibleModelError):
    """A query command failed, timed out, or wrote no valid PNG image."""


@dataclass(frozen=True)
class ProbeSettings:
    """Settings of the probes of a query-only verification.

    Attributes:
        count: Number of probes. The first is the degraded critical image;
            each further one degrades a jittered copy of it.
        jitter: Standard deviation of the Gaussian noise added to the
            critical image for the further probes, on the [0, 1] scale.
    """

    count: int = 4
    jitter: float = 0.05

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 1:
            raise InvalidInputError(f"invalid probe count {self.count!r}: expected an integer >= 1")
        check_positive("probe jitter", self.jitter, allow_zero=True)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-compatible dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeSettings:
        """Build settings from :meth:`to_dict`'s output."""
        return cls(count=int(data["count"]), jitter=float(data["jitter"]))


def quantize_8bit(image: torch.Tensor) -> torch.Tensor:
    """Clamp a float image to [0, 1] and round it to the 256 levels k / 255 (float32, same shape)."""
    return image.detach().to(torch.float32).clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def probe_inputs(critical_image: torch.Tensor, protocol: Protocol, settings: ProbeSettings) -> torch.Tensor:
    """Return the probes shown to a suspect: degraded copies of the critical image.

    Probe 0 is D(X) for the 8-bit critical image X; probe k > 0 is
    D(clamp(X + jitter * N_k)). The degradation D is the protocol's, with
    one draw of its noise per probe. All draws come from stream
    :data:`QUERY_STREAM` of the protocol's seed. Each probe is clamped to
    [0, 1] and rounded to 8 bits, the values a PNG file holds.

    Args:
        critical_image: The source's critical image, (C, H, W) in [0, 1].
        protocol: The source's protocol.
        settings: Number of probes and jitter.

    Returns:
        float32 tensor (count, C, H / s, W / s) in [0, 1], s the protocol's scale.
    """
    if critical_image.ndim != 3:
        raise InvalidInputError(f"invalid critical image: expected shape (C, H, W), got {tuple(critical_image.shape)}")
    protocol = protocol.resolved()
    degradation = get_degradation(protocol.task)
    clean = quantize_8bit(critical_image).unsqueeze(0)
    generator = seeded_generator(protocol.seed, QUERY_STREAM)
    noise_shape = degradation.noise_shape(tuple(clean.shape), protocol)
    probes = []
    with torch.no_grad():
        for index in range(settings.count):
            base = clean
            if index > 0 and settings.jitter > 0:
                base = (clean + settings.jitter * torch.randn(clean.shape, generator=generator)).clamp(0.0, 1.0)
            noise = None
            if protocol.noise_sigma > 0:
                noise = torch.randn(noise_shape, generator=generator) * protocol.noise_sigma
            probes.append(quantize_8bit(degradation.apply(base, protocol, noise))[0])
    return torch.stack(probes)


def model_query(handle: ModelHandle, protocol: Protocol) -> QueryFunction:
    """Return a query function that runs a loaded model in memory, without gradients, on the model's device.

    The noise-level map of DRUNet-like models gets the protocol's level, as
    in the extraction.
    """
    model = handle.with_noise_map_level(protocol.resolved().noise_map_level)
    # The model may sit on a GPU after an extraction there; probes follow it.
    tensors = [*handle.module.parameters(), *handle.module.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")

    def query(probe: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(probe.unsqueeze(0).to(device))[0].detach().to("cpu", torch.float32)

    return query


def _png_bytes(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def _read_png(path: Path, command: str) -> torch.Tensor:
    if not path.is_file() or path.stat().st_size == 0:
        raise QueryCommandError(f"query command {command!r} wrote no image to {{out}}; it must write a PNG file there")
    try:
        with Image.open(path) as picture:
            picture.load()
            mode = picture.mode
            if mode in ("L", "I;16", "I"):
                array = np.asarray(picture.convert("L"), dtype=np.float32)[None]
            else:
                array = np.asarray(picture.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError) as error:
        raise QueryCommandError(
            f"query command {command!r} wrote {path.name}, which is not a valid image ({error}); it must write a PNG"
        ) from None
    return torch.from_numpy(np.ascontiguousarray(array)) / 255.0


def command_query(command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> QueryFunction:
    """Return a query function that runs a command mapping an input PNG to an output PNG.

    The command is split like a shell line (:func:`shlex.split`) but run
    without a shell; ``{in}`` and ``{out}`` in its words are replaced by the
    input and output file paths. Each probe gets a fresh temporary folder.

    Args:
        command: For example ``"python client.py {in} {out}"``.
        timeout: Seconds allowed per call.

    Raises:
        InvalidInputError: If the command is empty or lacks ``{in}`` or ``{out}``.
    """
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise InvalidInputError(f"invalid query command {command!r}: {error}; quote it as a shell line") from None
    if not words:
        raise InvalidInputError("empty query command; pass --query-command 'PROGRAM ARGS {in} {out}'")
    joined = " ".join(words)
    if "{in}" not in joined or "{out}" not in joined:
        raise InvalidInputError(
            f"query command {command!r} is missing {{in}} or {{out}}; write it as 'PROGRAM ARGS {{in}} {{out}}'"
        )
    check_positive("query timeout", timeout)

    def query(probe: torch.Tensor) -> torch.Tensor:
        with tempfile.TemporaryDirectory(prefix="critprint-query-") as folder:
            source = Path(folder) / "in.png"
            target = Path(folder) / "out.png"
            source.write_bytes(_png_bytes(probe))
            argv = [word.replace("{in}", str(source)).replace("{out}", str(target)) for word in words]
            try:
                completed = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
            except FileNotFoundError:
                raise QueryCommandError(f"query command {command!r}: program {argv[0]!r} not found; check PATH") from None
            except subprocess.TimeoutExpired:
                raise QueryCommandError(
                    f"query command {command!r} timed out after {timeout:g} s; raise --query-timeout"
                ) from None
            if completed.returncode != 0:
                detail = completed.stderr.decode(errors="replace").strip().splitlines()
                last = f": {detail[-1]}" if detail else ""
                raise QueryCommandError(
                    f"query command {command!r} exited with status {completed.returncode}{last}; run it by hand to fix it"
                )
            return _read_png(target, command)

    return query


def run_queries(query: QueryFunction, probes: torch.Tensor, scale: int) -> torch.Tensor:
    """Run every probe through a query function and return the 8-bit outputs.

    Args:
        query: The suspect or the source.
        probes: (count, C, h, w) probes from :func:`probe_inputs`.
        scale: The model's scale; outputs must be (C, h * scale, w * scale).

    Returns:
        float32 tensor (count, C, h * scale, w * scale) in [0, 1], rounded to 8 bits.

    Raises:
        IncompatibleModelError: If an output has another shape or is not finite.
    """
    outputs = []
    expected = (probes.shape[1], probes.shape[2] * scale, probes.shape[3] * scale)
    for probe in probes:
        output = query(probe)
        if tuple(output.shape) != expected:
            raise IncompatibleModelError(
                f"the suspect returned an image of shape {tuple(output.shape)} for a probe of shape "
                f"{tuple(probe.shape)}, expected {expected}; it must restore at the source's scale and channels"
            )
        if not torch.isfinite(output).all():
            raise IncompatibleModelError("the suspect returned NaN or Inf for a probe")
        outputs.append(quantize_8bit(output))
    return torch.stack(outputs)


def query_distance(source_outputs: torch.Tensor, suspect_outputs: torch.Tensor) -> float:
    """Return q, the mean squared difference of two output stacks of equal shape (float64 sum)."""
    if source_outputs.shape != suspect_outputs.shape:
        raise InvalidInputError(
            f"invalid query outputs: expected equal shapes, got {tuple(source_outputs.shape)} "
            f"and {tuple(suspect_outputs.shape)}"
        )
    difference = source_outputs.to(torch.float64) - suspect_outputs.to(torch.float64)
    return float(difference.pow(2).mean())


def query_distances(
    critical_image: torch.Tensor,
    protocol: Protocol,
    source: ModelHandle,
    suspects: Iterable[tuple[str, ModelHandle]],
    settings: ProbeSettings,
) -> dict[str, float]:
    """Return q between the source and each suspect, on probes made from the source's critical image.

    Args:
        critical_image: The source's critical image, (C, H, W) in [0, 1].
        protocol: The source's protocol: it makes the probes and sets the noise-level map.
        source: The source model.
        suspects: (name, model) pairs, consumed one at a time, so a lazy
            iterable loads each model only when it is compared.
        settings: Number of probes and jitter.
    """
    probes = probe_inputs(critical_image, protocol, settings)
    expected = run_queries(model_query(source, protocol), probes, protocol.scale)
    return {name: query_distance(expected, run_queries(model_query(handle, protocol), probes, protocol.scale))
            for name, handle in suspects}
