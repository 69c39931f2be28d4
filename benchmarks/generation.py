"""Sampling speed: alignkit's decoding loop against transformers' ``generate`` on SmolLM2-135M-Instruct.

Both sample the same rows (left-padded chat prompts, temperature 1, top-p 1, no top-k), in the same batch size,
in the same weight dtype (``--dtype``) on the same device (``--device``). alignkit's loop (alignkit/models/decode.py) sorts the rows by prompt length, drops a row
from its batch when it emits EOS and writes keys and values into a preallocated cache; ``generate`` keeps every
row of a batch until the last one ends and grows its cache by concatenation. Tokens are counted the same way
for both: each completion up to and including its EOS (what the caller keeps).

Two workloads:

- ``pairs``: the demo's pair sampling, 64 sentiment prompts x 4 completions of 32 tokens, 64 rows a batch
  (completions rarely end before 32 tokens: sorting and the cache matter, dropping rows hardly);
- ``chat``: 32 instructions of every length x 2 completions of up to 128 tokens, 32 rows a batch (many end
  early: dropping finished rows matters).

Each is timed in turns (transformers, alignkit, transformers, alignkit, ...) and the best of each is kept, so
both see the same machine. alignkit's figures are set against this machine's limits, measured in the same run
(alignkit/train/peak_flops.py): model FLOP/s of the matmul peak, and the time reading the weights once per
forward would take at the measured read bandwidth.

Usage::

    python benchmarks/generation.py                                   # print the table
    python benchmarks/generation.py --write benchmarks/RESULTS_generation.md
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

from alignkit.data.sentiment_prompts import sentiment_prompts  # noqa: E402
from alignkit.models.config import ModelConfig  # noqa: E402
from alignkit.models.decode import DecodeStats, decode, row_uniforms  # noqa: E402
from alignkit.models.flops import forward_flops, matmul_parameters, matmul_weight_bytes  # noqa: E402
from alignkit.models.generate import eos_token_ids, format_prompt  # noqa: E402
from alignkit.models.load import load_causal_lm, load_tokenizer  # noqa: E402
from alignkit.train.peak_flops import peak_bandwidth, peak_flops  # noqa: E402

CHAT = ["Say hello.", "What is the capital of France?", "Name a colour.", "2 + 2 = ?", "Give me one word.",
        "List five fruits.", "Write a long story about a dragon who learns to fly over the mountains and the sea.",
        "Explain gravity to a child, with examples.", "Describe your ideal weekend in detail.",
        "Write a haiku about rain.", "What is a prime number? Explain and give several examples.",
        "Translate 'good morning' into French.", "Tell me a joke.", "Summarise the plot of a fairy tale.",
        "How do plants make food?", "Yes or no: is water wet?"] * 2
WORKLOADS = {
    "pairs": {"prompts": lambda: sentiment_prompts(64, seed=0), "k": 4, "new": 32, "batch": 64},
    "chat": {"prompts": lambda: CHAT, "k": 2, "new": 128, "batch": 32},
}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU's timing is otherwise only the launches)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_workload(workload: str, device: torch.device, dtype: str) -> tuple[torch.nn.Module, list[list[int]],
                                                                            list[int], int, torch.Tensor]:
    """SmolLM2 and a workload's rows: (model, rows of prompt ids, EOS ids, pad id, (rows, new) uniforms)."""
    spec = WORKLOADS[workload]
    cfg = ModelConfig(name_or_path="smollm2-135m-instruct", dtype=dtype)
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg, device).eval()
    prompts = [format_prompt(tokenizer, p, True) for p in spec["prompts"]()]
    rows = [p for p in prompts for _ in range(spec["k"])]
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return model, rows, eos, pad, torch.stack([row_uniforms(0, r, spec["new"]) for r in range(len(rows))])


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both sampling benchmarks take: repeats, load wait, device, dtype, output file."""
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-load", type=float, default=0.5, help="wait for a 1-minute load below this (0: no)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--write", type=Path, help="also write the table to this Markdown file")


def _transformers(model, rows: list[list[int]], new: int, batch: int, eos: list[int], pad: int) -> int:
    """transformers' generate over the rows in their order; returns the tokens kept (up to each first EOS)."""
    kept = 0
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        device = next(model.parameters()).device
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new, do_sample=True, top_k=0,
                             top_p=1.0, temperature=1.0, eos_token_id=eos, pad_token_id=pad)[:, width:].tolist()
        for row in out:
            kept += next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
    return kept


