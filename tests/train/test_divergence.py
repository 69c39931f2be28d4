"""A diverging run stops with a clear error and never stores a non-finite value (offline, online, CLI)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_gpt2
from safetensors.torch import load_file
from train_data import tiny_pairs, tiny_recipe

from alignkit.data import collate_preference
from alignkit.losses import build_objective
from alignkit.models.reference import FrozenCopyReference
from alignkit.train.config import TrainConfig
from alignkit.train.divergence import TrainingDivergedError
from alignkit.train.trainer import Trainer

# Finite, so no recipe check rejects it, but float32 AdamW turns it into inf * 0 = NaN in the first update.
HUGE_LR = 1e39


def _trainer(run_dir: Path, tokenizer, **cfg) -> Trainer:
    pairs = tiny_pairs(tokenizer, 12)
    model = make_tiny_gpt2()
    cfg = TrainConfig(**{"lr": 1e-3, "batch_size": 4, "max_steps": 3, "precision": "fp32", **cfg})  # fp32 AdamW overflow
    return Trainer(model, build_objective({"name": "dpo", "beta": 0.5}), cfg, train_pairs=pairs[:8],
                   eval_pairs=pairs[8:], collate=partial(collate_preference, pad_token_id=tokenizer.pad_token_id),
                   run_dir=run_dir, reference=FrozenCopyReference(model), stage="preference")


def _stored_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under ``folder`` (checkpoints, best, model)."""
    return {f"{path}:{name}": t for path in folder.rglob("*.safetensors") for name, t in load_file(str(path)).items()}


def _assert_all_finite(folder: Path) -> None:
    bad = [name for name, t in _stored_tensors(folder).items() if t.is_floating_point() and not torch.isfinite(t).all()]
    assert not bad, bad[:3]


def test_huge_learning_rate_stops_before_a_non_finite_checkpoint(tmp_path, gpt2_tokenizer):
    """Before: step 1's NaN weights were saved as step-0000001 and as best, then a FloatingPointError traceback."""
    trainer = _trainer(tmp_path, gpt2_tokenizer, lr=HUGE_LR, eval_every=1, save_every=1)
    with pytest.raises(TrainingDivergedError) as err:
        trainer.fit()
    assert isinstance(err.value, ValueError)
    assert (err.value.stage, err.value.step) == ("preference", 1)
    assert "non-finite" in str(err.value) and "Lower train.lr (now 1e+39)" in str(err.value)
    _assert_all_finite(tmp_path)
    assert not list((tmp_path / "checkpoints").glob("step-*"))
    assert not (tmp_path / "checkpoints" / "best").exists()


def test_non_finite_gradient_norm_stops_before_the_optimizer_step(tmp_path, gpt2_tokenizer):
    """A finite loss with an infinite gradient: the weights stay as they were, nothing is saved."""
    trainer = _trainer(tmp_path, gpt2_tokenizer, save_every=1)
    first = next(trainer.model.parameters())
    before = first.detach().clone()
    first.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(TrainingDivergedError, match="non-finite grad_norm at step 1") as err:
        trainer.fit()
    assert err.value.metric == "grad_norm"
    assert torch.equal(first.detach(), before)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_divergence_after_good_steps_keeps_the_good_checkpoint(tmp_path, gpt2_tokenizer):
    trainer = _trainer(tmp_path, gpt2_tokenizer, save_every=1)
    original = trainer.train_step

    def diverging_step(step: int) -> dict[str, float]:
        if step == 2:
            trainer.optimizer.param_groups[0]["lr"] = HUGE_LR
        return original(step)

    trainer.train_step = diverging_step
    with pytest.raises(TrainingDivergedError, match="non-finite weights at step 3"):
        trainer.fit()
    _assert_all_finite(tmp_path)
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-0000002"


