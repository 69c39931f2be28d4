"""DPO training speed and memory: alignkit's Trainer against TRL's DPOTrainer, side by side.

Both frameworks get the same model weights, the same real HH-RLHF pairs (tokenized once by alignkit, in
the same order, so step k sees the same pairs), batch, sequence limits, precision, sigmoid DPO with beta
0.1, AdamW with a linear decay, gradient clipping at 1.0, no evaluation, no checkpoints, no logging, no
dropout, and the same activation-checkpointing setting. Each framework runs in its own fresh interpreter,
so its peak memory (``VmHWM``, else ``ru_maxrss``, on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) is its own.
Warm-up steps are run first and not timed.

    python benchmarks/dpo_vs_trl.py --case tiny-gpt2                      # both reference modes
    python benchmarks/dpo_vs_trl.py --case smollm2 --reference copy --gradient-checkpointing
    python benchmarks/dpo_vs_trl.py --case smollm2 --device cuda --precision bf16 --max-length 1024
    python benchmarks/dpo_vs_trl.py --case smollm2 --precision bf16     # bf16 autocast on CPU, both sides
    python benchmarks/dpo_vs_trl.py --case tiny-gpt2 --json out.json --max-load 1.3

Reference modes: ``copy`` keeps a frozen reference model (alignkit FrozenCopyReference, TRL an explicit
``ref_model`` copy); ``cached`` computes reference log-probs before training (alignkit
ReferenceLogpsCache + CachedReference, TRL ``precompute_ref_log_probs=True``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alignkit.jsonio import to_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpo_bench_setup import (  # noqa: E402
    CASES,
    BenchSpec,
    build_model,
    build_tokenizer,
    machine_summary,
    ordered_pairs,
    step_tokens,
    training_flops,
    wait_for_idle,
)

__all__ = ["MemoryCapExceeded", "compare", "run_alignkit", "run_framework_subprocess", "run_trl", "markdown_rows"]

FRAMEWORKS = ("alignkit", "trl")


def _peak_rss_mib() -> float:
    """The resident high-water mark. ``VmHWM`` first: it is read from the same counters as ``VmRSS`` (so a peak
    is never below an earlier current reading), where ``ru_maxrss`` is synced lazily and can trail it."""
    kib = _proc_status_kib("VmHWM")
    # ru_maxrss is in kilobytes on Linux.
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_memory_mib(spec: BenchSpec) -> float:
    """The figure both frameworks are compared on: peak RSS on CPU, peak allocated tensors on CUDA."""
    if spec.device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return _peak_rss_mib()


def _current_rss_mib() -> float:
    """Resident memory now (not the high-water mark), from /proc; falls back to the peak elsewhere."""
    kib = _proc_status_kib("VmRSS")
    return kib / 1024 if kib is not None else _peak_rss_mib()


def _summarize(spec: BenchSpec, pairs, step_ends: list[float], losses: list[float], baseline: float,
               model) -> dict:
    """Throughput over the timed steps (from the end of the last warm-up step to the end of the run)."""
    timed = step_ends[spec.total_steps - 1] - step_ends[spec.warmup - 1]
    tokens = sum(step_tokens(pairs, spec.batch, s) for s in range(spec.warmup, spec.total_steps))
    flops = training_flops(model, tokens, reference_forward=spec.reference == "copy")
    out = {
        "steps_per_s": spec.steps / timed,
        "tokens_per_s": tokens / timed,
        "seconds_per_step": timed / spec.steps,
        "timed_tokens": tokens,
        "model_tflops_per_s": flops / timed / 1e12,
        "peak_rss_mib": _peak_memory_mib(spec),
        "rss_after_imports_mib": baseline if spec.device == "cpu" else 0.0,
        "losses": losses,
    }
    return out


def _sync(spec: BenchSpec) -> None:
    if spec.device == "cuda":  # kernels run asynchronously: a step ends when the GPU is done
        import torch

        torch.cuda.synchronize()


def run_alignkit(spec: BenchSpec) -> dict:
    """Train ``spec.total_steps`` steps with alignkit's Trainer in this process; return its figures."""
    from functools import partial

    from alignkit.data.collate import collate_preference
    from alignkit.losses import build_objective
    from alignkit.models.logps import LogpsOptions
    from alignkit.models.precision import resolve_precision
    from alignkit.models.reference import CachedReference, FrozenCopyReference
    from alignkit.models.reference_cache import ReferenceLogpsCache
    from alignkit.train.config import TrainConfig
    from alignkit.train.trainer import Trainer

    baseline = _current_rss_mib()
    tokenizer = build_tokenizer(spec)
    pairs, visited = ordered_pairs(spec, tokenizer)
    model = build_model(spec)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    collate = partial(collate_preference, pad_token_id=tokenizer.pad_token_id)
    logps = LogpsOptions(chunk_size=spec.chunk_size, padding_free=spec.padding_free)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ALIGNKIT_CACHE"] = tmp  # a fresh reference cache: nothing reused from earlier runs
        if spec.reference == "cached":
            # Under the training forward's autocast, as TRL computes its reference.
            autocast_dtype = resolve_precision(spec.precision, spec.device).autocast_dtype
            cache = ReferenceLogpsCache.build(model, pairs, collate, spec.batch, "bench", logps=logps,
                                              autocast_dtype=autocast_dtype, progress=False)
            reference = CachedReference(cache)
        else:
            reference = FrozenCopyReference(model, logps=logps)
        cfg = TrainConfig(lr=spec.lr, batch_size=spec.batch, max_steps=spec.total_steps, warmup_steps=0,
                          schedule="linear", max_grad_norm=1.0, precision=spec.precision, device=spec.device)
        trainer = Trainer(model, build_objective({"name": "dpo", "beta": spec.beta}), cfg, train_pairs=pairs,
                          collate=collate, run_dir=Path(tmp) / "run", reference=reference, seed=spec.seed,
                          logps=logps)
        if trainer._step_examples(0) != visited[: spec.batch]:  # the order TRL is fed must be alignkit's
            raise RuntimeError("alignkit's step order differs from the benchmark's pair order")
        step_ends, losses = [], []
        for step in range(spec.total_steps):
            metrics = trainer.train_step(step)
            _sync(spec)
            step_ends.append(time.perf_counter())
            losses.append(metrics["loss"])
    return _summarize(spec, visited, step_ends, losses, baseline, model)


