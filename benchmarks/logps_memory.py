"""Peak memory of sequence log-probs: chunked lm-head vs full logits, forward + backward, on CPU.

Each measurement runs in a fresh subprocess and reports the growth of the process's peak resident set
size (``ru_maxrss``) over one forward + backward, so the numbers are not polluted by each other.

    python benchmarks/logps_memory.py                      # GPT-2 vocabulary, 4 x 512 tokens
    python benchmarks/logps_memory.py --batch 8 --seq 256 --chunk-sizes 256,64
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from alignkit.jsonio import to_json


def _maxrss_mb() -> float:
    # Linux reports kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, batch: int, seq: int, vocab: int, hidden: int, layers: int, chunk_size: int) -> dict:
    """One forward + backward in this process; returns peak RSS growth (MB) and wall time (s)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from alignkit.models.logps import LogpsOptions, naive_sequence_logps, sequence_logps

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=hidden, n_layer=layers, n_head=4)
    model = GPT2LMHeadModel(cfg).train()
    input_ids = torch.randint(0, vocab, (batch, seq))
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    labels[:, : seq // 2] = -100  # a prompt of half the sequence, as in preference data
    # Warm-up on a tiny batch so allocator and kernel start-up costs are in the baseline.
    tiny = input_ids[:1, :8]
    naive_sequence_logps(model, tiny, attention_mask[:1, :8], labels[:1, :8])[0].sum().backward()
    model.zero_grad(set_to_none=False)

    before = _maxrss_mb()
    start = time.perf_counter()
    if mode == "naive":
        logps, _ = naive_sequence_logps(model, input_ids, attention_mask, labels)
    else:
        logps, _ = sequence_logps(model, input_ids, attention_mask, labels, logps=LogpsOptions(chunk_size=chunk_size))
    logps.sum().backward()
    elapsed = time.perf_counter() - start
    return {"mode": mode, "peak_growth_mb": round(_maxrss_mb() - before, 1), "seconds": round(elapsed, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chunk-sizes", default="1024,256,64", help="comma-separated chunk sizes to try")
    parser.add_argument("--child", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = dict(batch=args.batch, seq=args.seq, vocab=args.vocab, hidden=args.hidden, layers=args.layers)
    chunk_sizes = [int(c) for c in args.chunk_sizes.split(",")]
    if args.child:
        print(to_json(measure(args.child, **shape, chunk_size=chunk_sizes[0]), indent=None))
        return

    full_logits_mb = args.batch * args.seq * args.vocab * 4 / 2**20
    print(f"N={args.batch} T={args.seq} V={args.vocab} H={args.hidden} layers={args.layers} "
          f"(half of each sequence scored); one fp32 (N, T, V) tensor = {full_logits_mb:.0f} MB")
    runs = [("naive", chunk_sizes[0])] + [("chunked", c) for c in chunk_sizes]
    for mode, chunk in runs:
        cmd = [sys.executable, __file__, "--child", mode, f"--chunk-sizes={chunk}"]
        cmd += [f"--{k}={v}" for k, v in shape.items()]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        label = "naive" if mode == "naive" else f"chunk {chunk}"
        print(f"  {label:11s} peak RSS growth {result['peak_growth_mb']:8.1f} MB   time {result['seconds']:.2f} s")


if __name__ == "__main__":
    main()
