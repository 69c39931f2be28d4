"""The one precision rule: bf16 autocast where the hardware computes bf16 natively, else fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignkit.models.precision import (
    Hardware,
    choose_precision,
    detect_hardware,
    native_bf16,
    resolve_precision,
)

AMX_XEON = Hardware("cpu", "Intel Xeon", frozenset({"avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}), "AVX512")
EPYC = Hardware("cpu", "AMD EPYC", frozenset({"avx2", "avx512f", "avx512_bf16"}), "AVX512")
OLD_XEON = Hardware("cpu", "Intel Xeon", frozenset({"avx2", "avx512f"}), "AVX512")
A100 = Hardware("cuda", "NVIDIA A100", cuda_native_bf16=True)
T4 = Hardware("cuda", "Tesla T4", cuda_native_bf16=False)


@pytest.mark.parametrize(("hw", "dtype", "line"), [
    (AMX_XEON, torch.bfloat16, "precision: bf16 autocast (CPU has AMX-BF16 and AVX512-BF16)"),
    (EPYC, torch.bfloat16, "precision: bf16 autocast (CPU has AVX512-BF16)"),
    (OLD_XEON, None, "precision: fp32 (this CPU has no native bf16: no amx_bf16 or avx512_bf16 flag)"),
    (A100, torch.bfloat16, "precision: bf16 autocast (GPU NVIDIA A100 computes bf16 natively)"),
    (T4, None, "precision: fp32 (GPU Tesla T4 has no native bf16)"),
    (Hardware("mps", "mps"), None, "precision: fp32 (no native bf16 known on mps)"),
])
def test_auto_follows_native_bf16(hw, dtype, line):
    choice = choose_precision("auto", hw)
    assert choice.autocast_dtype == dtype
    assert choice.line() == line
    assert (native_bf16(hw) is not None) == (dtype is not None)


@pytest.mark.parametrize("hw", [AMX_XEON, OLD_XEON, T4])
def test_an_explicit_setting_wins(hw):
    assert choose_precision("fp32", hw).autocast_dtype is None
    bf16 = choose_precision("bf16", hw)
    assert bf16.autocast_dtype == torch.bfloat16
    assert ("slower than fp32" in bf16.reason) == (native_bf16(hw) is None)
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        choose_precision("fp16", hw)


def test_this_machine_is_read_from_its_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    flags = next(line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                 if line.startswith(("flags", "Features")))
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    hw = detect_hardware("cpu")
    assert hw.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert (resolve_precision("auto", "cpu").autocast_dtype == torch.bfloat16) == native
    assert resolve_precision("auto", torch.device("cpu")).to_dict()["used"] == ("bf16 autocast" if native else "fp32")