def run(workload: str, repeats: int, device: torch.device, dtype: str) -> dict:
    spec = WORKLOADS[workload]
    model, rows, eos, pad, uniforms = load_workload(workload, device, dtype)
    best = {"transformers": float("inf"), "alignkit": float("inf")}
    tokens = {}
    stats = DecodeStats()
    with torch.inference_mode():
        for _ in range(repeats):
            torch.manual_seed(0)
            start = time.perf_counter()
            tokens["transformers"] = _transformers(model, rows, spec["new"], spec["batch"], eos, pad)
            sync(device)
            best["transformers"] = min(best["transformers"], time.perf_counter() - start)
            stats = DecodeStats()
            start = time.perf_counter()
            out = decode(model, rows, uniforms, max_new_tokens=spec["new"], temperature=1.0, top_p=1.0,
                         eos_ids=eos, pad_id=pad, batch_size=spec["batch"], stats=stats)
            sync(device)
            best["alignkit"] = min(best["alignkit"], time.perf_counter() - start)
            tokens["alignkit"] = sum(len(t) for t, _ in out)
    flops = forward_flops(matmul_parameters(model), stats.prompt_tokens + stats.new_tokens)
    reads = stats.forwards * matmul_weight_bytes(model)
    peak = peak_flops(device, dtype)["flops_per_second"]
    bandwidth = peak_bandwidth(device)["bytes_per_second"]
    seconds = best["alignkit"]
    return {"workload": workload, "rows": len(rows), "batch": spec["batch"], "new": spec["new"],
            "seconds": best, "tokens": tokens, "forwards": stats.forwards,
            "peak_fraction": flops / peak / seconds, "bandwidth_fraction": reads / bandwidth / seconds,
            "peak": peak, "bandwidth": bandwidth, "threads": torch.get_num_threads(), "dtype": dtype,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}


def table(results: list[dict]) -> str:
    lines = ["| workload | rows x new tokens (batch) | transformers tokens/s | alignkit tokens/s | speed-up | "
             "alignkit of matmul peak | alignkit of weight-bandwidth bound |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        rate = {k: r["tokens"][k] / r["seconds"][k] for k in r["seconds"]}
        lines.append(f"| {r['workload']} | {r['rows']} x {r['new']} ({r['batch']}) | {rate['transformers']:.0f} | "
                     f"{rate['alignkit']:.0f} | {rate['alignkit'] / rate['transformers']:.2f}x | "
                     f"{100 * r['peak_fraction']:.0f}% | {100 * r['bandwidth_fraction']:.0f}% |")
    r = results[0]
    lines += ["", f"Machine: {machine_summary()}; device {r['device']}; torch {torch.__version__}, "
              f"{r['threads']} threads; weights in {r['dtype']}; "
              f"measured matmul peak {r['peak'] / 1e9:.0f} GFLOP/s, read bandwidth {r['bandwidth'] / 1e9:.1f} GB/s."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="pairs,chat")
    common_arguments(parser)
    args = parser.parse_args()
    wait_for_idle(args.max_load)
    results = [run(w, args.repeats, torch.device(args.device), args.dtype) for w in args.workloads.split(",")]
    text = table(results)
    print(text)
    if args.write:
        args.write.write_text("# Sampling speed: alignkit's decoding loop vs transformers' generate\n\n"
                              "`python benchmarks/generation.py --write benchmarks/RESULTS_generation.md`; see the "
                              "script's docstring for what is measured.\n\n" + text + "\n")


if __name__ == "__main__":
    main()
