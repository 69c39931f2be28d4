"""Per-process memory and speed of full fine-tuning under 1 process, 2-process ddp and 2-process fsdp (CPU).

SmolLM2-135M-Instruct (the built-in alias ``smollm2-135m-instruct``, loaded by alignkit's own
``load_causal_lm``: fp32, alignkit's default ``model.dtype``) is trained with DPO (sigmoid, beta 0.1) and
AdamW by alignkit's :class:`~alignkit.train.trainer.Trainer` on real HH-RLHF harmless-base pairs. The
reference is **cached** by default: its log-probs are computed before training and before sharding (under
torchrun each process computes a share), so no reference model is held while training and the state
figures are the policy's alone; ``--reference copy`` adds a frozen copy (sharded like the policy under fsdp).

One invocation measures three configurations, each in fresh processes (so each peak RSS is its own):

- ``single``: 1 process, ``OMP_NUM_THREADS=2`` (both cores);
- ``ddp``:    2 processes (``python -m torch.distributed.run --standalone --nproc_per_node=2``), 1 thread
  each: the plain Trainer with the environment of ``init_distributed`` (gloo);
- ``fsdp``:   the same 2 processes, the policy sharded by
  ``shard_model(model, DistributedConfig(strategy="fsdp"), env, cpu)`` before the Trainer is built.

Every configuration sees the same global batches in the same order (the Trainer splits each step's pairs
over the processes), so tokens per step and losses are comparable. Per process it records:

- peak RSS (``ru_maxrss``), the current RSS after each phase (imports, load, reference, shard, steps) and
  at the end after ``malloc_trim(0)`` (close to the bytes still live);
- the training-state bytes this process holds: its parameters (the local shard of a DTensor), its
  gradients (measured right after the backward of each step, before the optimizer step clears them) and
  its AdamW states (``optimizer.state``, local shards) -- the figure fsdp should divide by 2;
- steps/s and tokens/s over the timed steps, after untimed warm-up steps.

The memory model of ``benchmarks/DISTRIBUTED.md`` is implemented below (:func:`predicted_state_bytes`);
the table compares its prediction with the measured state bytes, and ``--predict`` prints its figures for
7B and 70B models.

    python benchmarks/distributed_memory.py                       # 5 to 8 minutes on 2 cores
    python benchmarks/distributed_memory.py --steps 2 --max-length 128 --out-dir /tmp/dm
    python benchmarks/distributed_memory.py --predict              # the memory model only, no training
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from alignkit.jsonio import to_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_bench_setup import wait_for_idle  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HH_FIXTURE = REPO / "tests" / "fixtures" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
MODEL_ALIAS = "smollm2-135m-instruct"

# name -> (processes, threads per process, strategy). 2 threads in all: the machine's 2 cores are shared
# out the same way in every configuration, so the speed comparison is of equal hardware.
CONFIGS: dict[str, tuple[int, int, str]] = {
    "single": (1, 2, "none"),
    "ddp": (2, 1, "ddp"),
    "fsdp": (2, 1, "fsdp"),
}
MIB = 2**20
TRIMMED = "end, after malloc_trim"  # the phase whose RSS is read after glibc returns its free pages


# --------------------------------------------------------------------------------------------------------
# The memory model (documented with its arithmetic in benchmarks/DISTRIBUTED.md)
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs of a decoder-only model.

    Attributes:
        name: a label for tables.
        params: trainable parameters (a tied embedding counted once).
        block_params: parameters of one decoder block (one FSDP unit).
        root_params: parameters outside the blocks (embeddings, final norm, untied lm-head): the root unit.
    """

    name: str
    params: float
    block_params: float
    root_params: float


def llama_shape(name: str, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                vocab: int, tied: bool) -> ModelShape:
    """The parameter counts of a Llama-architecture model (no biases, RMSNorm weights only)."""
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim  # q, o; k, v (grouped-query)
    block = attention + 3 * hidden * intermediate + 2 * hidden  # gate/up/down, 2 norms
    root = vocab * hidden * (1 if tied else 2) + hidden  # embedding (+ lm-head), final norm
    return ModelShape(name, float(layers * block + root), float(block), float(root))


