"""The one decision of what each phase of a run computes in: bf16 where the hardware computes it faster than
fp32 (measured), else fp32.

:func:`choose_precision` is a pure function of ``train.precision``, the hardware facts
(:mod:`alignkit.models.hardware`) and, for ``auto``, the measured speed of the phase's kernel in each dtype
(:class:`PhaseSpeed`), so every answer is testable on any machine. :func:`resolve_precision` asks this machine:
the facts, and the speeds from :func:`~alignkit.models.measured.phase_flops` (measured once, then cached per
machine and torch version). The trainer's autocast, FSDP's mixed precision, the cached reference and the line a
run prints come from the ``training`` phase; sampling pairs (``generation_dtype: auto``) from ``decoding``.
The phases may differ: training multiplies large blocks (compute-bound), decoding a small batch reads every
weight once per token (bandwidth-bound), and bf16 units speed up the first more than the second.

Only the compute precision changes: weights, optimizer states, losses and log-prob reductions stay fp32
(autocast never casts a parameter; ``models.logps`` and the losses upcast before their reductions).

Where ``ALIGNKIT_HARDWARE`` states the facts, nothing is measured: ``native-bf16`` picks bf16 in every phase,
``no-bf16`` fp32. On a CPU without bf16 units (no AMX-BF16, no AVX512-BF16) bf16 matmuls are emulated and
measure far slower than fp32, so ``auto`` keeps fp32 there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from alignkit.models.hardware import Hardware, detect_hardware, native_bf16, no_native_bf16
from alignkit.models.measured import PHASE_KERNELS, phase_flops

__all__ = ["BF16_MIN_SPEEDUP", "PHASES", "PhasePrecisions", "PhaseSpeed", "PrecisionChoice", "autocast_context",
           "choose_precision", "measure_phase_speed", "resolve_phases", "resolve_precision", "stored_precision"]

PHASES = ("training", "decoding")
# bf16 must be this much faster than fp32 to be chosen: a smaller gain is within the noise of a shared
# machine's measurement and does not pay for bf16's rounding.
BF16_MIN_SPEEDUP = 1.1


@dataclass(frozen=True)
class PhaseSpeed:
    """The measured throughput of one phase's kernel in fp32 and in bf16 (FLOP/s; the ratio decides).

    Attributes:
        phase: ``training`` or ``decoding``.
        fp32, bf16: FLOP/s of the kernel in each dtype.
        kernel: what was measured, e.g. ``(4x4096)@(4096x4096) matmul``.
    """

    phase: str
    fp32: float
    bf16: float
    kernel: str = ""

    @property
    def bf16_speedup(self) -> float:
        return self.bf16 / self.fp32


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run computes in, and why."""

    requested: str  # train.precision: auto, fp32 or bf16
    autocast_dtype: torch.dtype | None  # None: no autocast (fp32, or the stored dtype)
    reason: str
    stored: str | None = None  # no autocast by design: the weights' dtype (e.g. "float32") is what runs
    phase: str = "training"
    speed: PhaseSpeed | None = None  # what auto measured, where it measured

    @property
    def label(self) -> str:
        if self.autocast_dtype == torch.bfloat16:
            return "bf16 autocast"
        return self.stored or "fp32"

    @property
    def compute_dtype(self) -> str:
        """The dtype matmuls run in, as the peak-throughput benchmark names it."""
        return "bfloat16" if self.autocast_dtype == torch.bfloat16 else "float32"

    def line(self) -> str:
        """The line a run prints at its start, e.g. ``precision: fp32 (this CPU has no native bf16: ...)``;
        other phases than training name theirs: ``decoding precision: bf16 (...)``."""
        prefix = "precision" if self.phase == "training" else f"{self.phase} precision"
        label = self.label if self.phase == "training" else ("bf16" if self.autocast_dtype else "fp32")
        return f"{prefix}: {label} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requested": self.requested, "used": self.label, "reason": self.reason}
        if self.speed is not None:
            out["measured_flops_per_second"] = {"fp32": self.speed.fp32, "bf16": self.speed.bf16,
                                                "kernel": self.speed.kernel}
        return out


