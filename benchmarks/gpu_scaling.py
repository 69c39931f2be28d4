"""DPO full fine-tuning throughput, MFU and peak GPU memory on 1 GPU and on N GPUs (ddp, fsdp), with alignkit.

NOT RUN YET: written on a machine without a GPU (see benchmarks/DISTRIBUTED.md); it refuses to start
without CUDA. The CPU counterpart, benchmarks/distributed_memory.py, has been run.

One invocation runs each configuration in fresh processes (it launches ``python -m torch.distributed.run
--standalone --nproc_per_node=N`` itself):

- ``single``: 1 GPU, bf16 autocast over the stored weights (``train.precision: bf16``);
- ``ddp``:    N GPUs, NCCL, the same autocast; alignkit sums the gradients in one flat all-reduce per step;
- ``fsdp``:   N GPUs, each decoder block and the root ``fully_shard``-ed by alignkit's ``shard_model`` with
  ``distributed.mixed_precision`` (``param_dtype: bfloat16``, ``reduce_dtype`` from ``--reduce-dtype``).

Weak scaling: every GPU gets ``--batch-per-gpu`` pairs per optimizer step, so the global batch grows with
N; the scaling efficiency printed is tokens/s(N) / (N x tokens/s(1)). Per configuration it records, over
the timed steps after ``--warmup`` untimed ones (a ``torch.cuda.synchronize()`` ends each step):

- steps/s and tokens/s (non-padding tokens of chosen and rejected sequences, prompts included, all GPUs);
- MFU = model FLOPs / time / (N x ``--peak-tflops``), model FLOPs = 6 N_p per token for the policy's
  forward and backward plus 2 N_p per token for a live reference forward (``--reference copy``), N_p the
  parameters without the input embedding but with the output projection (tied or not); attention scores,
  recomputation and padding are not counted (the usual MFU convention);
- peak GPU memory: ``torch.cuda.max_memory_allocated`` during the training steps, and over the whole
  process (which includes the full model every process loads before it is sharded);
- the training-state bytes each process holds (parameters, gradients right after backward, AdamW states).

    python benchmarks/gpu_scaling.py                                   # all GPUs; single, ddp, fsdp
    python benchmarks/gpu_scaling.py --gpus 8 --configs single,fsdp --batch-per-gpu 8 --max-length 1024
    python benchmarks/gpu_scaling.py --model /path/to/llama --dtype bfloat16 --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from alignkit.jsonio import to_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from distributed_memory import (  # noqa: E402
    HH_FIXTURE,
    MODEL_ALIAS,
    REPO,
    StateProbe,
    build_reference,
    global_step_tokens,
    load_pairs,
    local_bytes,
    machine,
    optimizer_tensors,
    uptime,
    write_results,
)

CONFIGS = ("single", "ddp", "fsdp")
H100_BF16_DENSE_FLOPS = 989e12  # H100/H200 SXM, dense bf16 tensor-core peak (no sparsity)
GIB = 2**30
NO_CUDA = ("gpu_scaling.py measures CUDA GPUs, and torch.cuda.is_available() is False here (torch {torch}). "
           "Nothing was run. For the CPU measurement use benchmarks/distributed_memory.py.")
SHARED_HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def require_cuda(gpus: int | None = None) -> int:
    """The number of visible GPUs; exit with a clear message when there is none, or fewer than ``gpus``."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(NO_CUDA.format(torch=torch.__version__))
    count = torch.cuda.device_count()
    if gpus is not None and gpus > count:
        raise SystemExit(f"--gpus {gpus} asked for, but only {count} CUDA device(s) are visible. Nothing was run.")
    return count


def model_flop_params(model: Any) -> int:
    """N_p of the MFU convention: every parameter but the input embedding, plus the output projection even
    when it shares the embedding's weight (it is real work). Counted before sharding (whole tensors)."""
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    body = sum(p.numel() for p in model.parameters() if p is not embed)
    return body + (head.numel() if head is embed else 0)


def distributed_config(strategy: str, reduce_dtype: str) -> Any:
    """``distributed:`` of a recipe for fsdp: bf16 compute copies, gradients reduced in ``reduce_dtype``."""
    from alignkit.train.config import DistributedConfig, MixedPrecisionConfig

    return DistributedConfig(strategy="fsdp", mixed_precision=MixedPrecisionConfig(
        param_dtype="bfloat16", reduce_dtype=reduce_dtype)) if strategy == "fsdp" else None


def cuda_device() -> Any:
    """This process's GPU, made current. alignkit's ``init_distributed`` does not pick one, and NCCL needs
    each process on its own GPU before the process group forms."""
    import torch

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def timed_steps(trainer: Any, total: int, warmup: int) -> tuple[list[float], list[float], list[int]]:
    """Run ``total`` optimizer steps; the end time (after a device sync), loss and global tokens of each."""
    import torch

    ends, losses, tokens = [], [], []
    for step in range(total):
        tokens.append(global_step_tokens(trainer._step_examples(step)))
        losses.append(trainer.train_step(step)["loss"])
        torch.cuda.synchronize()  # kernels run asynchronously: a step ends when the GPU is done
        ends.append(time.perf_counter())
    return ends, losses, tokens