# Published shapes: SmolLM2-135M (this benchmark), Llama-2-7B, Llama-3-70B.
SMOLLM2_135M = llama_shape("SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, tied=True)
LLAMA_7B = llama_shape("Llama-2-7B", 4096, 11008, 32, 32, 32, 32000, tied=False)
LLAMA_70B = llama_shape("Llama-3-70B", 8192, 28672, 80, 64, 8, 128256, tied=False)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class StateBytes:
    """Persistent training state of one process, in bytes: parameters, gradients, AdamW moments."""

    params: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer


def predicted_state_bytes(params: float, shard_over: int, stored_dtype: str = "float32") -> StateBytes:
    """Per-process state of full fine-tuning with AdamW as alignkit does it.

    Parameters stay in the stored dtype (``model.dtype``, float32 by default; FSDP's ``param_dtype`` only
    changes the gathered copy used for compute); gradients have the parameters' dtype (FSDP casts the
    reduced gradient back to it); ``torch.optim.AdamW`` keeps ``exp_avg`` and ``exp_avg_sq`` in the
    parameters' dtype (``zeros_like``), with no separate fp32 master copy. ``shard_over`` is 1 for one
    process and for ddp, the shard-group size for fsdp (all processes; the ``shard`` dimension under HSDP).
    """
    w = DTYPE_BYTES[stored_dtype]
    return StateBytes(params * w / shard_over, params * w / shard_over, 2 * params * w / shard_over)


@dataclass(frozen=True)
class Layout:
    """How a run is spread over processes, in the terms of alignkit's recipe.

    Attributes:
        label: for tables.
        strategy: ``single`` (one process), ``ddp`` or ``fsdp`` (``distributed.strategy``).
        shard_over: processes a parameter is split over (fsdp: the world, or ``mesh.shard`` under HSDP).
        stored_dtype: ``model.dtype`` (``float32`` is alignkit's default).
        autocast: ``train.precision`` bf16 (``auto`` on a bf16 GPU is bf16 too).
        fsdp_param_dtype_bf16: ``distributed.mixed_precision.param_dtype: bfloat16`` (fsdp only).
        cpu_offload: ``distributed.cpu_offload`` (fsdp on CUDA only).
    """

    label: str
    strategy: str
    shard_over: int = 1
    stored_dtype: str = "float32"
    autocast: bool = True
    fsdp_param_dtype_bf16: bool = False
    cpu_offload: bool = False


def transient_bytes(shape: ModelShape, layout: Layout) -> dict[str, float]:
    """Weight- and gradient-sized buffers a step adds on top of the state, at their common peak
    (activations excluded; see DISTRIBUTED.md for why each term is there).

    - one process / ddp: with bf16 autocast over fp32 weights, every linear layer's bf16 weight copy is
      saved for backward from its forward until its backward (2 bytes per parameter at the end of the
      forward); under ddp, alignkit's ``all_reduce_gradients`` then flattens every gradient into one
      buffer (one more copy of the gradients). The two are not alive at the same time.
    - fsdp: the gathered parameters of the running and the prefetched block and of the root (FSDP2 keeps
      the root gathered from forward to backward), plus one block's unsharded gradient before its
      reduce-scatter, all in ``param_dtype`` (else the stored dtype); without ``param_dtype`` but with
      autocast, the autocast copies of *all* weights are saved for backward as in ddp: not sharded.
    """
    w = DTYPE_BYTES[layout.stored_dtype]
    copies = 2.0 * shape.params if layout.autocast and w > 2 else 0.0
    if layout.strategy in ("single", "ddp"):
        flat = w * shape.params if layout.strategy == "ddp" else 0.0
        return {"autocast weight copies": copies, "gradient all-reduce buffer": flat, "peak": max(copies, flat)}
    gathered = 2 if layout.fsdp_param_dtype_bf16 else w
    blocks = gathered * (2 * shape.block_params + shape.root_params)
    grad = gathered * shape.block_params
    copies = 0.0 if layout.fsdp_param_dtype_bf16 else copies
    return {"gathered params": blocks, "unsharded block gradient": grad, "autocast weight copies": copies,
            "peak": blocks + grad + copies}


def load_peak_bytes(shape: ModelShape, layout: Layout) -> float:
    """Device bytes when the model is loaded: alignkit loads the whole model onto every process's device
    (``load_causal_lm(cfg, device)``) and only then shards it, so this is the full model in every layout."""
    return DTYPE_BYTES[layout.stored_dtype] * shape.params


def prediction_rows(shapes: Iterable[ModelShape], layouts: Iterable[Layout]) -> list[str]:
    """Markdown rows, GiB per process: state on the device, step transients, their sum, the load peak,
    and the host memory cpu_offload moves the state to."""
    gib = 2**30
    rows = ["| model | layout | weights + grads + AdamW = state | step transients | device total (no activations) "
            "| device at load | host (offload) |", "|---|---|---|---:|---:|---:|---:|"]
    for shape in shapes:
        for layout in layouts:
            state = predicted_state_bytes(shape.params, layout.shard_over, layout.stored_dtype)
            extra = transient_bytes(shape, layout)["peak"]
            device_state = 0.0 if layout.cpu_offload else state.total
            parts = f"{state.params / gib:.1f} + {state.grads / gib:.1f} + {state.optimizer / gib:.1f} = " \
                    f"{state.total / gib:.1f}"
            host = f"{state.total / gib:.1f}" if layout.cpu_offload else "-"
            rows.append(f"| {shape.name} ({shape.params / 1e9:.2f}B) | {layout.label} | {parts} | {extra / gib:.1f} "
                        f"| {(device_state + extra) / gib:.1f} | {load_peak_bytes(shape, layout) / gib:.1f} | {host} |")
    return rows


PREDICTION_LAYOUTS = [
    Layout("8 GPUs ddp, bf16 autocast", "ddp"),
    Layout("8 GPUs fsdp, mixed_precision param bf16", "fsdp", 8, fsdp_param_dtype_bf16=True),
    Layout("8 GPUs fsdp, no mixed_precision, bf16 autocast", "fsdp", 8),
    Layout("8 GPUs fsdp + cpu_offload, param bf16", "fsdp", 8, fsdp_param_dtype_bf16=True, cpu_offload=True),
    Layout("8 GPUs fsdp, model.dtype bfloat16", "fsdp", 8, stored_dtype="bfloat16"),
    Layout("2x8 GPUs HSDP (replicate 2 x shard 8), param bf16", "fsdp", 8, fsdp_param_dtype_bf16=True),
    Layout("2x8 GPUs fsdp over 16, param bf16", "fsdp", 16, fsdp_param_dtype_bf16=True),
]


# --------------------------------------------------------------------------------------------------------
# Measuring, in each worker process
# --------------------------------------------------------------------------------------------------------
def current_rss_mib() -> float:
    """Resident memory now (not the high-water mark), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_after_trim_mib() -> float:
    """Resident memory after glibc hands its free heap pages back (``malloc_trim(0)``): close to the bytes
    still live. Without it the RSS also counts freed blocks the allocator keeps (FSDP frees and re-allocates
    every block's gathered parameters and gradients each step, so it keeps more than one process does)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: report the RSS as it is
        pass
    return current_rss_mib()


def local_bytes(tensors: Iterable[Any]) -> int:
    """Bytes this process holds of ``tensors``: a DTensor's local shard, a plain tensor whole.

    Distinct storages only (a tied weight is one parameter already; this guards against views)."""
    from torch.distributed.tensor import DTensor

    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        seen[(local.data_ptr(), local.numel())] = local.numel() * local.element_size()
    return sum(seen.values())


def optimizer_tensors(optimizer: Any) -> list[Any]:
    """Every tensor in ``optimizer.state`` (AdamW: exp_avg, exp_avg_sq, and a one-element step)."""
    import torch

    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def global_step_tokens(examples: list[Any]) -> int:
    """Non-padding tokens of one optimizer step over all processes (chosen + rejected, prompts included)."""
    return sum(2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples)


def load_pairs(tokenizer: Any, path: Path, need: int, max_length: int, max_prompt_length: int,
               minimum: int | None = None) -> list[Any]:
    """The first ``need`` usable HH-RLHF pairs (at least ``minimum``, default ``need``), tokenized with the
    model's chat template. The Trainer starts another epoch over them when the steps need more."""
    from alignkit.data.config import HHRLHFSource
    from alignkit.data.hh_rlhf import load_hh_rlhf
    from alignkit.data.tokenize import tokenize_pairs

    examples, _ = load_hh_rlhf(HHRLHFSource(path=str(path)))
    pairs, _ = tokenize_pairs(examples[: need * 2], tokenizer, max_length, max_prompt_length)
    if len(pairs) < (minimum or need):
        raise ValueError(f"only {len(pairs)} usable pairs in {path}, need {minimum or need}")
    # Indices 0..need-1: the reference cache indexes its tensors by pair index, and a pair dropped by
    # tokenization would leave a gap past the end (see DISTRIBUTED.md, findings).
    return [replace(p, index=i) for i, p in enumerate(pairs[:need])]


def build_reference(kind: str, model: Any, pairs: list[Any], collate: Callable, batch: int,
                    load: Callable[[], Any], shard: Callable[[Any], None] | None) -> Any:
    """The DPO reference: log-probs cached before training (no model held), or a frozen copy, sharded by
    ``shard`` when the policy is (fsdp). Under torchrun, building the cache is collective: every process
    computes a share of the batches and they are summed."""
    from alignkit.models.reference import CachedReference, FrozenCopyReference
    from alignkit.models.reference_cache import ReferenceLogpsCache

    if kind == "cached":
        # Each process reads and writes its own file (a folder per rank), as on separate machines.
        return CachedReference(ReferenceLogpsCache.build(model, pairs, collate, batch, MODEL_ALIAS, progress=False))
    copy = load().requires_grad_(False)
    if shard is not None:
        shard(copy)
    return FrozenCopyReference(copy, copy=False)


class StateProbe:
    """Records this process's gradient bytes right after each step's backward (before the optimizer step
    clears them), by wrapping the trainer's ``accumulate_gradients``."""

    def __init__(self, trainer: Any) -> None:
        self.grad_bytes: list[int] = []
        inner = trainer.accumulate_gradients

        def accumulate(step: int) -> Any:
            out = inner(step)
            self.grad_bytes.append(local_bytes(p.grad for p in trainer.params if p.grad is not None))
            return out

        trainer.accumulate_gradients = accumulate


def run_worker(args: argparse.Namespace) -> None:
    """One process of one configuration: load, (shard), train, write ``rank<r>.json`` to ``args.out_dir``."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from alignkit.data.collate import collate_preference
    from alignkit.losses import build_objective
    from alignkit.models.config import ModelConfig
    from alignkit.models.load import load_causal_lm, load_tokenizer
    from alignkit.train.config import DistributedConfig, TrainConfig
    from alignkit.train.distributed import init_distributed
    from alignkit.train.sharding import shard_model
    from alignkit.train.trainer import Trainer

    cpu = torch.device("cpu")
    phases = {"imports": current_rss_mib()}
    env = init_distributed(cpu)
    out_dir = Path(args.out_dir)
    # A local folder (resolved by the driver), never the alias: a process that converts the alias itself
    # after init_process_group gets a folder without weights on rank 1 (see DISTRIBUTED.md, findings).
    model_cfg = ModelConfig(name_or_path=args.model_path)  # dtype float32: alignkit's default
    # The reference cache: fresh (nothing reused), one folder per rank, as on separate machines.
    os.environ["ALIGNKIT_CACHE"] = str(out_dir / f"cache-rank{env.rank}")
    tokenizer = load_tokenizer(model_cfg)
    total = args.warmup + args.steps
    pairs = load_pairs(tokenizer, Path(args.data), args.batch * total, args.max_length, args.max_prompt_length)
    load = partial(load_causal_lm, model_cfg, cpu)
    torch.manual_seed(0)
    model = load()
    phases["model loaded"] = current_rss_mib()
    collate = partial(collate_preference, pad_token_id=tokenizer.pad_token_id)
    shard = partial(shard_model, cfg=DistributedConfig(strategy="fsdp"), env=env, device=cpu)
    fsdp = args.strategy == "fsdp"
    reference = build_reference(args.reference, model, pairs, collate, args.batch, load,
                                partial(shard, trainable=False) if fsdp else None)
    phases["reference ready"] = current_rss_mib()
    if fsdp:
        shard(model)  # exactly as tests/distributed/equivalence_worker.py: after the reference, before the Trainer
        phases["sharded"] = current_rss_mib()
    cfg = TrainConfig(lr=1e-5, batch_size=args.batch, max_steps=total, warmup_steps=0, schedule="linear",
                      max_grad_norm=1.0, precision=args.precision, device="cpu")
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, build_objective({"name": "dpo", "beta": 0.1}), cfg, train_pairs=pairs,
                          collate=collate, run_dir=Path(run_dir), reference=reference, seed=0, env=env)
        probe = StateProbe(trainer)
        ends, losses, tokens = [], [], []
        for step in range(total):
            tokens.append(global_step_tokens(trainer._step_examples(step)))
            losses.append(trainer.train_step(step)["loss"])
            ends.append(time.perf_counter())
            phases[f"after step {step + 1}"] = current_rss_mib()
    timed = ends[-1] - ends[args.warmup - 1]
    phases[TRIMMED] = rss_after_trim_mib()
    record = {
        "rank": env.rank, "world_size": env.world_size, "strategy": args.strategy,
        "threads": torch.get_num_threads(), "peak_rss_mib": peak_rss_mib(), "rss_mib": phases,
        "state_bytes": {
            "params": local_bytes(trainer.params),
            "grads": max(probe.grad_bytes),
            "optimizer": local_bytes(optimizer_tensors(trainer.optimizer)),
        },
        "grad_bytes_per_step": probe.grad_bytes,
        "reference_model_bytes": local_bytes(reference.model.parameters()) if args.reference == "copy" else 0,
        "trainable_params_full": sum(p.numel() for p in trainer.params),
        "trainable_tensors": len(trainer.params),
        "timed_seconds": timed, "timed_steps": args.steps, "timed_tokens": sum(tokens[args.warmup:]),
        "steps_per_s": args.steps / timed, "tokens_per_s": sum(tokens[args.warmup:]) / timed,
        "losses": losses,
    }
    (out_dir / f"rank{env.rank}.json").write_text(to_json(record, indent=1))
    if env.enabled:
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------------------
# The driver: launch every configuration, collect, compare, write
# --------------------------------------------------------------------------------------------------------
def worker_args(args: argparse.Namespace, strategy: str, out_dir: Path) -> list[str]:
    """The script and arguments each worker process of a configuration runs."""
    return [str(Path(__file__).resolve()), "--worker", "--strategy", strategy, "--out-dir", str(out_dir),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
            "--max-length", str(args.max_length), "--max-prompt-length", str(args.max_prompt_length),
            "--reference", args.reference, "--precision", args.precision, "--data", str(args.data),
            "--model-path", args.model_path]


def launch(name: str, args: argparse.Namespace, out_root: Path) -> list[dict]:
    """Run configuration ``name`` in fresh processes; return each rank's record."""
    procs, threads, strategy = CONFIGS[name]
    out_dir = out_root / name
    out_dir.mkdir(parents=True, exist_ok=True)
    script = worker_args(args, strategy, out_dir)
    if procs == 1:
        cmd = [sys.executable, *script]
    else:  # torchrun's own launcher; --standalone picks a free local rendezvous port
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *script]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print(f"[{name}] {procs} process(es) x {threads} thread(s): {' '.join(cmd[:6])} ...", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    (out_dir / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}); log in {out_dir / 'log.txt'}:\n"
                           f"{proc.stderr[-3000:]}")
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(procs)]


