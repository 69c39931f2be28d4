"""What the PPO and GRPO tests share: a tiny GPT-2 and a reward it learns in a few updates, direct trainers.

The end-to-end runs reuse test_online_e2e's task: the reward is the fraction of " the" tokens, on a tiny GPT-2
whose " the" starts at a few percent (see ``_tiny_model_folder`` there), so a handful of updates lift it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from conftest import interrupt_fit, make_tiny_gpt2
from safetensors.torch import load_file
from test_online_e2e import REWARD, _recipe  # noqa: F401 - registers the reward too

from alignkit.online.anchor import EMAAnchor, FrozenAnchor
from alignkit.online.config import OnlineConfig, OnlineTrainConfig
from alignkit.online.kl_control import AdaptiveKLController, FixedKLController
from alignkit.online.trainer import OnlineTrainer

PROMPTS = ["The day", "A cat", "In the sea", "My house"]


def score_e(prompts: list[str], texts: list[str]) -> list[float]:
    """A cheap reward for the direct trainers: the share of the letter e."""
    return [t.count("e") / max(1, len(t)) for t in texts]


def direct_trainer(run_dir: Path, tokenizer, online: dict[str, Any], *, max_steps: int = 3, save_every: int = 1,
                   policy=None, schedule: str = "constant", ema: bool = True, score=score_e) -> OnlineTrainer:
    """A trainer on a fresh tiny GPT-2 (or ``policy``): 2 prompts x 2 samples per step, micro-batches of 1, an
    EMA anchor and an adaptive beta (so the anchor, beta and the initial-model KL all take part; ``online`` may
    set another ``kl_control``)."""
    policy = policy if policy is not None else make_tiny_gpt2()
    settings = {"kl_control": {"kind": "adaptive", "target": 0.5}, **online}
    cfg = OnlineConfig(reward="vader_sentiment", samples_per_prompt=2, max_new_tokens=4, beta=0.1,
                       update_batch_size=1, **settings)
    train_cfg = OnlineTrainConfig(lr=1e-3, prompts_per_step=2, max_steps=max_steps, save_every=save_every,
                                  schedule=schedule)
    anchor = EMAAnchor(policy, 0.5) if ema else FrozenAnchor(policy)
    initial = FrozenAnchor(policy).model_context if ema else None
    return OnlineTrainer(policy, tokenizer, score, cfg, train_cfg, prompts=PROMPTS, anchor=anchor,
                         controller=AdaptiveKLController(0.1, 0.5) if cfg.kl_control.kind == "adaptive"
                         else FixedKLController(0.1), run_dir=run_dir, initial=initial)


def without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k != "step_seconds"} for h in history]


def value_tensors(trainer: OnlineTrainer) -> dict[str, torch.Tensor]:
    assert trainer.value is not None
    return {n: p.detach().clone() for n, p in trainer.value.named_parameters() if p.requires_grad}


def resumed_like_uninterrupted(tmp_path: Path, tokenizer, online: dict[str, Any]
                               ) -> tuple[OnlineTrainer, OnlineTrainer]:
    """Run 3 steps straight, and 2 steps + a kill + a resume; check that the resumed run's history, policy and
    anchor equal the uninterrupted run's. Returns (uninterrupted, resumed) for checks of their own."""
    full = direct_trainer(tmp_path / "full", tokenizer, online)
    expected = full.fit()
    interrupt_fit(direct_trainer(tmp_path / "cut", tokenizer, online), at_step=2)
    resumed = direct_trainer(tmp_path / "cut", tokenizer, online)
    result = resumed.fit(resume=True)
    assert result.resumed_at == 2 and result.steps == 3
    assert without_timing(result.history) == without_timing(expected.history)
    for a, b in zip(full.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    for name, tensor in full.anchor.tensors.items():
        assert torch.equal(tensor, resumed.anchor.tensors[name]), name
    return full, resumed


def saved_model_tensor_names(model_dir: Path) -> set[str]:
    """Every tensor name in the safetensors files of a saved ``model/`` folder."""
    return {name for f in model_dir.glob("*.safetensors") for name in load_file(str(f))}