def run_worker(args: argparse.Namespace) -> None:
    """One process of one configuration: load, (shard), train, write ``rank<r>.json`` into ``args.out_dir``."""
    require_cuda()
    import torch

    from alignkit.data.collate import collate_preference
    from alignkit.losses import build_objective
    from alignkit.models.config import ModelConfig
    from alignkit.models.load import load_causal_lm, load_tokenizer
    from alignkit.train.config import TrainConfig
    from alignkit.train.distributed import init_distributed
    from alignkit.train.sharding import shard_model
    from alignkit.train.trainer import Trainer

    device = cuda_device()
    env = init_distributed(device)
    out_dir = Path(args.out_dir)
    model_cfg = ModelConfig(name_or_path=args.model_path, dtype=args.dtype,
                            gradient_checkpointing=args.gradient_checkpointing)
    tokenizer = load_tokenizer(model_cfg)
    batch, total = args.batch_per_gpu * env.world_size, args.warmup + args.steps
    pairs = load_pairs(tokenizer, Path(args.data), batch * total, args.max_length, args.max_prompt_length,
                       minimum=batch)
    torch.manual_seed(0)
    load = partial(load_causal_lm, model_cfg, device)
    model = load()
    flop_params = model_flop_params(model)
    os.environ["ALIGNKIT_CACHE"] = str(out_dir / f"cache-rank{env.rank}")  # a fresh reference cache
    collate = partial(collate_preference, pad_token_id=tokenizer.pad_token_id)
    dist_cfg = distributed_config(args.strategy, args.reduce_dtype)
    shard = partial(shard_model, cfg=dist_cfg, env=env, device=device) if dist_cfg else None
    reference = build_reference(args.reference, model, pairs, collate, args.batch_per_gpu, load,
                                partial(shard, trainable=False) if shard else None)
    if shard is not None:
        shard(model)
    cfg = TrainConfig(lr=1e-6, batch_size=batch, max_steps=total, warmup_steps=0, schedule="linear",
                      max_grad_norm=1.0, precision="bf16", device=str(device))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, build_objective({"name": "dpo", "beta": 0.1}), cfg, train_pairs=pairs,
                          collate=collate, run_dir=Path(run_dir), reference=reference, seed=0, env=env,
                          device=device)
        probe = StateProbe(trainer)
        # The whole-process peak includes the full model each process loads before sharding; this one not.
        process_peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        ends, losses, tokens = timed_steps(trainer, total, args.warmup)
    record = summarize(args, env, ends, losses, tokens, flop_params)
    record.update({
        "peak_allocated_gib_steps": torch.cuda.max_memory_allocated(device) / GIB,
        "peak_reserved_gib_steps": torch.cuda.max_memory_reserved(device) / GIB,
        "peak_allocated_gib_before_steps": process_peak / GIB,
        "state_gib": {"params": local_bytes(trainer.params) / GIB, "grads": max(probe.grad_bytes) / GIB,
                      "optimizer": local_bytes(optimizer_tensors(trainer.optimizer)) / GIB},
        "gpu": torch.cuda.get_device_name(device),
    })
    (out_dir / f"rank{env.rank}.json").write_text(to_json(record, indent=1))
    if env.enabled:
        torch.distributed.destroy_process_group()


def summarize(args: argparse.Namespace, env: Any, ends: list[float], losses: list[float], tokens: list[int],
              flop_params: int) -> dict:
    """Speed over the timed steps (end of the last warm-up step to the end of the last step) and MFU."""
    timed = ends[-1] - ends[args.warmup - 1]
    timed_tokens = sum(tokens[args.warmup:])
    per_token = 6 + (2 if args.reference == "copy" else 0)  # a live reference adds one forward
    flops = per_token * flop_params * timed_tokens
    return {
        "rank": env.rank, "world_size": env.world_size, "strategy": args.strategy, "losses": losses,
        "timed_seconds": timed, "steps_per_s": args.steps / timed, "tokens_per_s": timed_tokens / timed,
        "flop_params": flop_params, "model_tflops_per_s": flops / timed / 1e12,
        "mfu": flops / timed / (env.world_size * args.peak_tflops * 1e12),
    }


# --------------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------------
def worker_command(args: argparse.Namespace, name: str, gpus: int, out_dir: Path) -> list[str]:
    script = [str(Path(__file__).resolve()), "--worker", "--strategy", name, "--out-dir", str(out_dir),
              "--model-path", args.model_path, "--dtype", args.dtype, "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--batch-per-gpu", str(args.batch_per_gpu),
              "--max-length", str(args.max_length), "--max-prompt-length", str(args.max_prompt_length),
              "--reference", args.reference, "--reduce-dtype", args.reduce_dtype,
              "--peak-tflops", str(args.peak_tflops), "--data", str(args.data)]
    script += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    if name == "single":
        return [sys.executable, *script]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", *script]


