"""Run by test_equivalence, alone or under torchrun: a few optimizer steps of each case; save what they did.

argv: an output folder, then a JSON list of cases. A case is a dict:
    name: a label (the output subfolder); loss: the recipe's loss section; strategy: "ddp" or "fsdp";
    grad_accum (1); adapter: "none" | "lora" | "bottleneck"; reference: "copy" | "adapters_off" | "cached";
    padding_free (true); steps (3); batch_size (4); resume_at: train that many steps, save, then train on
    from the checkpoint with a new trainer (as a resumed run does).
For each case the main process writes <out>/<name>/losses.json (per-step loss) and weights.safetensors (the
trainable weights after the last step, full tensors).
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from conftest import make_tiny_gpt2  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from train_data import tiny_pairs  # noqa: E402

from alignkit.data import collate_preference, collate_sft  # noqa: E402
from alignkit.data.kway import KWayExample, collate_kway, tokenize_kway  # noqa: E402
from alignkit.losses import build_objective  # noqa: E402
from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer  # noqa: E402
from alignkit.models.logps import LogpsOptions  # noqa: E402
from alignkit.models.reference import AdaptersOffReference, CachedReference, FrozenCopyReference  # noqa: E402
from alignkit.models.reference_cache import ReferenceLogpsCache  # noqa: E402
from alignkit.peft import adapters_disabled, apply_adapter  # noqa: E402
from alignkit.peft.config import parse_adapter_config  # noqa: E402
from alignkit.train.config import DistributedConfig, TrainConfig  # noqa: E402
from alignkit.train.distributed import DistEnv, init_distributed  # noqa: E402
from alignkit.train.sharding import gather_trainable_state, is_sharded, shard_model  # noqa: E402
from alignkit.train.trainer import Trainer  # noqa: E402

DEVICE = torch.device("cpu")


def _reward_model() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    cfg = GPT2Config(n_positions=256, n_embd=32, n_layer=2, n_head=2, num_labels=1, pad_token_id=50256,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2ForSequenceClassification(cfg).eval()


def _kway_items(tokenizer: Any, n: int) -> list[Any]:
    examples = [KWayExample(prompt=f"\n\nHuman: Rank these ({i}).\n\nAssistant:",
                            responses=[" Yes." * (1 + i % 2), " Sure, gladly.", " No.", " Maybe later" * (1 + i % 3)],
                            best=i % 4) for i in range(n)]
    items, _ = tokenize_kway(examples, tokenizer, max_length=64, max_prompt_length=32)
    return items


def _model(case: dict[str, Any], objective: Any) -> torch.nn.Module:
    model = _reward_model() if objective.inputs in ("scores", "kway") else make_tiny_gpt2(seed=0)
    kind = case.get("adapter", "none")
    if kind == "lora":
        apply_adapter(model, parse_adapter_config({"kind": "lora", "r": 4, "alpha": 8}))
    elif kind == "bottleneck":
        apply_adapter(model, parse_adapter_config({"kind": "bottleneck", "bottleneck_size": 8}))
    return model


def _reference(case, objective, model, pairs, collate, cfg, env):
    if not objective.needs_reference:
        return None
    mode = case.get("reference", "copy")
    if mode == "adapters_off":
        return AdaptersOffReference(model, adapters_disabled)
    if mode == "cached":
        cache = ReferenceLogpsCache.build(model, pairs, collate, 4, f"tiny-{case['name']}", progress=False)
        return CachedReference(cache)
    copy = make_tiny_gpt2(seed=0).requires_grad_(False)
    if cfg is not None:
        shard_model(copy, cfg, env, DEVICE, trainable=False)
    return FrozenCopyReference(copy, copy=False)


def run_case(case: dict[str, Any], out: Path, env: DistEnv, tokenizer: Any) -> None:
    torch.manual_seed(0)
    objective = build_objective(case["loss"])
    pad = tokenizer.pad_token_id
    if objective.inputs == "kway":
        pairs, collate = _kway_items(tokenizer, 16), partial(collate_kway, pad_token_id=pad)
    else:
        pairs = tiny_pairs(tokenizer, 16)
        collate = partial(collate_sft if case["loss"].get("name") == "sft" else collate_preference, pad_token_id=pad)
    model = _model(case, objective)
    strategy = case.get("strategy", "ddp")
    cfg = DistributedConfig(strategy="fsdp") if strategy == "fsdp" and env.enabled else None
    reference = _reference(case, objective, model, pairs, partial(collate_preference, pad_token_id=pad), cfg, env)
    if cfg is not None:
        shard_model(model, cfg, env, DEVICE)
    train = TrainConfig(lr=1e-3, batch_size=case.get("batch_size", 4), grad_accum=case.get("grad_accum", 1),
                        max_steps=case.get("steps", 3), device="cpu", eval_every=1, save_every=1)
    folder = out / case["name"]
    logps = LogpsOptions(padding_free=case.get("padding_free", True))

    def trainer(steps: int) -> Trainer:
        return Trainer(model, objective, train.model_copy(update={"max_steps": steps}), train_pairs=pairs[:12],
                       eval_pairs=pairs[12:], collate=collate, run_dir=folder / "run", reference=reference, env=env,
                       stage=case["name"], logps=logps)

    resume_at = case.get("resume_at")
    if resume_at:
        trainer(resume_at).fit()
    trainer(train.max_steps or 3).fit(resume=bool(resume_at))
    weights = gather_trainable_state(model) if is_sharded(model) else {
        n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    if env.is_main:
        records = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
        (folder / "losses.json").write_text(json.dumps({
            "train": [r["loss"] for r in records if "loss" in r],
            "eval": [r["eval/loss"] for r in records if "eval/loss" in r],
        }))
        save_file({n: t.contiguous() for n, t in weights.items()}, str(folder / "weights.safetensors"))


def main(out: Path, cases: list[dict[str, Any]]) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    env = init_distributed(DEVICE)
    tokenizer = offline_gpt2_tokenizer()
    for case in cases:
        run_case(case, out, env, tokenizer)
    if env.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