def test_cli_reports_divergence_as_a_message_and_resume_does_the_same(tmp_path, capsys):
    """Before: exit by traceback, with NaN checkpoints on disk; --resume failed the same way."""
    from alignkit.cli import main

    recipe = tiny_recipe(tmp_path)
    args = ["run", recipe, f"train.lr={HUGE_LR}", "train.eval_every=1", "train.save_every=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "preference: non-finite" in err and "train.lr" in err and "Traceback" not in err
    _assert_all_finite(tmp_path / "run")
    assert main([*args, "--resume"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    _assert_all_finite(tmp_path / "run")


def test_online_divergence_stops_without_a_checkpoint(tmp_path, tiny_gpt2, gpt2_tokenizer):
    from alignkit.online.anchor import FrozenAnchor
    from alignkit.online.config import OnlineConfig, OnlineTrainConfig
    from alignkit.online.kl_control import FixedKLController
    from alignkit.online.trainer import OnlineTrainer

    cfg = OnlineConfig(reward="vader_sentiment", samples_per_prompt=2, max_new_tokens=3)
    train_cfg = OnlineTrainConfig(lr=HUGE_LR, prompts_per_step=1, max_steps=2, save_every=1)
    trainer = OnlineTrainer(tiny_gpt2, gpt2_tokenizer, lambda prompts, texts: [float(len(t)) for t in texts], cfg,
                            train_cfg, prompts=["The day", "A cat"], anchor=FrozenAnchor(tiny_gpt2),
                            controller=FixedKLController(0.1), run_dir=tmp_path, stage="online")
    with pytest.raises(TrainingDivergedError, match="online: non-finite weights at step 1"):
        trainer.fit()
    _assert_all_finite(tmp_path)
    assert not list((tmp_path / "checkpoints").glob("step-*"))


def test_online_non_finite_reward_names_the_reward(tmp_path, tiny_gpt2, gpt2_tokenizer):
    from alignkit.online.anchor import FrozenAnchor
    from alignkit.online.config import OnlineConfig, OnlineTrainConfig
    from alignkit.online.kl_control import FixedKLController
    from alignkit.online.trainer import OnlineTrainer

    cfg = OnlineConfig(reward="vader_sentiment", samples_per_prompt=2, max_new_tokens=3)
    trainer = OnlineTrainer(tiny_gpt2, gpt2_tokenizer, lambda prompts, texts: [float("nan")] * len(texts), cfg,
                            OnlineTrainConfig(prompts_per_step=1, max_steps=1), prompts=["The day"],
                            anchor=FrozenAnchor(tiny_gpt2), controller=FixedKLController(0.1), run_dir=tmp_path)
    with pytest.raises(TrainingDivergedError, match="non-finite reward at step 1.*reward function"):
        trainer.fit()


def test_the_hint_names_the_recipe_section_of_the_stage():
    from alignkit.train.config import SFTConfig
    from alignkit.train.trainer import divergence_hint

    assert divergence_hint("sft", SFTConfig(lr=3.0)).startswith("Lower sft.lr (now 3)")
    assert "train.max_grad_norm" in divergence_hint("train", TrainConfig(max_grad_norm=None))


def test_a_non_finite_held_out_metric_stops_before_it_is_logged(tmp_path, gpt2_tokenizer, monkeypatch):
    """Before: the held-out record with NaN went to metrics.jsonl, and only then did the guard stop the run."""
    trainer = _trainer(tmp_path, gpt2_tokenizer, max_steps=2, eval_every=1)
    evaluate, calls = trainer.evaluate, []

    def nan_after_the_first() -> dict[str, float]:
        calls.append(1)
        metrics = evaluate()
        return {**metrics, "eval/rewards/margins": float("nan")} if len(calls) > 1 else metrics

    monkeypatch.setattr(trainer, "evaluate", nan_after_the_first)
    with pytest.raises(TrainingDivergedError, match="non-finite eval/rewards/margins at step 1"):
        trainer.fit()
    log = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in log and "Infinity" not in log
    assert '"eval/loss"' in log  # the step-0 evaluation, which was finite, is there
