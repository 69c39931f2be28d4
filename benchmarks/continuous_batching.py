"""Continuous batching against the batch-at-a-time loop, on SmolLM2-135M-Instruct (the workloads of generation.py).

Both decode the same rows with the same per-row uniforms (temperature 1, top-p 1), in the same batch size, on
the same device and weight dtype:

- ``batch loop``: :func:`alignkit.models.decode.decode`, one batch of rows after the other, each until its last
  row ends (rows that end early are dropped, so the last steps run on a few rows);
- ``continuous``: :func:`alignkit.models.continuous.decode_continuous`, finished rows replaced by waiting
  prompts whenever ``refill_at`` slots are free (each value given by ``--refill-at``).

Each variant is timed in turns and the best of ``--repeats`` is kept, so all see the same machine. The
completions are compared: each row's tokens must be the same under every variant (they differ only if a
draw falls within float rounding of a CDF boundary, which the table would show). A control runs the batch loop
in half the batch size: the rows it changes are what the batch's shape alone changes. Tokens are counted up to and
including each EOS. "of weight-bandwidth bound" is the time reading the weights once per forward takes at the
read bandwidth measured in the same run (alignkit/train/peak_flops.py), over the time taken.

Usage::

    nice -n 10 python benchmarks/continuous_batching.py --write benchmarks/RESULTS_continuous_batching.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dpo_bench_setup import machine_summary, wait_for_idle  # noqa: E402
from generation import WORKLOADS, common_arguments, load_workload, sync  # noqa: E402

from alignkit.models.continuous import decode_continuous, default_refill_at  # noqa: E402
from alignkit.models.decode import DecodeStats, decode  # noqa: E402
from alignkit.models.flops import matmul_weight_bytes  # noqa: E402
from alignkit.train.peak_flops import peak_bandwidth  # noqa: E402


def run(workload: str, refill_values: list[int], repeats: int, device: torch.device, dtype: str,
        rows_limit: int | None = None, batch: int | None = None, new: int | None = None) -> dict:
    """Time the batch loop and continuous batching (one entry per ``refill_at``) on one workload, optionally cut
    to its first ``rows_limit`` rows, ``new`` tokens and another ``batch`` size (a shorter run)."""
    spec = dict(WORKLOADS[workload])
    model, rows, eos, pad, uniforms = load_workload(workload, device, dtype)
    rows, spec["batch"], spec["new"] = rows[:rows_limit], batch or spec["batch"], new or spec["new"]
    uniforms = uniforms[:len(rows), :spec["new"]].contiguous()
    common = {"max_new_tokens": spec["new"], "temperature": 1.0, "top_p": 1.0, "eos_ids": eos, "pad_id": pad,
              "batch_size": spec["batch"]}
    variants = {"batch loop": lambda stats: decode(model, rows, uniforms, stats=stats, **common)}
    # The control: the same loop in half the batch size. Rows it changes are changed by the batch's shape
    # alone (float rounding of another matmul shape moving a draw across a CDF boundary), not by the joins.
    half = max(1, spec["batch"] // 2)
    variants[f"batch loop, batch {half} (control)"] = (
        lambda stats: decode(model, rows, uniforms, stats=stats, **{**common, "batch_size": half}))
    for refill in refill_values:
        variants[f"continuous, refill at {refill}"] = (
            lambda stats, refill=refill: decode_continuous(model, rows, uniforms, refill_at=refill, stats=stats,
                                                           **common))
    best = dict.fromkeys(variants, float("inf"))
    outputs: dict[str, list[tuple[list[int], bool]]] = {}
    forwards: dict[str, int] = {}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, fn in variants.items():
                stats = DecodeStats()
                start = time.perf_counter()
                outputs[name] = fn(stats)
                sync(device)
                best[name] = min(best[name], time.perf_counter() - start)
                forwards[name] = stats.forwards
    reference = outputs["batch loop"]
    bandwidth = peak_bandwidth(device)["bytes_per_second"]
    weight_bytes = matmul_weight_bytes(model)
    return {"workload": workload, "rows": len(rows), "batch": spec["batch"], "new": spec["new"],
            "seconds": best, "forwards": forwards,
            "tokens": {name: sum(len(t) for t, _ in out) for name, out in outputs.items()},
            "rows_differing": {name: sum(a != b for a, b in zip(out, reference, strict=True))
                               for name, out in outputs.items()},
            "bandwidth_fraction": {name: forwards[name] * weight_bytes / bandwidth / best[name] for name in best},
            "bandwidth": bandwidth, "threads": torch.get_num_threads(), "dtype": dtype,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}


def table(results: list[dict], load: float) -> str:
    lines = ["| workload | rows x new tokens (batch) | loop | forwards | seconds | tokens/s | vs batch loop | "
             "of weight-bandwidth bound | rows differing from batch loop |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        base = r["tokens"]["batch loop"] / r["seconds"]["batch loop"]
        for name, seconds in r["seconds"].items():
            rate = r["tokens"][name] / seconds
            lines.append(f"| {r['workload']} | {r['rows']} x {r['new']} ({r['batch']}) | {name} | "
                         f"{r['forwards'][name]} | {seconds:.1f} | {rate:.0f} | {rate / base:.2f}x | "
                         f"{100 * r['bandwidth_fraction'][name]:.0f}% | {r['rows_differing'][name]} |")
    r = results[0]
    lines += ["", f"Machine: {machine_summary()}; device {r['device']}; torch {torch.__version__}, "
              f"{r['threads']} thread(s); weights in {r['dtype']}; measured read bandwidth "
              f"{r['bandwidth'] / 1e9:.1f} GB/s; 1-minute load average {load:.2f} when the run began."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="chat,pairs")
    parser.add_argument("--refill-at", default="default,1",
                        help="comma-separated refill_at values ('default': a quarter of the batch)")
    parser.add_argument("--rows", type=int, help="only the first ROWS rows of each workload")
    parser.add_argument("--batch", type=int, help="this batch size instead of the workload's")
    parser.add_argument("--new", type=int, help="at most this many new tokens instead of the workload's")
    common_arguments(parser)
    args = parser.parse_args()
    load = wait_for_idle(args.max_load)
    results = []
    for workload in args.workloads.split(","):
        batch = args.batch or WORKLOADS[workload]["batch"]
        refill = [default_refill_at(batch) if v == "default" else int(v) for v in args.refill_at.split(",")]
        results.append(run(workload, list(dict.fromkeys(refill)), args.repeats, torch.device(args.device),
                           args.dtype, args.rows, args.batch, args.new))
        print(table(results, load), flush=True)
    if args.write:
        args.write.write_text("# Continuous batching against the batch-at-a-time decoding loop\n\n"
                              "`nice -n 10 python benchmarks/continuous_batching.py --write "
                              "benchmarks/RESULTS_continuous_batching.md`; see the script's docstring for what "
                              "is measured.\n\n" + table(results, load) + "\n")


if __name__ == "__main__":
    main()