def run_trl(spec: BenchSpec) -> dict:
    """Train ``spec.total_steps`` steps with TRL's DPOTrainer in this process; return its figures."""
    import copy

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    baseline = _current_rss_mib()
    tokenizer = build_tokenizer(spec)
    _, pairs = ordered_pairs(spec, tokenizer)  # in the order alignkit visits them
    model = build_model(spec)
    ref_model = None if spec.reference == "cached" else copy.deepcopy(model).eval().requires_grad_(False)
    dataset = Dataset.from_dict({
        "prompt_ids": [p.prompt_ids for p in pairs],
        "chosen_ids": [p.chosen_ids for p in pairs],
        "rejected_ids": [p.rejected_ids for p in pairs],
    })
    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync(spec)
            step_ends.append(time.perf_counter())

    class PretokenizedDPOTrainer(DPOTrainer):
        """TRL's trainer fed alignkit's token ids as is; records each step's loss without syncing."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already tokenized: same ids as alignkit's (TRL would re-tokenize text)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.bench_losses.append((loss[0] if return_outputs else loss).detach())
            return loss

    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp, use_cpu=spec.device == "cpu", bf16=spec.precision == "bf16", fp16=False, per_device_train_batch_size=spec.batch,
            gradient_accumulation_steps=1, max_steps=spec.total_steps, learning_rate=spec.lr,
            lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
            beta=spec.beta, loss_type=["sigmoid"], max_length=spec.max_length, pad_to_multiple_of=8,
            precompute_ref_log_probs=spec.reference == "cached", precompute_ref_batch_size=spec.batch,
            gradient_checkpointing=spec.gradient_checkpointing, disable_dropout=True, train_sampling_strategy="sequential",
            eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, dataloader_pin_memory=False, seed=spec.seed, data_seed=spec.seed,
        )
        trainer = PretokenizedDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                                         processing_class=tokenizer, callbacks=[StepClock()])
        trainer.bench_losses = []
        # bf16=True must reach accelerate as bf16 autocast on CPU too, or the comparison is not like for like.
        expected = "bf16" if spec.precision == "bf16" else "no"
        if trainer.accelerator.mixed_precision != expected:
            raise RuntimeError(f"TRL runs with mixed_precision={trainer.accelerator.mixed_precision!r}, "
                               f"expected {expected!r} for precision {spec.precision}")
        trainer.train()
    if len(step_ends) != spec.total_steps:
        raise RuntimeError(f"TRL ran {len(step_ends)} optimizer steps, expected {spec.total_steps}")
    return _summarize(spec, pairs, step_ends, [float(x) for x in trainer.bench_losses], baseline, model)


class MemoryCapExceeded(RuntimeError):
    """The child's resident memory passed the cap it was given, so it was killed: no figures exist."""


