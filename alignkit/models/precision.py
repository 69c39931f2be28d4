"""The one decision of what a run computes in: bf16 autocast where the hardware computes bf16 natively, else fp32.

:func:`choose_precision` is a pure function of ``train.precision`` and the facts :func:`detect_hardware`
reads (CPU flags, torch's CPU capability, the GPU), so every answer is testable on any machine. The trainer's
autocast, FSDP's mixed precision and the line a run prints all come from it. Only the compute precision
changes: weights, optimizer states, losses and log-prob reductions stay fp32 (autocast never casts a
parameter; ``models.logps`` and the losses upcast before their reductions).

On a CPU without bf16 units (no AMX-BF16, no AVX512-BF16), bf16 matmuls are emulated and slower than fp32, so
``auto`` keeps fp32 there; a GPU counts when it computes bf16 natively (Ampere and later), not by emulation.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit.lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


__all__ = ["Hardware", "PrecisionChoice", "autocast_context", "choose_precision", "detect_hardware", "native_bf16",
           "resolve_precision", "stored_precision"]

# /proc/cpuinfo flag -> the name a person knows it by
NATIVE_BF16_CPU_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}


@dataclass(frozen=True)
class Hardware:
    """What decides the precision of one device.

    Attributes:
        device_type: ``cpu``, ``cuda``, ``mps``, ...
        name: the CPU model or GPU name (for messages and the peak-throughput cache key).
        cpu_flags: the CPU's feature flags as /proc/cpuinfo spells them (only the bf16 ones matter).
        cpu_capability: torch's vector ISA for its own kernels (``AVX512``, ``AVX2``, ``DEFAULT``...).
        cuda_native_bf16: the GPU computes bf16 natively (not by emulation).
    """

    device_type: str
    name: str = ""
    cpu_flags: frozenset[str] = frozenset()
    cpu_capability: str = ""
    cuda_native_bf16: bool = False


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run computes in, and why."""

    requested: str  # train.precision: auto, fp32 or bf16
    autocast_dtype: torch.dtype | None  # None: no autocast (fp32, or the stored dtype)
    reason: str
    stored: str | None = None  # no autocast by design: the weights' dtype (e.g. "float32") is what runs

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
        """The line a run prints at its start, e.g. ``precision: fp32 (this CPU has no native bf16: ...)``."""
        return f"precision: {self.label} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "used": self.label, "reason": self.reason}


def native_bf16(hw: Hardware) -> str | None:
    """Why ``hw`` computes bf16 natively (``"CPU has AMX-BF16"``), or None when it does not."""
    if hw.device_type == "cuda":
        return f"GPU {hw.name} computes bf16 natively" if hw.cuda_native_bf16 else None
    if hw.device_type == "cpu":
        found = [label for flag, label in NATIVE_BF16_CPU_FLAGS.items() if flag in hw.cpu_flags]
        return f"CPU has {' and '.join(found)}" if found else None
    return None


def _no_native_bf16(hw: Hardware) -> str:
    if hw.device_type == "cpu":
        flags = " or ".join(NATIVE_BF16_CPU_FLAGS)
        return f"this CPU has no native bf16: no {flags} flag"
    if hw.device_type == "cuda":
        return f"GPU {hw.name} has no native bf16"
    return f"no native bf16 known on {hw.device_type}"


def stored_precision(dtype: str) -> PrecisionChoice:
    """A run with no precision setting (online training): no autocast, it computes in ``model.dtype``."""
    return PrecisionChoice("none", None, f"online training has no autocast; it computes in model.dtype {dtype}",
                           stored=dtype)


def choose_precision(requested: str, hw: Hardware) -> PrecisionChoice:
    """``train.precision`` (auto, fp32 or bf16) on ``hw``: bf16 autocast or fp32, with the reason."""
    if requested == "fp32":
        return PrecisionChoice(requested, None, "train.precision: fp32")
    native = native_bf16(hw)
    if requested == "bf16":
        detail = native or f"{_no_native_bf16(hw)}, so slower than fp32"
        return PrecisionChoice(requested, torch.bfloat16, f"train.precision: bf16; {detail}")
    if requested != "auto":
        raise ValueError(f"train.precision must be auto, fp32 or bf16, got {requested!r}")
    if native:
        return PrecisionChoice(requested, torch.bfloat16, native)
    return PrecisionChoice(requested, None, _no_native_bf16(hw))


def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("", {}) where there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    name, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return name, flags


def _torch_cpu_flags() -> frozenset[str]:
    """The bf16 flags by torch's own CPUID probes, for systems without /proc/cpuinfo."""
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    found = set()
    for flag, probe in probes.items():
        fn = getattr(torch.cpu, probe, None)
        if callable(fn) and fn():
            found.add(flag)
    return frozenset(found)


@lru_cache(maxsize=8)
def _detect(device_type: str, index: int | None) -> Hardware:
    if device_type == "cuda":
        index = torch.cuda.current_device() if index is None else index
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return Hardware("cuda", torch.cuda.get_device_name(index), cuda_native_bf16=native)
    if device_type == "cpu":
        name, flags = _cpuinfo()
        if not flags:
            flags = _torch_cpu_flags()
        return Hardware("cpu", name or platform.processor() or platform.machine(), flags,
                        torch.backends.cpu.get_cpu_capability())
    return Hardware(device_type, device_type)


def detect_hardware(device: torch.device | str) -> Hardware:
    """The facts of ``device`` that decide its precision (read once per device and process)."""
    device = torch.device(device)
    return _detect(device.type, device.index)


def autocast_context(device_type: str, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device_type``; with None, autocast switched off (an enclosing one does not
    leak in). Every forward whose result is compared with the policy's (the training forward, the reference's,
    cached or live) runs under the same one, so that a policy equal to its reference has log-ratios of exactly 0.
    """
    if dtype is None:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=dtype)


def resolve_precision(requested: str, device: torch.device | str) -> PrecisionChoice:
    """``train.precision`` on this machine's ``device`` (:func:`choose_precision` of :func:`detect_hardware`)."""
    return choose_precision(requested, detect_hardware(device))