def launch(args: argparse.Namespace, name: str, gpus: int, out_root: Path) -> list[dict]:
    """Run configuration ``name`` in fresh processes; return each rank's record."""
    out_dir = out_root / name
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = 1 if name == "single" else gpus
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs))}
    if name == "single":
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")
    print(f"[{name}] {procs} GPU(s)", flush=True)
    proc = subprocess.run(worker_command(args, name, gpus, out_dir), env=env, capture_output=True, text=True,
                          timeout=args.timeout)
    (out_dir / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}); log in {out_dir / 'log.txt'}:\n"
                           f"{proc.stderr[-3000:]}")
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(procs)]


def markdown(results: dict) -> str:
    """One row per configuration (rank 0's speed; the largest per-GPU memory of all ranks)."""
    rows = ["| config | GPUs | steps/s | tokens/s | scaling efficiency | model TFLOP/s | MFU | peak allocated "
            "GiB (steps) | peak allocated GiB (load) | state GiB per GPU | losses |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    single = results["configs"].get("single")
    base = single["ranks"][0]["tokens_per_s"] if single else None
    for name, ranks in ((n, c["ranks"]) for n, c in results["configs"].items()):
        r0, gpus = ranks[0], ranks[0]["world_size"]
        eff = f"{r0['tokens_per_s'] / (gpus * base):.2f}" if base else "-"
        rows.append(
            f"| {name} | {gpus} | {r0['steps_per_s']:.3f} | {r0['tokens_per_s']:.0f} | {eff} | "
            f"{r0['model_tflops_per_s']:.1f} | {r0['mfu']:.1%} | "
            f"{max(r['peak_allocated_gib_steps'] for r in ranks):.2f} | "
            f"{max(r['peak_allocated_gib_before_steps'] for r in ranks):.2f} | "
            f"{max(sum(r['state_gib'].values()) for r in ranks):.2f} | "
            f"{', '.join(f'{x:.4f}' for x in r0['losses'])} |")
    return "\n".join(rows)


def run_all(args: argparse.Namespace, gpus: int) -> dict:
    out_root = Path(args.out_dir or tempfile.mkdtemp(prefix="alignkit-gpu-scaling-"))
    results: dict[str, Any] = {"machine": machine(), "uptime_before": uptime(),
                               "settings": {k: str(v) for k, v in vars(args).items()}, "configs": {}}
    for name in args.configs.split(","):
        results["configs"][name] = {"ranks": launch(args, name, gpus, out_root)}
    results["uptime_after"] = uptime()
    return write_results(results, markdown(results), out_root)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, help="N for the ddp/fsdp configurations (default: every visible GPU)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, of " + ",".join(CONFIGS))
    parser.add_argument("--model", default=MODEL_ALIAS, help="a built-in alias or a local model folder")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "auto"], default="float32",
                        help="model.dtype: the stored dtype of parameters, gradients and AdamW states")
    parser.add_argument("--batch-per-gpu", type=int, default=8, help="pairs per GPU per optimizer step")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-prompt-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--reference", choices=["cached", "copy"], default="cached",
                        help="cached: log-probs computed before training; copy: a live frozen copy (+2 N_p FLOPs/token)")
    parser.add_argument("--reduce-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="fsdp: distributed.mixed_precision.reduce_dtype")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="model.gradient_checkpointing")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_FLOPS / 1e12,
                        help="dense bf16 peak per GPU for MFU (default: H100/H200 SXM, 989)")
    parser.add_argument("--data", type=Path, default=SHARED_HH if SHARED_HH.exists() else HH_FIXTURE,
                        help="an HH-RLHF .jsonl.gz file")
    parser.add_argument("--out-dir", help="where results.json, results.md and per-rank records go")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per configuration")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(args)
        return
    gpus = args.gpus or require_cuda()
    require_cuda(gpus)
    if gpus < 2 and any(c != "single" for c in args.configs.split(",")):
        raise SystemExit(f"ddp and fsdp need at least 2 GPUs; {gpus} visible. Use --configs single.")
    from alignkit.models.load import resolve_model_path

    # Resolved once here: a process that converts a built-in alias after init_process_group writes no
    # weights on rank > 0 (transformers saves on rank 0 only); see DISTRIBUTED.md.
    args.model_path = resolve_model_path(args.model)
    results = run_all(args, gpus)
    print(f"\n{results['machine']}\nbefore: {results['uptime_before']}\nafter:  {results['uptime_after']}\n\n"
          f"{results['markdown']}\n\nwritten to {results['out_dir']}")


if __name__ == "__main__":
    main()