def shard_sizes(config: str) -> int:
    """How many processes the state is split over in ``config`` (the memory model's ``shard_over``)."""
    procs, _, strategy = CONFIGS[config]
    return procs if strategy == "fsdp" else 1


def compare_with_model(config: str, ranks: list[dict]) -> dict:
    """The memory model's state bytes for ``config`` against each rank's measured bytes."""
    r0 = ranks[0]
    predicted = predicted_state_bytes(r0["trainable_params_full"], shard_sizes(config))
    # AdamW's step counter: one fp32 scalar tensor per parameter tensor, on every process that holds a shard.
    step_bytes = 4 * r0["trainable_tensors"]
    measured = [sum(r["state_bytes"].values()) for r in ranks]
    total = predicted.total + step_bytes
    return {"predicted_bytes": total, "predicted": asdict(predicted), "adamw_step_bytes": step_bytes,
            "measured_bytes": measured, "measured_over_predicted": [m / total for m in measured]}


def uptime() -> str:
    """``uptime``'s line: the load averages the figures were taken under."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_model() -> dict:
    """``lscpu``'s model name and CPU count, and whether the CPU advertises AMX / AVX512-BF16 to this OS."""
    info = {}
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor"):
            info[key.strip()] = value.strip()
    flags = Path("/proc/cpuinfo").read_text()
    info["amx_bf16 flag"] = "amx_bf16" in flags
    info["avx512_bf16 flag"] = "avx512_bf16" in flags
    return info


