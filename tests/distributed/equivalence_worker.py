"""Run by test_equivalence, alone or under torchrun: a few optimizer steps of each case; save what they did.

argv: an output folder, then a JSON list of cases. A case is a dict:
    name: a label (the output subfolder <out>/<name>);
    loss: the recipe's loss section;
    strategy: "ddp" (default) or "fsdp" (only under torchrun: one process is never sharded);
    grad_accum (1); batch_size (4); steps (3): the trainer's total optimizer steps; lr (1e-3);
    adapter: "none" | "lora" | "bottleneck";
    reference: "copy" (default) | "adapters_off" | "cached" (needs $ALIGNKIT_CACHE; see below);
    padding_free (true);
    run_dir: the run folder (default <out>/<name>/run); a resumed case names the folder of the stopped one;
    stop_after: train with a trainer of ``steps`` total steps, but stop it when step ``stop_after`` (0-based)
        begins (tests/conftest.py interrupt_fit), as a killed run (its step-``stop_after`` checkpoint stays);
    resume: continue from the run folder's latest checkpoint (``Trainer.fit(resume=True)``);
    precision: "fp32" (default, pinned: never the machine's ``auto``) or "bf16" (autocast; the cached
        reference is computed under it too, as a run computes it);
    mixed_precision: with fsdp, FSDP's own mixed precision as a bf16 run uses it (weights gathered in bf16,
        gradients reduced in fp32), beside the autocast.

Every case writes <out>/<name>/rank<r>.json on each process (is the model sharded, which fraction of the
trainable elements this process holds after training and after each step and evaluation, the reference-cache
file it read). Unless the case stopped, the main process also writes <out>/<name>/losses.json (per-step train
loss, gradient norm and learning rate, the eval losses, the step it resumed at) and weights.safetensors (the
trainable weights after the last step, full tensors); a one-process case that does not resume also writes
initial.safetensors (before any step).

Processes other than the main one perturb their trainable weights before training (:func:`_diverge`): the
runs agree only if alignkit gives every process the main process's starting weights.

Reference cache: each process reads and writes its own folder, $ALIGNKIT_CACHE/rank<r>, as processes on
different machines would; so no process ever reads a file another process wrote, and each computes its
reference log-probs itself (before the model is sharded).
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from conftest import interrupt_fit, make_tiny_gpt2  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from train_data import tiny_pairs  # noqa: E402

from alignkit.data import collate_preference, collate_sft, collate_unpaired  # noqa: E402
from alignkit.data.kway import KWayExample, collate_kway, tokenize_kway  # noqa: E402
from alignkit.data.unpaired_sources import assign_mismatched_prompts, split_pair_items  # noqa: E402
from alignkit.losses import KWAY, UNPAIRED, build_objective  # noqa: E402
from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer  # noqa: E402
from alignkit.models.logps import LogpsOptions  # noqa: E402
from alignkit.models.reference import AdaptersOffReference, CachedReference, FrozenCopyReference  # noqa: E402
from alignkit.models.reference_cache import ReferenceLogpsCache, cache_key  # noqa: E402
from alignkit.peft import adapters_disabled, apply_adapter  # noqa: E402
from alignkit.peft.config import parse_adapter_config  # noqa: E402
from alignkit.train.config import DistributedConfig, MixedPrecisionConfig, TrainConfig  # noqa: E402
from alignkit.train.distributed import DistEnv, init_distributed  # noqa: E402
from alignkit.train.sharding import gather_trainable_state, is_sharded, shard_model  # noqa: E402
from alignkit.train.trainer import Trainer  # noqa: E402

DEVICE = torch.device("cpu")


class Stopped(Exception):
    """Raised in place of step ``stop_after``: the run is "killed" there."""


def _reward_model() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    cfg = GPT2Config(n_positions=256, n_embd=32, n_layer=2, n_head=2, num_labels=1, pad_token_id=50256,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2ForSequenceClassification(cfg).eval()


def _unpaired(pairs: list[Any], seed: int) -> list[Any]:
    return assign_mismatched_prompts(split_pair_items(pairs), max_length=64, seed=seed)


def _kway_items(tokenizer: Any, n: int) -> list[Any]:
    examples = [KWayExample(prompt=f"\n\nHuman: Rank these ({i}).\n\nAssistant:",
                            responses=[" Yes." * (1 + i % 2), " Sure, gladly.", " No.",
                                       " Maybe later" * (1 + i % 3)],
                            best=i % 4) for i in range(n)]
    items, _ = tokenize_kway(examples, tokenizer, max_length=64, max_prompt_length=32)
    return items


def _model(case: dict[str, Any], objective: Any) -> torch.nn.Module:
    model = _reward_model() if objective.inputs.reward_model else make_tiny_gpt2(seed=0)
    kind = case.get("adapter", "none")
    if kind == "lora":
        apply_adapter(model, parse_adapter_config({"kind": "lora", "r": 4, "alpha": 8}))
    elif kind == "bottleneck":
        apply_adapter(model, parse_adapter_config({"kind": "bottleneck", "bottleneck_size": 8}))
    return model


def _cached_reference(case: dict[str, Any], model: torch.nn.Module, pairs: list[Any], collate: Any,
                      info: dict[str, Any]) -> CachedReference:
    if not os.environ.get("ALIGNKIT_CACHE"):
        raise SystemExit("reference: cached needs $ALIGNKIT_CACHE (tests never write into the user's cache)")
    model_id = f"tiny-{case['loss']['name']}"
    autocast = torch.bfloat16 if case.get("precision", "fp32") == "bf16" else None  # the training forward's
    key = cache_key(model_id, model, pairs, autocast_dtype=autocast)
    path = ReferenceLogpsCache.path_for(key)
    info["cache_existed"] = path.exists()  # a fresh folder: False, this process computes its own values
    cache = ReferenceLogpsCache.build(model, pairs, collate, 4, model_id, progress=False, autocast_dtype=autocast)
    info["cache_file"] = str(cache.path)
    return CachedReference(cache)


def _reference(case, objective, model, pairs, collate, cfg, env, info):
    if not objective.needs_reference:
        return None
    mode = case.get("reference", "copy")
    if mode == "adapters_off":
        return AdaptersOffReference(model, adapters_disabled)
    if mode == "cached":
        return _cached_reference(case, model, pairs, collate, info)
    copy = make_tiny_gpt2(seed=0).requires_grad_(False)
    if cfg is not None:
        shard_model(copy, cfg, env, DEVICE, trainable=False)
    return FrozenCopyReference(copy, copy=False)


def _diverge(model: torch.nn.Module, env: DistEnv) -> None:
    """Other processes than the main start from other trainable weights (as a randomly initialised adapter or
    head may): the trainer (ddp) or shard_model (fsdp) must give every process the main process's. The
    frozen weights, which every process loads alike, and the reference stay as they are."""
    if env.rank == 0:
        return
    generator = torch.Generator().manual_seed(env.rank)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator), alpha=0.01)


def _shard_info(model: torch.nn.Module) -> dict[str, Any]:
    """How much of the trainable weights this process holds (1.0 unsharded; about 1/world sharded)."""
    params = [p for p in model.parameters() if p.requires_grad]
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)
    full = sum(p.numel() for p in params)
    return {"sharded": is_sharded(model), "all_dtensor": all(isinstance(p, DTensor) for p in params),
            "local_fraction": local / full}


def _watch_sharding(trainer: Trainer, info: dict[str, Any]) -> None:
    """Record :func:`_shard_info` after every optimizer step and every evaluation of ``trainer``'s fit:
    sharded, each process must hold only its shards again once a forward (evaluation: no backward follows)
    or a step is done."""
    info["after_step"], info["after_eval"] = [], []

    def watched(fn: Any, into: list[dict[str, Any]]) -> Any:
        def call(*args: Any) -> Any:
            out = fn(*args)
            into.append(_shard_info(trainer.model))
            return out
        return call

    trainer.train_step = watched(trainer.train_step, info["after_step"])
    trainer.evaluate = watched(trainer.evaluate, info["after_eval"])


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_case(case: dict[str, Any], out: Path, env: DistEnv, tokenizer: Any) -> None:
    torch.manual_seed(0)
    objective = build_objective(case["loss"])
    pad = tokenizer.pad_token_id
    if objective.inputs is KWAY:
        pairs, collate = _kway_items(tokenizer, 16), partial(collate_kway, pad_token_id=pad)
    elif objective.inputs is UNPAIRED:  # each pair -> a desirable and an undesirable example, as a run splits them
        tiny = tiny_pairs(tokenizer, 16)
        pairs = [*_unpaired(tiny[:12], seed=0), *_unpaired(tiny[12:], seed=1)]
        collate = partial(collate_unpaired, pad_token_id=pad)
    else:
        pairs = tiny_pairs(tokenizer, 16)
        collate = partial(collate_sft if case["loss"].get("name") == "sft" else collate_preference,
                          pad_token_id=pad)
    folder = out / case["name"]
    folder.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"world_size": env.world_size}
    model = _model(case, objective)
    if not env.enabled and not case.get("resume"):
        initial = {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(initial, str(folder / "initial.safetensors"))
    strategy = case.get("strategy", "ddp")
    # mixed_precision: FSDP's own (weights gathered in bf16, gradients reduced in fp32), as a bf16 run sets it
    mixed = MixedPrecisionConfig(param_dtype="bfloat16", reduce_dtype="float32") if case.get("mixed_precision") else None
    cfg = DistributedConfig(strategy="fsdp", mixed_precision=mixed) if strategy == "fsdp" and env.enabled else None
    preference_collate = partial(collate_preference, pad_token_id=pad)
    reference = _reference(case, objective, model, pairs, preference_collate, cfg, env, info)
    _diverge(model, env)
    if cfg is not None:
        shard_model(model, cfg, env, DEVICE)
    steps = case.get("steps", 3)
    train = TrainConfig(lr=case.get("lr", 1e-3), batch_size=case.get("batch_size", 4),
                        grad_accum=case.get("grad_accum", 1), max_steps=steps, device="cpu", eval_every=1,
                        precision=case.get("precision", "fp32"),
                        # step checkpoints only where a run is stopped or resumed (the last step saves anyway)
                        save_every=1 if case.get("stop_after") is not None or case.get("resume") else None)
    run_dir = Path(case.get("run_dir") or folder / "run")
    n_train = 24 if objective.inputs is UNPAIRED else 12  # the first 12 pairs train, split or not
    trainer = Trainer(model, objective, train, train_pairs=pairs[:n_train], eval_pairs=pairs[n_train:], collate=collate,
                      run_dir=run_dir, reference=reference, env=env, stage="equivalence",
                      logps=LogpsOptions(padding_free=case.get("padding_free", True)))
    _watch_sharding(trainer, info)
    info["autocast"] = str(trainer.autocast_dtype)
    stop_after = case.get("stop_after")
    if stop_after is not None:
        # The trainer knows the run's full length (the LR schedule depends on it); it dies at step stop_after.
        interrupt_fit(trainer, stop_after, Stopped)
        info["stopped_at"] = stop_after
    else:
        result = trainer.fit(resume=bool(case.get("resume")))
        info["resumed_at"] = result.resumed_at
    info.update(_shard_info(model))
    (folder / f"rank{env.rank}.json").write_text(json.dumps(info))
    if stop_after is not None:
        return
    weights = gather_trainable_state(model) if is_sharded(model) else {
        n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    if env.is_main:
        records = _records(run_dir / "metrics.jsonl")
        train_records = [r for r in records if "loss" in r]
        (folder / "losses.json").write_text(json.dumps({
            "train": [r["loss"] for r in train_records],
            "train_steps": [r["step"] for r in train_records],
            "grad_norm": [r["grad_norm"] for r in train_records],
            "learning_rate": [r["learning_rate"] for r in train_records],
            "eval": [r["eval/loss"] for r in records if "eval/loss" in r],
            "eval_steps": [r["step"] for r in records if "eval/loss" in r],
            "resumed_at": info["resumed_at"],
        }))
        save_file({n: t.contiguous() for n, t in weights.items()}, str(folder / "weights.safetensors"))


def main(out: Path, cases: list[dict[str, Any]]) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    env = init_distributed(DEVICE)
    if os.environ.get("ALIGNKIT_CACHE"):  # one cache folder a process: none reads what another wrote
        os.environ["ALIGNKIT_CACHE"] = str(Path(os.environ["ALIGNKIT_CACHE"]) / f"rank{env.rank}")
    tokenizer = offline_gpt2_tokenizer()
    for case in cases:
        start = time.perf_counter()
        run_case(case, out, env, tokenizer)
        if env.is_main:
            print(f"case {case['name']}: {time.perf_counter() - start:.2f}s", file=sys.stderr, flush=True)
    if env.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
