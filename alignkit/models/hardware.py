"""The hardware facts that decide precision, read in one place, and stated in their place where asked.

:func:`detect_hardware` reads a device's facts once per process: the CPU's model and flags (/proc/cpuinfo, or
torch's own CPUID probes), torch's CPU capability, the GPU's name and whether it computes bf16 natively.
Everything that depends on them (``train.precision: auto``, the sampling dtype, the peak-throughput cache key)
asks this module.

``ALIGNKIT_HARDWARE`` states the one fact that matters instead of reading it: ``native-bf16`` (the device
computes bf16 natively and faster than fp32 in every phase) or ``no-bf16`` (it does not); unset or
``detect``: read from the machine and measured. A CPU without bf16 units computes the same bf16 values by
emulation, only slower, so ``ALIGNKIT_HARDWARE=native-bf16`` runs the code path of a native-bf16 machine on any
machine (the test suite and CI use it; ``pytest --hardware=native-bf16`` sets it).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["HARDWARE_ENV", "HARDWARE_FACTS", "NATIVE_BF16_CPU_FLAGS", "Hardware", "detect_hardware",
           "native_bf16", "no_native_bf16", "stated_hardware"]

HARDWARE_ENV = "ALIGNKIT_HARDWARE"
HARDWARE_FACTS = ("native-bf16", "no-bf16")

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
        stated: ``native-bf16`` or ``no-bf16`` when ``ALIGNKIT_HARDWARE`` states the facts (nothing is
            measured then), None when they are read from the machine.
    """

    device_type: str
    name: str = ""
    cpu_flags: frozenset[str] = frozenset()
    cpu_capability: str = ""
    cuda_native_bf16: bool = False
    stated: str | None = None


def stated_hardware() -> str | None:
    """``ALIGNKIT_HARDWARE``: ``native-bf16``, ``no-bf16``, or None (unset or ``detect``: read the machine).

    Raises:
        ValueError: any other value, naming the variable.
    """
    value = os.environ.get(HARDWARE_ENV, "").strip().lower()
    if value in ("", "detect"):
        return None
    if value not in HARDWARE_FACTS:
        raise ValueError(f"{HARDWARE_ENV} must be native-bf16, no-bf16 or detect, got {value!r}")
    return value


def native_bf16(hw: Hardware) -> str | None:
    """Why ``hw`` computes bf16 natively (``"CPU has AMX-BF16"``), or None when it does not."""
    if hw.stated is not None:
        return f"{HARDWARE_ENV}={hw.stated}" if hw.stated == "native-bf16" else None
    if hw.device_type == "cuda":
        return f"GPU {hw.name} computes bf16 natively" if hw.cuda_native_bf16 else None
    if hw.device_type == "cpu":
        found = [label for flag, label in NATIVE_BF16_CPU_FLAGS.items() if flag in hw.cpu_flags]
        return f"CPU has {' and '.join(found)}" if found else None
    return None


def no_native_bf16(hw: Hardware) -> str:
    """Why ``hw`` has no native bf16 (the reverse of :func:`native_bf16`)."""
    if hw.stated is not None:
        return f"{HARDWARE_ENV}={hw.stated}"
    if hw.device_type == "cpu":
        flags = " or ".join(NATIVE_BF16_CPU_FLAGS)
        return f"this CPU has no native bf16: no {flags} flag"
    if hw.device_type == "cuda":
        return f"GPU {hw.name} has no native bf16"
    return f"no native bf16 known on {hw.device_type}"


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
    """The facts of ``device`` that decide its precision (read once per device and process), with
    ``ALIGNKIT_HARDWARE``'s statement when it makes one (read at every call, so a test can set it)."""
    device = torch.device(device)
    hw = _detect(device.type, device.index)
    stated = stated_hardware()
    return hw if stated is None else replace(hw, stated=stated)
