"""Memory of a quantized frozen base (``model.quantization``, torchao) against the bf16 base, with LoRA on top.

One run measures every variant, each in a fresh process so that peak resident memory belongs to it alone:
the bf16 base, torchao int8 and torchao int4 (group 128). Each process builds the same Llama-shaped model
from a config (random weights: memory does not depend on the values) in bfloat16 through alignkit's loader,
quantizes it as the variant says, puts LoRA (r=8 on q_proj, v_proj) on it and runs one training step:
forward, backward, AdamW step, then the adapters-off reference forward. Figures per variant:

- base weight bytes: the bytes the model's parameters hold (a torchao weight: its integer data and scales);
- RSS after load: resident memory once the model is loaded (and quantized), after ``malloc_trim`` (glibc
  otherwise keeps the freed bf16 weights in its heap);
- peak RSS, load: the process's peak while loading and quantizing (the bf16 weights exist before quantization);
- peak RSS, step: the peak during the training step (the kernel's high-water mark is reset after loading);
- saved for backward: the bytes of the tensors autograd keeps from forward to backward that are not the
  model's own parameters (activations, and a dequantized weight if one were kept).

``--mmap-threshold BYTES`` runs every variant with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed (glibc otherwise
raises the threshold to the size of each large block freed, up to 32 MiB, and serves later blocks of that size
from its heap, which keeps pages resident that a fresh ``mmap`` would give back on ``free``).

Usage::

    python benchmarks/quantized_memory.py                                   # print the table
    python benchmarks/quantized_memory.py --write benchmarks/RESULTS_quantization.md
    python benchmarks/quantized_memory.py --model 1b --batch 1 --length 2   # a 1.1B-parameter shape
    python benchmarks/quantized_memory.py --mmap-threshold 1048576         # glibc's threshold fixed at 1 MiB
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from alignkit.jsonio import to_json

if TYPE_CHECKING:  # torch is imported in the measuring process only
    from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MIB = 2**20
MODELS = {
    # About 170M parameters: 8 blocks of width 1024 (103M in the blocks' linear layers) and a 32k vocabulary.
    "small": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816,
              "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 16,
              "max_position_embeddings": 512},
    # 1.1B parameters in TinyLlama-1.1B's shape: 22 blocks of width 2048 with grouped-query attention hold
    # 968M of them (88%), so the blocks, which quantization shrinks, dominate the weights.
    "1b": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
           "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
           "max_position_embeddings": 2048},
}
VARIANTS: dict[str, dict | None] = {
    "bf16 base": None,
    "int8 base (torchao)": {"bits": 8},
    "int4 base (torchao, group 128)": {"bits": 4, "group_size": 128},
}
BATCH, LENGTH = 2, 64


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _weight_bytes(model: nn.Module) -> int:
    import torch

    total = 0
    for param in model.parameters():
        if type(param) in (torch.Tensor, torch.nn.Parameter):
            total += param.nbytes
        else:  # a torchao tensor subclass: the tensors it is made of
            names, _ = param.__tensor_flatten__()
            total += sum(getattr(param, name).nbytes for name in names)
    return total


@contextmanager
def _saved_bytes(model: nn.Module) -> Iterator[list[int]]:
    """Count the bytes autograd saves for backward inside the block: each saved buffer once (a tensor saved by
    two operations, or a view of another, is counted once), the model's parameters and quantized weights not."""
    import torch

    seen = {p.untyped_storage().data_ptr() for p in model.parameters() if type(p) is torch.nn.Parameter}
    total = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if type(tensor) is torch.Tensor and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total[0] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield total


def measure(variant: str, model_name: str = "small", batch: int = BATCH, length: int = LENGTH,
            threads: int = 2, layers: int | None = None) -> dict[str, float]:
    """Load, quantize, adapt and train one step in this process; memory figures in MiB."""
    import torch
    import torchao  # noqa: F401 - imported by every variant, so that its own memory is in each baseline

    from alignkit.models import ModelConfig, load_causal_lm
    from alignkit.peft import adapters_disabled, apply_adapter

    torch.set_num_threads(min(threads, os.cpu_count() or 1))
    torch.manual_seed(0)
    shape = {**MODELS[model_name], **({"num_hidden_layers": layers} if layers else {})}
    cfg = ModelConfig(name_or_path="bench", from_config=shape, dtype="bfloat16", quantization=VARIANTS[variant])
    model = load_causal_lm(cfg)
    apply_adapter(model, {"kind": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]})
    # Quantizing frees the bf16 weights into glibc's heap, which keeps them unless asked: hand them back, in
    # every variant alike, so that resident memory shows what the model holds.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    out = {"weights": _weight_bytes(model) / MIB, "rss_loaded": _status_kib("VmRSS") / 1024,
           "peak_load": _status_kib("VmHWM") / 1024}
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    ids = torch.randint(0, shape["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    with _saved_bytes(model) as saved:
        loss = model(input_ids=ids, labels=ids).loss
    out["saved_for_backward"] = saved[0] / MIB
    loss.backward()
    optimizer.step()
    with torch.no_grad(), adapters_disabled(model):
        model(input_ids=ids)
    out["peak_step"] = _status_kib("VmHWM") / 1024
    return out


def _cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def table(results: dict[str, dict[str, float]]) -> str:
    base = results["bf16 base"]
    lines = ["| base | base weights (MiB) | vs bf16 | RSS after load (MiB) | peak RSS, load (MiB) | "
             "peak RSS, step (MiB) | vs bf16 | saved for backward (MiB) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['weights']:.0f} | {r['weights'] / base['weights']:.2f}x | {r['rss_loaded']:.0f} "
                     f"| {r['peak_load']:.0f} | {r['peak_step']:.0f} | {r['peak_step'] / base['peak_step']:.2f}x "
                     f"| {r['saved_for_backward']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--model", choices=list(MODELS), default="small", help="the model's shape")
    parser.add_argument("--layers", type=int, help="blocks of the shape (default: the shape's own)")
    parser.add_argument("--batch", type=int, default=BATCH, help="sequences in the training step")
    parser.add_argument("--length", type=int, default=LENGTH, help="tokens per sequence")
    parser.add_argument("--mmap-threshold", type=int, help="run each variant with glibc's MALLOC_MMAP_THRESHOLD_ "
                        "fixed at this many bytes (no dynamic threshold)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each variant's process")
    parser.add_argument("--write", type=Path, help="also write the markdown results to this file")
    args = parser.parse_args()
    if args.variant:
        print(to_json(measure(args.variant, args.model, args.batch, args.length, args.threads, args.layers),
                      indent=None))
        return
    results = {}
    env = dict(os.environ)
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, __file__, "--variant", variant, "--model", args.model,
                               "--batch", str(args.batch), "--length", str(args.length),
                               "--threads", str(args.threads), *(["--layers", str(args.layers)] if args.layers else [])],
                              capture_output=True, text=True, check=True, env=env)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    import torch
    import torchao

    shape = {**MODELS[args.model], **({"num_hidden_layers": args.layers} if args.layers else {})}
    text = (f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs visible; torch {torch.__version__}, "
            f"torchao {torchao.__version__}.\nModel: Llama from a config, {shape['num_hidden_layers']} blocks of "
            f"width {shape['hidden_size']}, vocabulary {shape['vocab_size']}, bf16; LoRA r=8 on q_proj, v_proj; "
            f"one step on {args.batch} x {args.length} tokens, {args.threads} thread(s)"
            + (f", MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold is not None else "")
            + f". RSS includes ~0.45 GiB of torch, transformers and torchao "
            f"code in every variant.\n\n{table(results)}\n")
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
