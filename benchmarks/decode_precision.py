"""Decoding speed in fp32 and bf16: alignkit's sampling loop on the demo's pair-sampling workload.

The demo samples its pairs (``recipes/dpo_smollm2_sentiment.yaml``: SmolLM2-135M-Instruct, chat prompts, 32 new
tokens at temperature 1, 64 rows a batch) from a copy of the model in ``data.source.generation_dtype``. Here the
same loop (alignkit/models/decode.py) samples the same rows from a float32 model and from its bfloat16 copy, in
turns (fp32, bf16, fp32, bf16, ...) so that both see the same machine, and the best turn of each is kept. Each
turn is timed by the wall clock and by the process's CPU time (on a shared machine the CPU time is the steadier
figure; with N threads it is up to N times the wall time).

Usage::

    python benchmarks/decode_precision.py [--prompts 16] [--batch 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dpo_bench_setup import machine_summary  # noqa: E402

from alignkit.data.sentiment_prompts import sentiment_prompts  # noqa: E402
from alignkit.models.config import ModelConfig  # noqa: E402
from alignkit.models.decode import decode, row_uniforms  # noqa: E402
from alignkit.models.generate import eos_token_ids, format_prompt  # noqa: E402
from alignkit.models.hardware import detect_hardware  # noqa: E402
from alignkit.models.load import load_causal_lm, load_tokenizer  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16, help="sentiment prompts (4 completions each)")
    parser.add_argument("--batch", type=int, default=64, help="rows per decoding batch (the demo's: 64)")
    parser.add_argument("--new", type=int, default=32, help="new tokens per completion (the demo's: 32)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cfg = ModelConfig(name_or_path="smollm2-135m-instruct", dtype="float32")
    tokenizer = load_tokenizer(cfg)
    base = load_causal_lm(cfg, "cpu").eval()
    models = {"float32": base, "bfloat16": copy.deepcopy(base).to(torch.bfloat16)}  # as the demo's sampler
    rows = [format_prompt(tokenizer, p, True) for p in sentiment_prompts(args.prompts, seed=0) for _ in range(4)]
    eos = eos_token_ids(base, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    uniforms = torch.stack([row_uniforms(0, r, args.new) for r in range(len(rows))])
    best = {name: (float("inf"), float("inf")) for name in DTYPES}
    tokens = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, model in models.items():
                wall, cpu = time.perf_counter(), time.process_time()
                out = decode(model, rows, uniforms, max_new_tokens=args.new, temperature=1.0, top_p=1.0,
                             eos_ids=eos, pad_id=pad, batch_size=args.batch)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                tokens[name] = sum(len(t) for t, _ in out)
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    print("| weights | rows x new tokens (batch) | tokens | best wall s | tokens/s (wall) | tokens per CPU-second |")
    print("|---|---|---:|---:|---:|---:|")
    for name in DTYPES:
        wall, cpu = best[name]
        print(f"| {name} | {len(rows)} x {args.new} ({args.batch}) | {tokens[name]} | {wall:.1f} | "
              f"{tokens[name] / wall:.0f} | {tokens[name] / cpu:.0f} |")
    ratio = (tokens["bfloat16"] / best["bfloat16"][0]) / (tokens["float32"] / best["float32"][0])
    hw = detect_hardware("cpu")
    flags = sorted(f for f in hw.cpu_flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    print(f"\nbf16 / fp32 tokens/s (wall): {ratio:.2f}. Machine: {machine_summary()}; CPU flags {flags}; "
          f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}), "
          f"{torch.get_num_threads()} threads; 1-minute load {os.getloadavg()[0]:.1f} at the end.")


if __name__ == "__main__":
    main()
