"""DPO step scaling, alignkit vs TRL: peak memory and tokens/s as the sequence and the vocabulary grow.

One DPO training step (policy forward + backward, a frozen reference, AdamW) on one pair of random
sequences, every sequence exactly L tokens (half prompt, half response), with a tiny Llama body (default 2
layers, hidden 128) and a V-token vocabulary, so the lm-head dominates as V and L grow. Both frameworks run
through ``dpo_vs_trl.py``'s runners (same weights, pairs, optimizer and loss), each point of each framework
in a fresh interpreter so its peak memory is its own: ``ru_maxrss`` on CPU,
``torch.cuda.max_memory_allocated`` on CUDA. One untimed warm-up step, then ``--steps`` timed ones.

Two sweeps share one grid: the sequence sweep (L = 256 .. 8192 at ``--seq-sweep-vocab``) and the vocabulary
sweep (V = 32k .. 256k at ``--vocab-sweep-len``); a point in both runs once. On CPU a child whose resident
memory passes ``--rss-cap-gib`` is killed and its point recorded as skipped with that reason (on CUDA: an
out-of-memory error), never as numbers.

    python benchmarks/scaling.py                                     # both sweeps on CPU, fp32
    python benchmarks/scaling.py --device cuda --precision bf16 --steps 3
    python benchmarks/scaling.py --seq-lens 256 --vocabs 32768 --seq-sweep-vocab 32768 --vocab-sweep-len 256

Writes to ``--out-dir``: ``results.jsonl`` (one row per framework and point), ``tables.md`` (machine,
versions, date, command, a table per sweep) and ``seq_sweep.png`` / ``vocab_sweep.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from alignkit.jsonio import to_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpo_bench_setup import BenchSpec, machine_summary, wait_for_idle  # noqa: E402
from dpo_vs_trl import FRAMEWORKS, MemoryCapExceeded, _ratio, _versions, run_framework_subprocess  # noqa: E402

__all__ = ["Sweep", "grid_specs", "markdown_table", "measure_point", "plot_sweep", "run_sweeps"]

DEFAULT_OUT = Path(__file__).resolve().parent / "scaling"
ROW_KEYS = ("framework", "seq_len", "vocab", "status", "reason", "tokens_per_s", "seconds_per_step",
            "peak_memory_mib", "peak_over_imports_mib", "last_loss", "load_before", "load_after")


@dataclass(frozen=True)
class Sweep:
    """One axis of the grid: ``axis`` ("seq_len" or "vocab") varies over ``values``, the other is ``fixed``."""

    name: str
    axis: str
    values: tuple[int, ...]
    fixed: int

    def points(self) -> list[tuple[int, int]]:
        """(seq_len, vocab) of every point, in sweep order."""
        return [(v, self.fixed) if self.axis == "seq_len" else (self.fixed, v) for v in self.values]


def grid_specs(sweeps: list[Sweep], args: argparse.Namespace) -> dict[tuple[int, int], BenchSpec]:
    """One BenchSpec per distinct (seq_len, vocab) point, smallest work (L x V) first."""
    points = sorted({p for s in sweeps for p in s.points()}, key=lambda p: (p[0] * p[1], p))
    return {
        (seq, vocab): BenchSpec(case="tiny-llama", batch=1, max_length=seq, max_prompt_length=seq // 2,
                                steps=args.steps, warmup=1, reference=args.reference, hidden=args.hidden,
                                layers=args.layers, heads=args.heads, vocab=vocab, chunk_size=args.chunk_size,
                                gradient_checkpointing=args.gradient_checkpointing, device=args.device,
                                precision=args.precision)
        for seq, vocab in points
    }


def measure_point(framework: str, spec: BenchSpec, rss_cap_mib: float | None, timeout: float | None) -> dict:
    """One framework at one point, in its own process: a row with status ``ok`` or ``skipped`` (and why)."""
    row: dict = {"framework": framework, "seq_len": spec.max_length, "vocab": spec.vocab, "status": "ok",
                 "reason": "", "load_before": os.getloadavg()[0]}
    try:
        result = run_framework_subprocess(framework, spec, timeout=timeout, rss_cap_mib=rss_cap_mib)
    except MemoryCapExceeded as exc:
        row.update(status="skipped", reason=str(exc))
    except RuntimeError as exc:
        if "OutOfMemoryError" not in str(exc) and "CUDA out of memory" not in str(exc):
            raise  # a real failure must stop the sweep, not become a gap in the table
        row.update(status="skipped", reason=f"{framework}: CUDA out of memory")
    else:
        row.update(tokens_per_s=result["tokens_per_s"], seconds_per_step=result["seconds_per_step"],
                   peak_memory_mib=result["peak_rss_mib"],
                   peak_over_imports_mib=result["peak_rss_mib"] - result["rss_after_imports_mib"],
                   last_loss=result["losses"][-1])
    row["load_after"] = os.getloadavg()[0]
    return {key: row.get(key, float("nan")) for key in ROW_KEYS}


def run_sweeps(sweeps: list[Sweep], args: argparse.Namespace, frameworks: tuple[str, ...] = FRAMEWORKS,
               log=print) -> list[dict]:
    """Every framework at every distinct point of ``sweeps``; rows in the order they were measured."""
    cap = args.rss_cap_gib * 1024 if args.device == "cpu" and args.rss_cap_gib > 0 else None
    rows = []
    for (seq, vocab), spec in grid_specs(sweeps, args).items():
        for framework in frameworks:
            wait_for_idle(args.max_load, max_wait_seconds=args.max_wait)
            row = measure_point(framework, spec, cap, args.timeout)
            rows.append(row)
            log(f"  L={seq} V={vocab} {framework}: " + (
                f"{row['tokens_per_s']:.0f} tokens/s, peak {row['peak_memory_mib']:.0f} MiB"
                if row["status"] == "ok" else f"skipped ({row['reason']})"))
    return rows


def _find(rows: list[dict], framework: str, seq: int, vocab: int) -> dict | None:
    return next((r for r in rows if (r["framework"], r["seq_len"], r["vocab"]) == (framework, seq, vocab)), None)


def _cell(row: dict | None, key: str, fmt: str) -> str:
    if row is None:
        return "-"
    return format(row[key], fmt) if row["status"] == "ok" else "skipped"


def _ratio_cell(ours: dict | None, theirs: dict | None, key: str) -> str:
    if ours is None or theirs is None or not ours["status"] == theirs["status"] == "ok":
        return "-"
    return f"{_ratio(ours[key], theirs[key]):.2f}x"


def markdown_table(sweep: Sweep, rows: list[dict]) -> list[str]:
    """One row per point: both frameworks' tokens/s and peak memory, and the alignkit / TRL ratios."""
    lines = [
        "| L (tokens) | V | alignkit tokens/s | TRL tokens/s | speed alignkit / TRL | alignkit peak (MiB) "
        "| TRL peak (MiB) | peak alignkit / TRL | alignkit over imports (MiB) | TRL over imports (MiB) "
        "| over imports alignkit / TRL | 1-min load before (alignkit / TRL) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for seq, vocab in sweep.points():
        a, t = _find(rows, "alignkit", seq, vocab), _find(rows, "trl", seq, vocab)
        loads = " / ".join(f"{r['load_before']:.2f}" if r else "-" for r in (a, t))
        lines.append(
            f"| {seq} | {vocab} | {_cell(a, 'tokens_per_s', '.0f')} | {_cell(t, 'tokens_per_s', '.0f')} "
            f"| {_ratio_cell(a, t, 'tokens_per_s')} | {_cell(a, 'peak_memory_mib', '.0f')} | {_cell(t, 'peak_memory_mib', '.0f')} "
            f"| {_ratio_cell(a, t, 'peak_memory_mib')} | {_cell(a, 'peak_over_imports_mib', '.0f')} "
            f"| {_cell(t, 'peak_over_imports_mib', '.0f')} | {_ratio_cell(a, t, 'peak_over_imports_mib')} | {loads} |"
        )
    skipped = [r for r in rows if r["status"] == "skipped" and (r["seq_len"], r["vocab"]) in sweep.points()]
    lines += [""] + [f"Skipped: L={r['seq_len']} V={r['vocab']}: {r['reason']}." for r in skipped]
    return lines


def plot_sweep(sweep: Sweep, rows: list[dict], path: Path, memory_label: str) -> None:
    """Peak memory and tokens/s against the swept axis, one line per framework (measured points only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem_ax, speed_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for framework, style in zip(FRAMEWORKS, ("o-", "s--"), strict=True):
        found = [(x, _find(rows, framework, *p)) for x, p in zip(sweep.values, sweep.points(), strict=True)]
        ok = [(x, r) for x, r in found if r is not None and r["status"] == "ok"]
        label = "TRL" if framework == "trl" else framework
        mem_ax.plot([x for x, _ in ok], [r["peak_memory_mib"] / 1024 for _, r in ok], style, label=label)
        speed_ax.plot([x for x, _ in ok], [r["tokens_per_s"] for _, r in ok], style, label=label)
        for x, r in found:
            if r is not None and r["status"] == "skipped":
                mem_ax.annotate(f"{label} skipped", (x, 0), xycoords=("data", "axes fraction"),
                                xytext=(0, 8), textcoords="offset points", ha="center", fontsize=8, rotation=90)
    xlabel = "sequence length (tokens)" if sweep.axis == "seq_len" else "vocabulary size"
    fixed = f"V = {sweep.fixed}" if sweep.axis == "seq_len" else f"L = {sweep.fixed}"
    for ax, ylabel in ((mem_ax, f"{memory_label} (GiB)"), (speed_ax, "tokens/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(sweep.values), [str(v) for v in sweep.values])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    mem_ax.set_ylim(bottom=0)
    fig.suptitle(f"One DPO step, batch 1 pair, {fixed}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_bf16_flags() -> str:
    """Which native bf16 instructions this CPU reports (none: bf16 autocast is emulated)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    return ", ".join(found) if found else "none (no avx512_bf16, no amx_bf16)"


def _device_line(device: str) -> str:
    if device == "cuda":
        import torch

        return f"GPU: {torch.cuda.get_device_name()}"
    return f"CPU native bf16: {_cpu_bf16_flags()}"


def write_outputs(sweeps: list[Sweep], rows: list[dict], args: argparse.Namespace, command: str,
                  loads: tuple[float, float]) -> None:
    """results.jsonl, tables.md and one PNG per sweep in ``args.out_dir``."""
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("w") as fh:
        fh.writelines(to_json(r, indent=None) + "\n" for r in rows)
    memory_label = "peak RSS" if args.device == "cpu" else "peak CUDA allocated"
    lines = [
        "# DPO step scaling: alignkit vs TRL (generated by benchmarks/scaling.py)", "",
        f"- Machine: {machine_summary()}; {_device_line(args.device)}",
        f"- Versions: {_versions()}",
        f"- Date: {dt.datetime.now().astimezone().isoformat(timespec='minutes')}",
        f"- Command: `{command}`",
        f"- Body: Llama, {args.layers} layers, hidden {args.hidden}, {args.heads} heads, untied lm-head; "
        f"{args.device}, {args.precision}; reference {args.reference}; batch 1 pair (2 sequences of L tokens, "
        f"half prompt); 1 warm-up + {args.steps} timed step(s); memory: {memory_label}",
        f"- 1-minute load at the start / end of the sweep: {loads[0]:.2f} / {loads[1]:.2f}",
    ]
    for sweep in sweeps:
        png = out / f"{sweep.name}.png"
        plot_sweep(sweep, rows, png, memory_label)
        lines += ["", f"## {sweep.name} ({png.name})", ""] + markdown_table(sweep, rows)
    (out / "tables.md").write_text("\n".join(lines) + "\n")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=_ints, default=(256, 1024, 4096, 8192))
    parser.add_argument("--seq-sweep-vocab", type=int, default=131072, help="vocabulary of the sequence sweep")
    parser.add_argument("--vocabs", type=_ints, default=(32768, 65536, 131072, 262144))
    parser.add_argument("--vocab-sweep-len", type=int, default=8192, help="sequence length of the vocabulary sweep")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per point, after 1 warm-up step")
    parser.add_argument("--reference", choices=["copy", "cached"], default="copy")
    parser.add_argument("--chunk-size", type=int, default=256, help="alignkit's lm-head chunk (its default)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="activation checkpointing, both sides")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--frameworks", default="alignkit,trl")
    parser.add_argument("--rss-cap-gib", type=float, default=16.0, help="CPU: kill and skip a child above (0: none)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per child before it is an error")
    parser.add_argument("--max-load", type=float, default=0.0, help="wait until the 1-min load is below (0: never)")
    parser.add_argument("--max-wait", type=float, default=300.0, help="seconds to wait for that load, then run")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    sweeps = [Sweep("seq_sweep", "seq_len", args.seq_lens, args.seq_sweep_vocab),
              Sweep("vocab_sweep", "vocab", args.vocabs, args.vocab_sweep_len)]
    command = "python benchmarks/scaling.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"Machine: {machine_summary()}\nVersions: {_versions()}", flush=True)
    start_load = os.getloadavg()[0]
    rows = run_sweeps(sweeps, args, tuple(args.frameworks.split(",")), log=lambda m: print(m, flush=True))
    write_outputs(sweeps, rows, args, command.strip(), (start_load, os.getloadavg()[0]))
    print((args.out_dir / "tables.md").read_text())
    bad = [r for r in rows if r["status"] == "ok" and not all(
        math.isfinite(r[k]) for k in ("tokens_per_s", "peak_memory_mib", "last_loss"))]
    if bad:
        raise SystemExit(f"non-finite figures in {len(bad)} row(s): {bad}")


if __name__ == "__main__":
    try:
        main()
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(f"a benchmark child ran past {exc.timeout:.0f} s") from exc
