"""Critical-image extraction: the optimisation at the heart of the fingerprint.

Starting from S0 ~ N(0, beta^2), Adam minimises

    L(X) = ||X - M(D_T(X))||_2^2 - lambda * TV(X)

where the first term is the sum of squared errors over all pixels and
channels and TV is the anisotropic total variation. The minimiser is an image
the model restores well yet as far from smooth as the model allows, which
carries patterns specific to that model ("Fingerprinting Deep Image
Restoration Models", Quan et al., ICCV 2023).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from critprint.degradations import get_degradation, total_variation
from critprint.errors import IncompatibleModelError, InvalidInputError
from critprint.models import ModelHandle
from critprint.protocol import Protocol

__all__ = ["ProgressCallback", "Observer", "Runtime", "ExtractionResult", "extract_critical_image", "check_compatible"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, float], None]
"""Called as ``callback(step, total, loss)`` during an extraction."""

Observer = Callable[[int, torch.Tensor], None]
"""Called as ``observer(step, image)`` at every progress step, for studies of the optimisation.

``image`` is the current (1, C, H, W) image on the extraction's device,
detached; the observer must copy what it keeps.
"""

# Steps between two progress reports; reading the loss synchronises with the
# device, so it is not read at every step.
_REPORT_EVERY = 10

Autocast = Literal["none", "bfloat16", "float16"]
"""Lower precision for the model's forward pass, or ``"none"`` for float32."""

_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Device and precision settings of an extraction, none of them part of the protocol.

    The defaults reproduce a fingerprint bit for bit on the same machine. The
    other settings are for GPUs: they make the extraction faster and change
    its floating-point rounding, so a fingerprint made with them matches one
    made without them only within the decision's tolerance.

    Attributes:
        device: Torch device of the model and the image (``"cpu"``,
            ``"cuda"``, ``"cuda:1"``). Random draws are made on the CPU and
            copied, so every device receives the same draws.
        autocast: Run the model's forward pass in ``"bfloat16"`` or
            ``"float16"`` under ``torch.autocast``; the objective stays in
            float32.
        channels_last: Store the image and the model in channels-last
            memory order, which suits GPU convolutions.
        compile: Wrap the model in ``torch.compile``; the first steps pay for
            the compilation.
    """

    device: str = "cpu"
    autocast: Autocast = "none"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.autocast not in get_args(Autocast):
            raise InvalidInputError(
                f"invalid autocast {self.autocast!r}: expected one of {', '.join(get_args(Autocast))}"
            )
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise InvalidInputError(f"invalid device {self.device!r}: expected cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInputError(f"invalid device {self.device!r}: no CUDA GPU is available here; use --device cpu")

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory format of the image and the model's weights."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def prepare(self, handle: ModelHandle) -> ModelHandle:
        """Return a handle whose module is on the device, in the memory format, and compiled if requested.

        The handle's module is moved, not copied, as ``nn.Module.to`` does.
        """
        module = handle.module.to(device=self.device, memory_format=self.memory_format)
        if self.compile:
            module = torch.compile(module)
        return dataclasses.replace(handle, module=module)

    def forward_context(self) -> contextlib.AbstractContextManager[object]:
        """Return the context the model's forward pass runs in."""
        if self.autocast == "none":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=_AUTOCAST_DTYPES[self.autocast])


@dataclass(frozen=True)
class ExtractionResult:
    """The outcome of one extraction.

    Attributes:
        critical_image: float32 CPU tensor of shape (C, H, W), clamped to
            [0, 1].
        loss: Objective value at the last step.
        seconds: Wall-clock time of the optimisation.
    """

    critical_image: torch.Tensor
    loss: float
    seconds: float


def check_compatible(handle: ModelHandle, protocol: Protocol) -> None:
    """Raise if a model cannot be probed with a protocol.

    Raises:
        IncompatibleModelError: If the model's channels or scale do not fit
            the protocol's task, its minimum input size exceeds the
            protocol's input size, or it accepts one input size only and
            the protocol's differs.
    """
    if handle.input_channels != handle.output_channels:
        raise IncompatibleModelError(
            f"model {handle.source} maps {handle.input_channels} channels to {handle.output_channels}; "
            "critprint needs a restoration model with equal input and output channels"
        )
    if handle.input_channels not in (1, 3):
        raise IncompatibleModelError(
            f"model {handle.source} has {handle.input_channels} channels; expected 1 (gray) or 3 (RGB)"
        )
    if handle.scale != protocol.scale:
        raise IncompatibleModelError(
            f"model {handle.source} has scale {handle.scale} but the protocol needs scale {protocol.scale}; "
            "a suspect must have the source's scale"
        )
    if protocol.input_size < handle.minimum_size:
        raise IncompatibleModelError(
            f"critical image of {protocol.size} px gives a {protocol.input_size} px model input, below the "
            f"minimum {handle.minimum_size} px of {handle.architecture}; use a larger protocol size"
        )
    required = handle.required_size
    if required is not None and protocol.input_size != required:
        raise IncompatibleModelError(
            f"model {handle.source} accepts only {required} x {required} inputs, but the protocol gives it "
            f"{protocol.input_size} x {protocol.input_size}; register the source with --size {required * protocol.scale}, "
            "or re-export the model with dynamic height and width axes"
        )