def machine() -> dict:
    """Date, CPU, RAM and versions, recorded with every result."""
    import torch
    import transformers

    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "cpu": cpu_model(),
            "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}


def markdown(results: dict) -> str:
    """The measured table and the predicted-vs-measured check."""
    rows = ["| config | processes x threads | peak RSS (MiB) | RSS at the end after malloc_trim (MiB) | state "
            "(MiB): params + grads + AdamW = total | state / 1 process | steps/s | tokens/s | 1-min load before "
            "/ after | losses |",
            "|---|---|---:|---:|---|---:|---:|---:|---|---|"]
    single = results["configs"].get("single")
    base = _state_total(single["ranks"]) if single else float("nan")
    for name, run in results["configs"].items():
        procs, threads, _ = CONFIGS[name]
        ranks = run["ranks"]
        rows.append(
            f"| {name} | {procs} x {threads} | {_per_rank(ranks, _peak_cell)} | {_per_rank(ranks, _trimmed_cell)} "
            f"| {_per_rank(ranks, _state_cell)} | {_state_total(ranks) / base:.3f} | {ranks[0]['steps_per_s']:.3f} "
            f"| {ranks[0]['tokens_per_s']:.0f} | {run['load_before'][0]:.2f} / {run['load_after'][0]:.2f} | "
            f"{', '.join(f'{x:.4f}' for x in ranks[0]['losses'])} |")
    rows += ["", "| config | predicted state per process (MiB) | measured (MiB, per rank) | measured / predicted |",
             "|---|---:|---|---|"]
    for name, run in results["configs"].items():
        c = run["model_check"]
        rows.append(f"| {name} | {c['predicted_bytes'] / MIB:.1f} | "
                    f"{' / '.join(f'{m / MIB:.1f}' for m in c['measured_bytes'])} | "
                    f"{' / '.join(f'{q:.4f}' for q in c['measured_over_predicted'])} |")
    return "\n".join(rows)


