"""GRPO on the online trainer: the reward rises, the KL as a loss term or a reward penalty, Dr. GRPO, ratio 1 on
the first iteration, resume, adapters, WARP over GRPO runs, and bad settings refused."""

from __future__ import annotations

import pytest
from tiny_online import _recipe, direct_trainer, resumed_like_uninterrupted

from alignkit.commands.online import run_online_recipe
from alignkit.online.config import OnlineConfig
from alignkit.recipe import RecipeError


def test_grpo_reward_rises(tmp_path):
    summary = run_online_recipe(_recipe(tmp_path, "eval=null", "train.max_steps=8", "online.algorithm=grpo",
                                        "online.grpo={iterations: 2}"))
    history = summary.results["online"].history
    first = sum(h["reward"] for h in history[:3]) / 3
    last = sum(h["reward"] for h in history[-4:]) / 4
    assert last > first + 0.25, (first, last)
    for key in ("approx_kl", "clip_fraction", "ratio_mean", "k3_kl", "token_entropy", "policy_loss", "reward", "kl"):
        assert key in history[-1], key
    assert all(h["optimizer_steps"] == 2 for h in history)
    assert summary.report["method"] == "grpo"
    assert summary.report["objective"] == "grpo(k=4, beta=0.01, anchor=initial, iterations=2, kl=loss)"
    assert not (tmp_path / "run" / "online" / "checkpoints" / "step-0000008" / "value.safetensors").exists()


def test_kl_as_a_loss_term_or_a_reward_penalty(tmp_path, gpt2_tokenizer):
    loss = direct_trainer(tmp_path / "loss", gpt2_tokenizer, {"algorithm": "grpo", "grpo": {"iterations": 2}},
                          max_steps=2, save_every=None).fit().history
    # kl: loss: the reward is not penalised; the k3 term is weighed by the (adaptive) beta, which is logged.
    assert all(h["penalised_reward"] == h["reward"] for h in loss)
    assert loss[1]["k3_kl"] > 0 and loss[0]["beta"] == pytest.approx(0.1) and loss[1]["beta"] != loss[0]["beta"]
    reward = direct_trainer(tmp_path / "reward", gpt2_tokenizer,
                            {"algorithm": "grpo", "grpo": {"kl": "reward", "scale_rewards": False,
                                                           "length_normalise": False}},
                            max_steps=2, save_every=None).fit().history
    # kl: reward: r - beta KL, as RLOO penalises (the first step's samples are the same in both runs).
    assert reward[0]["reward"] == loss[0]["reward"]
    assert reward[1]["penalised_reward"] == pytest.approx(reward[1]["reward"] - reward[1]["beta"] * reward[1]["kl_anchor"],
                                                          abs=1e-6)
    assert reward[1]["penalised_reward"] != reward[1]["reward"]


def test_a_fixed_kl_coef_weighs_the_k3_term(tmp_path, gpt2_tokenizer):
    online = {"algorithm": "grpo", "grpo": {"kl_coef": 0.3, "iterations": 2}, "kl_control": {"kind": "fixed"}}
    history = direct_trainer(tmp_path, gpt2_tokenizer, online, max_steps=2, save_every=None).fit().history
    assert [h["beta"] for h in history] == [0.3, 0.3]  # logged: the k3 weight, not online.beta (0.1)


def test_the_first_iteration_of_every_rollout_has_ratio_one(tmp_path, gpt2_tokenizer):
    trainer = direct_trainer(tmp_path, gpt2_tokenizer, {"algorithm": "grpo", "grpo": {"iterations": 3}},
                             max_steps=2, save_every=None)
    trainer.fit()
    records = trainer.updater.records
    assert [(r["step"], r["update"]) for r in records] == [(s, u) for s in (1, 2) for u in (1, 2, 3)]
    for r in records:
        if r["update"] == 1:
            assert (r["ratio_mean"], r["clip_fraction"], r["approx_kl"]) == (1.0, 0.0, 0.0), r
        else:
            assert r["approx_kl"] > 0


def test_resume_reproduces_the_uninterrupted_run(tmp_path, gpt2_tokenizer):
    resumed_like_uninterrupted(tmp_path, gpt2_tokenizer, {"algorithm": "grpo", "grpo": {"iterations": 2}})


def test_grpo_with_lora(tmp_path):
    summary = run_online_recipe(_recipe(tmp_path, "adapter={kind: lora, r: 4, alpha: 8}", "eval=null",
                                        "train.max_steps=2", "online.algorithm=grpo", "online.samples_per_prompt=2"))
    assert summary.report["parameters"]["trainable"] < summary.report["parameters"]["total"]
    assert len(summary.results["online"].history) == 2


def test_warp_merges_grpo_runs(tmp_path):
    summary = run_online_recipe(_recipe(
        tmp_path, "eval=null", "train.max_steps=2", "online.algorithm=grpo", "online.samples_per_prompt=2",
        "online.anchor.kind=ema", "online.warp={iterations: 1, runs: 2}",
        "adapter={kind: bottleneck, reduction_factor: 4}"))
    assert sorted(summary.results) == ["warp_iter0_run0", "warp_iter0_run1"]
    assert summary.report["method"] == "warp"
    assert summary.report["objective"].endswith("of grpo(k=2, beta=0.01, anchor=ema(0.01), iterations=1, kl=loss)")
    assert all("k3_kl" in r.history[-1] for r in summary.results.values())


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(RecipeError, match=r"online\.grpo: .*online\.algorithm is 'rloo'"):
        _recipe(tmp_path, "eval=null", "online.grpo={iterations: 2}")
    with pytest.raises(RecipeError, match=r"online\.grpo: .*online\.algorithm is 'ppo'"):
        _recipe(tmp_path, "eval=null", "online.algorithm=ppo", "online.grpo={iterations: 2}")
    with pytest.raises(RecipeError, match="samples_per_prompt >= 2"):
        _recipe(tmp_path, "eval=null", "online.algorithm=grpo", "online.samples_per_prompt=1")
    with pytest.raises(RecipeError, match="with kl: reward the penalty is online.beta"):
        _recipe(tmp_path, "eval=null", "online.algorithm=grpo", "online.grpo={kl: reward, kl_coef: 0.1}")
    with pytest.raises(RecipeError, match="kl_control is adaptive"):
        _recipe(tmp_path, "eval=null", "online.algorithm=grpo", "online.grpo={kl_coef: 0.1}",
                "online.kl_control={kind: adaptive, target: 1.0}")
    grpo = OnlineConfig(reward="x", algorithm="grpo").grpo
    assert grpo is not None and (grpo.iterations, grpo.kl, grpo.scale_rewards, grpo.length_normalise) == (
        1, "loss", True, True)
