"""The online trainer on the shared fit loop: an interrupted run resumes to the uninterrupted one, exactly."""

from __future__ import annotations

import json

import torch
from conftest import interrupt_fit, make_tiny_gpt2

from alignkit.online.anchor import EMAAnchor
from alignkit.online.config import OnlineConfig, OnlineTrainConfig
from alignkit.online.kl_control import AdaptiveKLController
from alignkit.online.trainer import OnlineTrainer


def _score(prompts: list[str], texts: list[str]) -> list[float]:
    return [t.count("e") / max(1, len(t)) for t in texts]


def _trainer(run_dir, tokenizer) -> OnlineTrainer:
    policy = make_tiny_gpt2()
    cfg = OnlineConfig(reward="vader_sentiment", samples_per_prompt=2, max_new_tokens=4, beta=0.1)
    train_cfg = OnlineTrainConfig(lr=1e-3, prompts_per_step=1, max_steps=4, save_every=1)
    return OnlineTrainer(policy, tokenizer, _score, cfg, train_cfg, prompts=["The day", "A cat", "In the sea"],
                         anchor=EMAAnchor(policy, 0.5), controller=AdaptiveKLController(0.1, 0.5), run_dir=run_dir)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, gpt2_tokenizer):
    full = _trainer(tmp_path / "full", gpt2_tokenizer)
    expected = full.fit()
    cut = _trainer(tmp_path / "cut", gpt2_tokenizer)
    interrupt_fit(cut, at_step=2)
    resumed = _trainer(tmp_path / "cut", gpt2_tokenizer)
    result = resumed.fit(resume=True)

    assert result.resumed_at == 2 and result.steps == 4
    drop = ("step_seconds",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in result.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in expected.history]
    for a, b in zip(full.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    for name, tensor in full.anchor.tensors.items():
        assert torch.equal(tensor, resumed.anchor.tensors[name])
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    assert (tmp_path / "cut" / "checkpoints" / "step-0000004" / "anchor.safetensors").is_file()
    assert result.summary().steps_per_second is not None
