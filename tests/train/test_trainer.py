"""The shared trainer: exact gradient accumulation, schedules, resume, early stopping, non-finite guard."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from conftest import interrupt_fit, make_tiny_gpt2
from train_data import tiny_pairs

from alignkit.data import collate_preference
from alignkit.losses import build_objective
from alignkit.models.reference import FrozenCopyReference
from alignkit.train.config import EarlyStoppingConfig, TrainConfig
from alignkit.train.schedule import lr_multiplier
from alignkit.train.trainer import Trainer


def _trainer(tmp_path, pairs, tokenizer, *, seed=0, eval_pairs=(), objective=None, **cfg):
    model = make_tiny_gpt2(seed=seed)
    objective = objective or build_objective({"name": "dpo", "beta": 0.5})
    # fp32 pinned: these tests compare gradients and runs to float rounding (bf16 has its own tier)
    cfg = TrainConfig(**{"lr": 1e-3, "batch_size": 4, "max_steps": 3, "precision": "fp32", **cfg})
    return Trainer(model, objective, cfg, train_pairs=pairs, eval_pairs=list(eval_pairs),
                   collate=partial(collate_preference, pad_token_id=tokenizer.pad_token_id), run_dir=tmp_path,
                   reference=FrozenCopyReference(model), seed=seed, stage="preference")


def _grads(trainer: Trainer) -> list[torch.Tensor]:
    trainer.accumulate_gradients(0)
    return [p.grad.clone() for p in trainer.params]


def test_gradient_accumulation_is_exact(tmp_path, gpt2_tokenizer):
    """batch 4 x accumulation 1 gives the same gradient as batch 1 x accumulation 4 (mean over the step)."""
    pairs = tiny_pairs(gpt2_tokenizer, 8)
    one = _grads(_trainer(tmp_path / "a", pairs, gpt2_tokenizer, batch_size=4, grad_accum=1))
    four = _grads(_trainer(tmp_path / "b", pairs, gpt2_tokenizer, batch_size=4, grad_accum=4))
    assert len(one) == len(four)
    for a, b in zip(one, four, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in one)


def test_example_weights_scale_the_loss(tmp_path, gpt2_tokenizer):
    """Doubling every weight leaves the weighted mean unchanged; zeroing one example removes its gradient."""
    pairs = tiny_pairs(gpt2_tokenizer, 4)
    base = _grads(_trainer(tmp_path / "a", pairs, gpt2_tokenizer))
    doubled = [p.__class__(**{**p.__dict__, "weight": 2.0}) for p in pairs]
    same = _grads(_trainer(tmp_path / "b", doubled, gpt2_tokenizer))
    for a, b in zip(base, same, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    zeroed = [p.__class__(**{**p.__dict__, "weight": 0.0 if i else 1.0}) for i, p in enumerate(pairs)]
    only_first = _grads(_trainer(tmp_path / "c", zeroed, gpt2_tokenizer))
    alone = _grads(_trainer(tmp_path / "d", [pairs[0]] * 4, gpt2_tokenizer))
    for a, b in zip(only_first, alone, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_schedule_shapes():
    kw = {"warmup_steps": 2, "total_steps": 6}
    assert [lr_multiplier(s, schedule="linear", **kw) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert lr_multiplier(2, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_multiplier(4, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_multiplier(5, schedule="constant", **kw) == 1.0


def test_training_lowers_the_loss_and_logs(tmp_path, gpt2_tokenizer):
    pairs = tiny_pairs(gpt2_tokenizer, 16)
    trainer = _trainer(tmp_path, pairs[:12], gpt2_tokenizer, eval_pairs=pairs[12:], max_steps=12, eval_every=6)
    result = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in evals] == [0, 6, 12]
    assert evals[0]["eval/loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference: DPO = log 2
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm",
                "learning_rate", "tokens_per_second"):
        assert key in train[0]
    assert result.steps == 12 and (tmp_path / "checkpoints" / "best").is_dir()


def test_resume_after_interruption_reproduces_metrics(tmp_path, gpt2_tokenizer):
    """Kill after step 4 of 8, resume: the metrics equal those of the uninterrupted run."""
    pairs = tiny_pairs(gpt2_tokenizer, 12)
    full = _trainer(tmp_path / "full", pairs, gpt2_tokenizer, max_steps=8, save_every=2)
    full.fit()

    class Interrupt(Exception):
        pass

    broken = _trainer(tmp_path / "cut", pairs, gpt2_tokenizer, max_steps=8, save_every=2)
    interrupt_fit(broken, at_step=5, error=Interrupt)
    resumed = _trainer(tmp_path / "cut", pairs, gpt2_tokenizer, max_steps=8, save_every=2, seed=0)
    resumed.fit(resume=True)

    def losses(path):
        return [(r["step"], r["loss"]) for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())
                if "loss" in r]

    expected, got = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert [s for s, _ in got] == list(range(1, 9))
    for (s1, a), (s2, b) in zip(expected, got, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_early_stopping(tmp_path, gpt2_tokenizer):
    pairs = tiny_pairs(gpt2_tokenizer, 12)
    # A metric that cannot improve under maximisation with patience 1: stop after the second evaluation.
    trainer = _trainer(tmp_path, pairs[:8], gpt2_tokenizer, eval_pairs=pairs[8:], max_steps=20, eval_every=1,
                       lr=1e-3, early_stopping=EarlyStoppingConfig(metric="eval/loss", mode="max", patience=1))
    result = trainer.fit()
    assert result.stopped_early and result.steps < 20


def test_non_finite_loss_stops_with_a_message(tmp_path, gpt2_tokenizer):
    pairs = tiny_pairs(gpt2_tokenizer, 4)
    trainer = _trainer(tmp_path, pairs, gpt2_tokenizer)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite loss at step 1"):
        trainer.fit()
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").glob("step-*"))


def test_adamw_is_fused_on_cpu_and_steps_like_the_reference_implementation():
    from alignkit.train.config import OptimizerConfig
    from alignkit.train.trainer import make_optimizer

    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    plain = [torch.nn.Parameter(t.clone()) for t in start]
    cfg = OptimizerConfig(lr=0.1, weight_decay=0.01)
    opt = make_optimizer(ours, cfg)
    assert opt.defaults["fused"] is True
    ref = torch.optim.AdamW(plain, lr=0.1, weight_decay=0.01, foreach=False)
    for step in range(3):
        for params, o in ((ours, opt), (plain, ref)):
            o.zero_grad()
            sum(((p - step) ** 2).sum() for p in params).backward()
            o.step()
    for a, b in zip(ours, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_fewer_held_out_pairs_than_processes_is_refused_at_set_up(tmp_path, gpt2_tokenizer):
    """Before: the process with no held-out pair all-reduced a tensor of another shape and hung."""
    from alignkit.data import collate_preference as collate
    from alignkit.train.distributed import DistEnv

    pairs = tiny_pairs(gpt2_tokenizer, 5)
    with pytest.raises(ValueError, match="1 held-out examples are fewer than the 2 processes.*"
                                         "train.max_eval_examples or data.test_size"):
        Trainer(make_tiny_gpt2(), build_objective({"name": "sft"}), TrainConfig(lr=1e-3, batch_size=4, max_steps=1, precision="fp32"),
                train_pairs=pairs[:4], eval_pairs=pairs[4:], collate=partial(collate, pad_token_id=0),
                run_dir=tmp_path, env=DistEnv(rank=1, world_size=2))