def _rss_mib_of(pid: int) -> float:
    """Resident memory of process ``pid`` now, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_framework_subprocess(framework: str, spec: BenchSpec, timeout: float | None = None,
                             rss_cap_mib: float | None = None) -> dict:
    """Run one framework in a fresh interpreter (its own peak RSS) and return its JSON figures.

    With ``rss_cap_mib``, the child is polled and killed once its resident memory passes the cap (a point
    that would swap a shared machine), raising :class:`MemoryCapExceeded`.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", framework, "--spec", to_json(spec.to_dict(), indent=None)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        start, seen = time.monotonic(), 0.0
        while proc.poll() is None:
            seen = max(seen, _rss_mib_of(proc.pid))
            if rss_cap_mib is not None and seen > rss_cap_mib:
                proc.kill()
                proc.wait()
                raise MemoryCapExceeded(f"{framework}: resident memory passed the {rss_cap_mib:.0f} MiB cap "
                                        f"after {time.monotonic() - start:.0f} s; killed")
            if timeout is not None and time.monotonic() - start > timeout:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(cmd, timeout)
            time.sleep(0.1)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} benchmark failed (exit {proc.returncode}):\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def _ratio(ours: float, theirs: float) -> float:
    """ours / theirs, NaN when the baseline is not positive (a tiny run can peak while importing)."""
    return ours / theirs if theirs > 0 else float("nan")


def compare(spec: BenchSpec, max_load: float = 0.0, frameworks=FRAMEWORKS, max_wait: float = 1800.0) -> dict:
    """Both frameworks on ``spec``, each in its own process, with the load seen before each run.

    Before each run, waits up to ``max_wait`` seconds for the 1-minute load to fall below ``max_load``
    (then runs anyway: the load is recorded next to the figures).
    """
    results = {}
    for framework in frameworks:
        load = wait_for_idle(max_load, max_wait_seconds=max_wait)
        result = run_framework_subprocess(framework, spec)
        result["load_before"] = load
        result["load_after"] = os.getloadavg()[0]
        results[framework] = result
    out = {"spec": spec.to_dict(), "results": results}
    if set(frameworks) == set(FRAMEWORKS):
        a, t = results["alignkit"], results["trl"]
        out["ratios"] = {
            "steps_per_s": a["steps_per_s"] / t["steps_per_s"],
            "tokens_per_s": a["tokens_per_s"] / t["tokens_per_s"],
            "peak_rss": a["peak_rss_mib"] / t["peak_rss_mib"],
            "peak_rss_over_imports": _ratio(a["peak_rss_mib"] - a["rss_after_imports_mib"],
                                            t["peak_rss_mib"] - t["rss_after_imports_mib"]),
        }
    return out