def extract_critical_image(
    handle: ModelHandle,
    protocol: Protocol,
    progress: ProgressCallback | None = None,
    runtime: Runtime | None = None,
    observer: Observer | None = None,
) -> ExtractionResult:
    """Optimise the critical image of a model under a protocol.

    Every random draw (the initial image, then the degradation noise of each
    step) comes from one ``torch.Generator`` seeded with ``protocol.seed``, in
    a fixed order; fixed draws of a degradation (a rain layer, a motion angle)
    come from generators derived from the same seed. So the same model and
    protocol give the same image bit for bit on the same machine and thread
    count, and a suspect receives exactly the source's draws.

    Args:
        handle: The model, from :func:`critprint.models.load_model`.
        protocol: All parameters; its task selects the degradation.
        progress: Optional callback, called every few steps and at the end.
        runtime: Device and precision settings; the CPU in float32 if None.
        observer: Optional callback that receives the image every few steps.

    Returns:
        The critical image (C, H, W) in [0, 1], float32 on the CPU.

    Raises:
        IncompatibleModelError: If the model does not fit the protocol, or its
            output shape is wrong or not finite.
    """
    check_compatible(handle, protocol)
    runtime = runtime or Runtime()
    protocol = protocol.resolved()
    model = runtime.prepare(handle.with_noise_map_level(protocol.noise_map_level))
    degradation = get_degradation(protocol.task)
    channels = handle.input_channels
    shape = (1, channels, protocol.size, protocol.size)
    noise_shape = degradation.noise_shape(shape, protocol)
    device = torch.device(runtime.device)

    # Draws are made on the CPU, whatever the device, so that every device
    # receives the same values.
    generator = torch.Generator().manual_seed(protocol.seed)
    initial = torch.randn(shape, generator=generator) * protocol.beta
    image = initial.to(device=device, memory_format=runtime.memory_format).requires_grad_(True)
    optimiser = torch.optim.Adam([image], lr=protocol.learning_rate)

    start = time.perf_counter()
    loss_value = math.nan
    for step in range(1, protocol.iterations + 1):
        if protocol.schedule != "constant":
            optimiser.param_groups[0]["lr"] = protocol.learning_rate_at(step)
        noise = None
        if protocol.noise_sigma > 0:
            noise = (torch.randn(noise_shape, generator=generator) * protocol.noise_sigma).to(device)
        with runtime.forward_context():
            restored = model(degradation.apply(image, protocol, noise))
        if step == 1 and restored.shape != image.shape:
            raise IncompatibleModelError(
                f"model {handle.source} returned shape {tuple(restored.shape)} for a {protocol.task} input "
                f"of shape {tuple(noise_shape)}, expected {tuple(image.shape)}"
            )
        loss = (image - restored.float()).pow(2).sum() - protocol.tv_weight * total_variation(image)
        if protocol.objective == "maximise":
            loss = -loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if protocol.constraint == "clamp":
            with torch.no_grad():
                image.clamp_(0.0, 1.0)
        if step % _REPORT_EVERY == 0 or step == protocol.iterations:
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise IncompatibleModelError(
                    f"model {handle.source} produced a non-finite objective at step {step}; "
                    "it returns NaN or Inf for this input"
                )
            if progress is not None:
                progress(step, protocol.iterations, loss_value)
            if observer is not None:
                observer(step, image.detach())
    seconds = time.perf_counter() - start
    critical = image.detach().clamp(0.0, 1.0)[0].to("cpu", torch.float32).contiguous()
    logger.info("extracted %s in %.1f s (%d steps, loss %.4g)", handle.source, seconds, protocol.iterations, loss_value)
    return ExtractionResult(critical_image=critical, loss=loss_value, seconds=seconds)