@dataclass(frozen=True)
class PhasePrecisions:
    """Each phase's choice: ``training`` (the trainer's autocast, FSDP, the cached reference) and ``decoding``
    (sampling with ``generation_dtype: auto``)."""

    training: PrecisionChoice
    decoding: PrecisionChoice

    def lines(self) -> list[str]:
        return [self.training.line(), self.decoding.line()]

    def to_dict(self) -> dict[str, Any]:
        """``{"training": {"requested", "used", "reason", ...}, "decoding": {...}}``."""
        return {"training": self.training.to_dict(), "decoding": self.decoding.to_dict()}




def stored_precision(dtype: str) -> PrecisionChoice:
    """A run with no precision setting (online training): no autocast, it computes in ``model.dtype``."""
    return PrecisionChoice("none", None, f"online training has no autocast; it computes in model.dtype {dtype}",
                           stored=dtype)


def choose_precision(requested: str, hw: Hardware, speed: PhaseSpeed | None = None,
                     phase: str = "training") -> PrecisionChoice:
    """``train.precision`` (auto, fp32 or bf16) for ``phase`` on ``hw``: bf16 or fp32, with the reason.

    ``auto`` follows ``speed`` (bf16 when it measured at least :data:`BF16_MIN_SPEEDUP` times fp32's speed),
    or the stated facts (``hw.stated``), or, with neither, the hardware's native bf16 alone.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    if requested == "fp32":
        return PrecisionChoice(requested, None, "train.precision: fp32", phase=phase)
    native = native_bf16(hw)
    if requested == "bf16":
        detail = native or f"{no_native_bf16(hw)}, so slower than fp32"
        return PrecisionChoice(requested, torch.bfloat16, f"train.precision: bf16; {detail}", phase=phase)
    if requested != "auto":
        raise ValueError(f"train.precision must be auto, fp32 or bf16, got {requested!r}")
    if speed is None or hw.stated is not None:
        if native:
            return PrecisionChoice(requested, torch.bfloat16, native, phase=phase)
        return PrecisionChoice(requested, None, no_native_bf16(hw), phase=phase)
    facts = native or no_native_bf16(hw)
    measured = f"bf16 measured {speed.bf16_speedup:.2g}x fp32's speed on {speed.kernel or phase}"
    if speed.bf16_speedup >= BF16_MIN_SPEEDUP:
        return PrecisionChoice(requested, torch.bfloat16, f"{facts}; {measured}", phase=phase, speed=speed)
    return PrecisionChoice(requested, None, f"{facts}; {measured} (under {BF16_MIN_SPEEDUP}x)", phase=phase,
                           speed=speed)


def measure_phase_speed(device: torch.device, phase: str) -> PhaseSpeed | None:
    """This machine's :class:`PhaseSpeed` for ``phase`` (cached per machine and torch version), or None on a
    device type without a kernel to measure (the native-bf16 facts decide there)."""
    kernels = PHASE_KERNELS.get(device.type)
    if kernels is None:
        return None
    rows, size = kernels[phase]
    fp32 = phase_flops(device, phase, "float32")["flops_per_second"]
    bf16 = phase_flops(device, phase, "bfloat16")["flops_per_second"]
    return PhaseSpeed(phase, fp32, bf16, f"({rows}x{size})@({size}x{size}) matmul")


def autocast_context(device_type: str, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device_type``; with None, autocast switched off (an enclosing one does not
    leak in). Every forward whose result is compared with the policy's (the training forward, the reference's,
    cached or live) runs under the same one, so that a policy equal to its reference has log-ratios of exactly 0.
    """
    if dtype is None:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=dtype)


def resolve_precision(requested: str, device: torch.device | str, phase: str = "training") -> PrecisionChoice:
    """``train.precision`` for ``phase`` on this machine's ``device``: :func:`choose_precision` of
    :func:`~alignkit.models.hardware.detect_hardware` and, for ``auto`` on hardware not stated by
    ``ALIGNKIT_HARDWARE``, the measured :func:`measure_phase_speed`."""
    device = torch.device(device)
    hw = detect_hardware(device)
    speed = measure_phase_speed(device, phase) if requested == "auto" and hw.stated is None else None
    return choose_precision(requested, hw, speed, phase)


def resolve_phases(training: str, device: torch.device | str, decoding: str = "auto") -> PhasePrecisions:
    """:func:`resolve_precision` of each phase: ``training`` is ``train.precision``, ``decoding`` the sampling
    dtype's request (``auto``, ``fp32`` or ``bf16``)."""
    return PhasePrecisions(resolve_precision(training, device, "training"),
                           resolve_precision(decoding, device, "decoding"))