def markdown_rows(run: dict) -> list[str]:
    """Table rows of one comparison: one per framework, then the alignkit / TRL ratio."""
    spec = BenchSpec(**run["spec"])
    label, peak = spec.label, _peak_tflops(spec)
    rows = []
    for name, r in run["results"].items():
        mfu = f"{r['model_tflops_per_s'] / peak:.1%}" if peak else "-"
        rows.append(
            f"| {label} | {name} | {r['steps_per_s']:.3f} | {r['tokens_per_s']:.0f} | {mfu} | {r['peak_rss_mib']:.0f} "
            f"| {r['peak_rss_mib'] - r['rss_after_imports_mib']:.0f} | {r['losses'][-1]:.4f} "
            f"| {r['load_before']:.2f} / {r['load_after']:.2f} |"
        )
    if "ratios" in run:
        q = run["ratios"]
        rows.append(f"| {label} | **alignkit / TRL** | **{q['steps_per_s']:.2f}x** | {q['tokens_per_s']:.2f}x | "
                    f"| **{q['peak_rss']:.2f}x** | {q['peak_rss_over_imports']:.2f}x | | |")
    return rows


# Dense bf16 peak measured on the H100/H200 machines this harness targets; MFU is reported for CUDA bf16 only.
CUDA_BF16_PEAK_TFLOPS = 800.0


def _peak_tflops(spec: BenchSpec) -> float | None:
    return CUDA_BF16_PEAK_TFLOPS if spec.device == "cuda" and spec.precision == "bf16" else None


TABLE_HEADER = [
    "| setting | framework | steps/s | tokens/s | MFU | peak memory (MiB) | peak over imports (MiB) | last loss "
    "| 1-min load before / after |",
    "|---|---|---:|---:|---:|---:|---:|---:|---|",
]


def _versions() -> str:
    import torch
    import transformers

    parts = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    try:
        import trl

        parts.append(f"trl {trl.__version__}")
    except ImportError:
        parts.append("trl not installed")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="tiny-gpt2")
    parser.add_argument("--reference", choices=["copy", "cached", "both"], default="both")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--max-prompt-length", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--hidden", type=int, help="tiny-gpt2 width (768 with 12 layers and heads: GPT-2 small's shape)")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--chunk-size", type=int, default=256, help="alignkit's lm-head chunk (its default: 256)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="activation checkpointing, both sides")
    parser.add_argument("--padded", action="store_true", help="turn off alignkit's padding-free packing")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--frameworks", default="alignkit,trl")
    parser.add_argument("--max-load", type=float, default=1.3, help="wait until the 1-min load is below (0: never wait)")
    parser.add_argument("--max-wait", type=float, default=1800.0, help="seconds to wait for that load, then run")
    parser.add_argument("--json", type=Path, help="append the results (one JSON object a line) to this file")
    parser.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = BenchSpec(**json.loads(args.spec))
        print(to_json((run_alignkit if args.child == "alignkit" else run_trl)(spec), indent=None))
        return

    defaults = dict(CASES[args.case])
    for key in ("batch", "max_length", "max_prompt_length", "steps", "warmup", "hidden", "layers", "heads"):
        if getattr(args, key) is not None:
            defaults[key] = getattr(args, key)
    model_path = None
    if args.case == "smollm2":
        from alignkit.models.smollm2 import ensure_smollm2

        model_path = str(ensure_smollm2())
    print(f"Machine: {machine_summary()}\nVersions: {_versions()}")
    print("\n".join(TABLE_HEADER), flush=True)
    references = ["copy", "cached"] if args.reference == "both" else [args.reference]
    for reference in references:
        spec = BenchSpec(case=args.case, reference=reference, model_path=model_path, chunk_size=args.chunk_size,
                         gradient_checkpointing=args.gradient_checkpointing, padding_free=not args.padded,
                         device=args.device, precision=args.precision, **defaults)
        run = compare(spec, args.max_load, tuple(args.frameworks.split(",")), args.max_wait)
        print("\n".join(markdown_rows(run)), flush=True)
        if args.json:
            with args.json.open("a") as fh:
                fh.write(to_json(run, indent=None) + "\n")


if __name__ == "__main__":
    main()
