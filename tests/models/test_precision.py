"""The one precision rule: bf16 autocast where the hardware computes bf16 natively, else fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignkit.models.hardware import HARDWARE_ENV, Hardware, detect_hardware, native_bf16
from alignkit.models.measured import PHASE_KERNELS, cached_measure, machine_key
from alignkit.models.precision import (
    BF16_MIN_SPEEDUP,
    PhasePrecisions,
    PhaseSpeed,
    choose_precision,
    resolve_phases,
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


def test_this_machine_is_read_from_its_cpu_flags(monkeypatch):
    monkeypatch.delenv(HARDWARE_ENV)  # read the machine, not the facts the test session states
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    flags = next(line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                 if line.startswith(("flags", "Features")))
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    hw = detect_hardware("cpu")
    assert hw.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert hw.stated is None and (native_bf16(hw) is not None) == native
    assert (choose_precision("auto", hw).autocast_dtype == torch.bfloat16) == native


# ---------------------------------------------------------------------------------------------------------
# Stated facts: ALIGNKIT_HARDWARE


@pytest.mark.parametrize(("stated", "dtype"), [("native-bf16", torch.bfloat16), ("no-bf16", None)])
def test_stated_facts_replace_the_machine_s_and_nothing_is_measured(monkeypatch, tmp_path, stated, dtype):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    monkeypatch.setenv(HARDWARE_ENV, stated)
    hw = detect_hardware("cpu")
    assert hw.stated == stated and hw.name == detect_hardware("cpu").name  # the CPU's name is still read
    phases = resolve_phases("auto", "cpu")
    for choice in (phases.training, phases.decoding):
        assert choice.autocast_dtype == dtype and choice.speed is None
        assert f"{HARDWARE_ENV}={stated}" in choice.reason
    assert not list(tmp_path.rglob("*.json"))  # nothing measured, nothing cached
    assert phases.training.line().startswith("precision: ")
    assert phases.decoding.line().startswith("decoding precision: ")
    assert resolve_precision("fp32", "cpu").autocast_dtype is None  # an explicit setting still wins
    assert resolve_precision("bf16", "cpu").autocast_dtype == torch.bfloat16


@pytest.mark.parametrize("value", ["", "detect", "DETECT"])
def test_detect_or_unset_reads_the_machine(monkeypatch, value):
    monkeypatch.setenv(HARDWARE_ENV, value)
    assert detect_hardware("cpu").stated is None


def test_other_stated_facts_are_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(HARDWARE_ENV, "amx")
    with pytest.raises(ValueError, match=f"{HARDWARE_ENV} must be native-bf16, no-bf16 or detect, got 'amx'"):
        detect_hardware("cpu")


# ---------------------------------------------------------------------------------------------------------
# auto: each phase by its measured speed


@pytest.mark.parametrize(("fp32", "bf16", "dtype"), [
    (100.0, 300.0, torch.bfloat16),  # AMX: bf16 units far faster
    (100.0, 112.0, torch.bfloat16),  # just above the margin
    (100.0, 105.0, None),  # within the noise of a measurement: not worth bf16's rounding
    (100.0, 2.0, None),  # emulated bf16
])
def test_auto_picks_the_dtype_that_measured_faster(fp32, bf16, dtype):
    for hw in (EPYC, OLD_XEON):  # the measurement decides, not the flag
        choice = choose_precision("auto", hw, PhaseSpeed("decoding", fp32, bf16, "k"), "decoding")
        assert choice.autocast_dtype == dtype
        assert f"bf16 measured {bf16 / fp32:.2g}x fp32's speed on k" in choice.reason
        assert choice.to_dict()["measured_flops_per_second"] == {"fp32": fp32, "bf16": bf16, "kernel": "k"}
    assert BF16_MIN_SPEEDUP == 1.1


def test_training_and_decoding_may_differ():
    """AVX512-BF16 without AMX: bf16 matmuls faster, small-batch decoding not (an assumed measurement)."""
    training = choose_precision("auto", EPYC, PhaseSpeed("training", 100.0, 180.0), "training")
    decoding = choose_precision("auto", EPYC, PhaseSpeed("decoding", 10.0, 9.0), "decoding")
    phases = PhasePrecisions(training, decoding)
    assert phases.lines()[0].startswith("precision: bf16 autocast (CPU has AVX512-BF16; bf16 measured 1.8x")
    assert phases.lines()[1].startswith("decoding precision: fp32 (CPU has AVX512-BF16; bf16 measured 0.9x")
    assert phases.to_dict()["training"]["used"] == "bf16 autocast"
    assert phases.to_dict()["decoding"]["used"] == "fp32"
    with pytest.raises(ValueError, match="phase must be one of training, decoding"):
        choose_precision("auto", EPYC, None, "sampling")


def _write_phase_cache(phase: str, flops: dict[str, float]) -> list[Path]:
    """Cache entries as the measurement writes them, with given FLOP/s (no real measurement)."""
    cpu = torch.device("cpu")
    rows, size = PHASE_KERNELS["cpu"][phase]
    paths = []
    for dtype, value in flops.items():
        key = {**machine_key(cpu, dtype), "phase": phase, "rows": rows, "size": size}
        path = Path(cached_measure(f"phase-{phase}-{dtype}", key, "flops_per_second", "matrix_size",
                                   lambda value=value: (value, size), 0.0)["file"])
        paths.append(path)
    return paths


def test_the_measured_speeds_are_cached_per_machine_and_read_back(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    monkeypatch.delenv(HARDWARE_ENV)
    _write_phase_cache("training", {"float32": 50e9, "bfloat16": 400e9})
    _write_phase_cache("decoding", {"float32": 10e9, "bfloat16": 1e9})
    phases = resolve_phases("auto", "cpu")
    assert phases.training.autocast_dtype == torch.bfloat16 and phases.training.speed.bf16 == 400e9
    assert phases.decoding.autocast_dtype is None and phases.decoding.speed.fp32 == 10e9
    assert "(4x4096)@(4096x4096) matmul" in phases.decoding.reason
    entry = json.loads(next(tmp_path.rglob("phase-training-float32-*.json")).read_text())
    assert entry["key"]["phase"] == "training" and entry["key"]["torch"] == torch.__version__
    assert entry["key"] == {**machine_key(torch.device("cpu"), "float32"), "phase": "training",
                            "rows": PHASE_KERNELS["cpu"]["training"][0], "size": PHASE_KERNELS["cpu"]["training"][1]}


@pytest.mark.parametrize("damage", [
    lambda r: r.replace('"flops_per_second": 5', '"flops_per_second": Infinity, "x": 5'),
    lambda r: r.replace('"flops_per_second": 5', '"flops_per_second": NaN, "x": 5'),
    lambda r: r.replace('"checked_against": 0.0', '"checked_against": Infinity'),
    lambda r: r.replace('"checked_against": 0.0', '"checked_against": "lots"'),
    lambda r: r.replace('"flops_per_second": 5', '"flops_per_second": true, "x": 5'),
    lambda r: "[" * 5000 + "]" * 5000,
    lambda r: "[1, 2]",
    lambda r: r[: len(r) // 2],
], ids=["infinity", "nan", "checked-infinity", "checked-text", "bool", "deep", "list", "torn"])
def test_a_damaged_measure_is_measured_again_and_rewritten(monkeypatch, tmp_path, damage):
    """A cached measure is read strictly: a file that is not the JSON it writes (non-finite figures, garbage)
    is a miss, measured again and replaced; never a traceback, never an infinite speed used."""
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    key = {"device": "test", "dtype": "float32"}
    measures = []

    def measure() -> tuple[float, int]:
        measures.append(1)
        return 50e9, 8

    path = Path(cached_measure("damaged", key, "flops_per_second", "matrix_size", measure, 0.0)["file"])
    good = path.read_text()
    assert '"flops_per_second": 5' in good and '"checked_against": 0.0' in good
    path.write_text(damage(good))
    again = cached_measure("damaged", key, "flops_per_second", "matrix_size", measure, 0.0)
    assert len(measures) == 2 and not again["cached"] and again["flops_per_second"] == 50e9
    assert json.loads(path.read_text())["flops_per_second"] == 50e9
    assert cached_measure("damaged", key, "flops_per_second", "matrix_size", measure, 0.0)["cached"]