def _per_rank(ranks: list[dict], cell: Callable[[dict], str]) -> str:
    """One table cell holding every rank's figure, rank 0 first."""
    return " / ".join(cell(r) for r in ranks)


def _peak_cell(rank: dict) -> str:
    return f"{rank['peak_rss_mib']:.0f}"


def _trimmed_cell(rank: dict) -> str:
    return f"{rank['rss_mib'][TRIMMED]:.0f}"


def _state_cell(rank: dict) -> str:
    parts = [rank["state_bytes"][k] for k in ("params", "grads", "optimizer")]
    return " + ".join(f"{p / MIB:.0f}" for p in parts) + f" = {sum(parts) / MIB:.0f}"


def _state_total(ranks: list[dict]) -> float:
    """The largest per-process state of a configuration (ranks differ by FSDP's padding at most)."""
    return max(sum(r["state_bytes"].values()) for r in ranks)


def run_all(args: argparse.Namespace) -> dict:
    """Every configuration in turn, with the machine, the settings and the load around the measurement."""
    out_root = Path(args.out_dir or tempfile.mkdtemp(prefix="alignkit-distmem-"))
    results: dict[str, Any] = {"machine": machine(), "uptime_before": uptime(),
                               "settings": {k: str(v) for k, v in vars(args).items()}, "configs": {}}
    for name in args.configs.split(","):
        wait_for_idle(args.max_load, poll_seconds=30.0, max_wait_seconds=args.max_wait)
        before = os.getloadavg()
        ranks = launch(name, args, out_root)
        results["configs"][name] = {"ranks": ranks, "load_before": before, "load_after": os.getloadavg(),
                                    "model_check": compare_with_model(name, ranks)}
    results["uptime_after"] = uptime()
    # 2 runnable threads are this benchmark's own; more means another job took CPU time from it.
    results["load_note"] = ("1-min load above 2.5 during the run: steps/s and tokens/s are not clean "
                            "(the memory figures are unaffected)"
                            if max(max(c["load_before"][0], c["load_after"][0])
                                   for c in results["configs"].values()) > 2.5 else "load at most 2.5")
    return write_results(results, markdown(results), out_root)


