"""PPO on the online trainer: the reward rises, the first minibatch of every rollout has ratio 1, a resumed run
is the uninterrupted one, the value model stays out of model/, adapters work, and bad settings are refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_online import (
    _recipe,
    direct_trainer,
    resumed_like_uninterrupted,
    saved_model_tensor_names,
    value_tensors,
)

from alignkit.commands.online import run_online_recipe
from alignkit.online.config import OnlineConfig
from alignkit.online.tokens import ValueHead, ValueModel
from alignkit.online.updater import local_microbatches, update_plan, updates_per_step
from alignkit.recipe import RecipeError

PPO_METRICS = ("approx_kl", "clip_fraction", "ratio_mean", "value_loss", "value_clip_fraction", "explained_variance",
               "token_entropy", "policy_loss", "optimizer_steps")


def test_ppo_reward_rises_and_the_value_head_stays_out_of_model(tmp_path):
    summary = run_online_recipe(_recipe(tmp_path, "eval=null", "train.max_steps=8", "online.algorithm=ppo",
                                        "online.ppo={epochs: 2, minibatch_size: 4}"))
    history = summary.results["online"].history
    first = sum(h["reward"] for h in history[:3]) / 3
    last = sum(h["reward"] for h in history[-4:]) / 4
    assert last > first + 0.3, (first, last)
    for key in (*PPO_METRICS, "reward", "kl", "beta", "grad_norm", "learning_rate"):
        assert key in history[-1], key
    assert all(h["optimizer_steps"] == 4 for h in history)  # 2 epochs x (8 completions / 4)
    report = summary.report
    assert report["method"] == "ppo"
    assert report["objective"] == "ppo(k=4, beta=0.01, anchor=initial, epochs=2, value=policy_head)"
    run = tmp_path / "run"
    # model/ is the policy alone (a GPT-2 folder transformers loads); the value head lives in the checkpoints.
    names = saved_model_tensor_names(run / "model")
    assert names and not any("linear" in n or "value" in n for n in names)
    value = load_file(str(run / "online" / "checkpoints" / "step-0000008" / "value.safetensors"))
    assert sorted(value) == ["linear.bias", "linear.weight"] and float(value["linear.weight"].abs().sum()) > 0
    lines = [json.loads(line) for line in (run / "online" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 9))  # one loop step per rollout


def test_the_first_minibatch_of_every_rollout_has_ratio_one(tmp_path, gpt2_tokenizer):
    """Old log-probs come from the rollout pass in the first epoch's micro-batches: the first optimizer step of
    each rollout sees exactly the sampling policy (ratio 1, nothing clipped, approx-KL 0); later ones do not."""
    trainer = direct_trainer(tmp_path, gpt2_tokenizer, {"algorithm": "ppo", "ppo": {"epochs": 3, "minibatch_size": 2}},
                             max_steps=2, save_every=None, schedule="linear")
    trainer.fit()
    records = trainer.updater.records
    assert [(r["step"], r["update"]) for r in records] == [(s, u) for s in (1, 2) for u in range(1, 7)]
    for r in records:
        if r["update"] == 1:
            assert (r["ratio_mean"], r["clip_fraction"], r["approx_kl"]) == (1.0, 0.0, 0.0), r
    assert all(r["approx_kl"] > 0 for r in records if r["update"] > 1)
    # The schedule counts optimizer steps: 2 rollouts x 3 epochs x 2 minibatches, decaying linearly to 0.
    assert [r["learning_rate"] for r in records] == pytest.approx([1e-3 * (1 - i / 12) for i in range(12)])


def test_update_plan_cuts_every_pass_into_minibatches_and_processes_take_their_share():
    plan = update_plan(8, 4, 3, seed=0, step=0)
    assert len(plan) == 6 and updates_per_step(8, 4, 3) == 6
    for epoch in range(3):  # every pass covers the rollout once
        assert sorted(plan[2 * epoch] + plan[2 * epoch + 1]) == list(range(8))
    assert plan == update_plan(8, 4, 3, seed=0, step=0) != update_plan(8, 4, 3, seed=0, step=1)
    assert len({tuple(mb) for mb in plan}) > 2  # passes are shuffled afresh
    assert update_plan(8, None, 2, seed=0, step=0) == [list(range(8))] * 2  # one minibatch: no shuffle
    # Two processes hold 0-3 and 4-7; their local shares of each minibatch partition it (unevenly here, as in
    # test_online_distributed's PPO case: seed 0, steps 0 and 1).
    shares = [[local_microbatches(mb, offset, 4, 3) for offset in (0, 4)] for mb in plan]
    for mb, (first, second) in zip(plan, shares, strict=True):
        assert sorted([i for m in first for i in m] + [i + 4 for m in second for i in m]) == sorted(mb)
        assert all(len(m) <= 3 for m in first + second)
    uneven = [mb for step in (0, 1) for mb in update_plan(8, 4, 2, seed=0, step=step) if sum(g < 4 for g in mb) != 2]
    assert uneven
    with pytest.raises(ValueError, match="online.minibatch_size=3 must divide the 8 completions"):
        updates_per_step(8, 3, 1)


@pytest.mark.parametrize("value_model", ["policy_head", "separate"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, gpt2_tokenizer, value_model):
    online = {"algorithm": "ppo", "ppo": {"epochs": 2, "minibatch_size": 2, "value_model": value_model}}
    full, resumed = resumed_like_uninterrupted(tmp_path, gpt2_tokenizer, online)
    for name, tensor in value_tensors(full).items():
        assert torch.equal(tensor, value_tensors(resumed)[name]), name
    assert isinstance(resumed.value, ValueHead if value_model == "policy_head" else ValueModel)


@pytest.mark.parametrize("adapter", ["{kind: lora, r: 4, alpha: 8}", "{kind: bottleneck, reduction_factor: 4}"])
def test_ppo_with_adapters(tmp_path, adapter):
    summary = run_online_recipe(_recipe(tmp_path, f"adapter={adapter}", "eval=null", "train.max_steps=2",
                                        "online.algorithm=ppo", "online.samples_per_prompt=2",
                                        "online.ppo={epochs: 2, value_model: separate}"))
    report = summary.report
    assert report["parameters"]["trainable"] < report["parameters"]["total"]
    history = summary.results["online"].history
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["value_loss"])) for h in history)
    value = load_file(str(tmp_path / "run" / "online" / "checkpoints" / "step-0000002" / "value.safetensors"))
    marker = "lora" if "lora" in adapter else "adapter"
    # the separate value model copies the policy's decoder and trains where the policy trains: its adapter
    assert value and all(marker in n or n.startswith("head.") for n in value), sorted(value)[:5]
    assert {"head.linear.weight", "head.linear.bias"} < set(value)


def test_value_model_from_a_reward_model_folder(tmp_path, gpt2_tokenizer):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(1)
    rm = GPT2ForSequenceClassification(GPT2Config(vocab_size=50257, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                                  num_labels=1, pad_token_id=50256))
    rm.save_pretrained(str(tmp_path / "rm"))
    gpt2_tokenizer.save_pretrained(str(tmp_path / "rm"))
    online = {"algorithm": "ppo", "ppo": {"epochs": 1, "value_model": "separate", "value_init": str(tmp_path / "rm")}}
    trainer = direct_trainer(tmp_path / "run", gpt2_tokenizer, online, max_steps=2)
    assert isinstance(trainer.value, ValueModel)
    score = rm.score.weight.detach().clone()
    torch.testing.assert_close(trainer.value.head.weight.detach(), score)  # the reward model's head starts V
    history = trainer.fit().history
    assert history[0]["value_mean"] != 0.0  # a zero head would start every value at 0
    assert not torch.equal(trainer.value.head.weight.detach(), score)  # trained


def test_config_errors_name_the_field(tmp_path):
    recipe = ["eval=null"]
    with pytest.raises(RecipeError, match=r"online\.ppo: .*online\.ppo is set but online\.algorithm is 'rloo'"):
        _recipe(tmp_path, *recipe, "online.ppo={epochs: 2}")
    with pytest.raises(RecipeError, match=r"online\.ppo: .*online\.algorithm is 'grpo'"):
        _recipe(tmp_path, *recipe, "online.algorithm=grpo", "online.ppo={epochs: 2}")
    with pytest.raises(RecipeError, match=r"online\.ppo\.minibatch_size: 3 must divide the 8 completions"):
        _recipe(tmp_path, *recipe, "online.algorithm=ppo", "online.ppo={minibatch_size: 3}")
    with pytest.raises(RecipeError, match=r"online\.ppo\.value_init: .* is not a reward-model folder"):
        _recipe(tmp_path, *recipe, "online.algorithm=ppo",
                f"online.ppo={{value_model: separate, value_init: {tmp_path / 'missing'}}}")
    with pytest.raises(RecipeError, match="needs value_model 'separate'"):
        _recipe(tmp_path, *recipe, "online.algorithm=ppo", "online.ppo={value_init: some/folder}")
    # Without the section the defaults are filled in (and written into the saved recipe).
    assert _recipe(tmp_path, *recipe, "online.algorithm=ppo").online.ppo.epochs == 4
    assert OnlineConfig(reward="x").ppo is None and OnlineConfig(reward="x").algorithm == "rloo"


def test_an_existing_recipe_without_algorithm_is_rloo(tmp_path, gpt2_tokenizer):
    """Backward compatible: no `algorithm` is RLOO (k = 1: the batch mean), and `reinforce` is the batch mean
    for any k; neither builds a value model or takes more than one optimizer step per rollout."""
    rloo = direct_trainer(tmp_path / "a", gpt2_tokenizer, {}, max_steps=1)
    assert rloo.cfg.algorithm == "rloo" and rloo.value is None and rloo.updater.updates == 1
    assert (rloo.cfg.advantage.name, rloo.cfg.policy_loss.name) == ("rloo", "vanilla_pg")
    reinforce = direct_trainer(tmp_path / "b", gpt2_tokenizer, {"algorithm": "reinforce"}, max_steps=1)
    assert reinforce.value is None and reinforce.updater.updates == 1
    a, b = rloo.fit().history[0], reinforce.fit().history[0]
    assert a["reward"] == b["reward"] and a["penalised_reward"] == b["penalised_reward"]  # the same samples
    assert a["loss"] != b["loss"]  # another baseline