def write_results(results: dict, table: str, out_root: Path) -> dict:
    """Write ``results`` (with its markdown ``table``) as results.json and results.md under ``out_root``."""
    results["markdown"] = table
    (out_root / "results.json").write_text(to_json(results, indent=1))
    (out_root / "results.md").write_text(table + "\n")
    results["out_dir"] = str(out_root)
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="single,ddp,fsdp", help="comma-separated, of " + ",".join(CONFIGS))
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first (AdamW state appears)")
    parser.add_argument("--batch", type=int, default=4, help="pairs per optimizer step, over all processes")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--reference", choices=["cached", "copy"], default="cached")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="train.precision (bf16: autocast; pays on CPU only with AMX/AVX512-BF16)")
    parser.add_argument("--data", type=Path, default=HH_FIXTURE, help="an HH-RLHF .jsonl.gz file")
    parser.add_argument("--out-dir", help="where results.json, results.md and per-rank records go (default: a "
                        "new temporary folder)")
    parser.add_argument("--max-load", type=float, default=0.0, help="before each configuration, wait until the "
                        "1-min load is below this (0: never wait); the load is recorded either way")
    parser.add_argument("--max-wait", type=float, default=300.0, help="seconds to wait for that load, then run")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per configuration")
    parser.add_argument("--predict", action="store_true", help="print the memory model's 7B/70B table and exit")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", choices=["none", "ddp", "fsdp"], help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(args)
        return
    if args.predict:
        print("\n".join(prediction_rows([LLAMA_7B, LLAMA_70B], PREDICTION_LAYOUTS)))
        return
    if args.batch % 2:
        raise SystemExit("--batch must be even: every step's pairs are split over 2 processes")
    if shutil.which("uptime") is None or shutil.which("lscpu") is None:
        raise SystemExit("needs `uptime` and `lscpu` (procps, util-linux) to record the machine")
    from alignkit.models.load import resolve_model_path

    args.model_path = resolve_model_path(MODEL_ALIAS)  # the converted folder in the user's cache
    results = run_all(args)
    print(f"\n{results['machine']}\nbefore: {results['uptime_before']}\nafter:  {results['uptime_after']}\n"
          f"{results['load_note']}\n\n{results['markdown']}\n\nwritten to {results['out_dir']}")


if __name__ == "__main__":
    main()
