"""The parts on the trainer: every preset runs, explicit parts override a preset, a plugin's advantage and policy
loss drive `alignkit online` and `compare`, the entropy bonus has a gradient, the sampler's log-probs are kept
and the rollout correction acts on the loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_gpt2
from test_online_e2e import RECIPE, _tiny_model_folder
from tiny_online import PROMPTS, direct_trainer, without_timing

from alignkit.cli import main
from alignkit.commands.compare_online import plan_online_runs
from alignkit.models.generate import Completion
from alignkit.online.config import OnlineConfig
from alignkit.online.parts import ADVANTAGES
from alignkit.online.rollout import sample_groups
from alignkit.online.tokens import token_forward
from alignkit.recipe import RecipeError
from alignkit.recipe.online import load_online_recipe

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "my_online_parts.py"


@pytest.mark.parametrize("preset", ["dr_grpo", "dapo", "gspo", "cispo", "gmpo", "reinforce_pp"])
def test_every_new_preset_trains_and_logs_the_sampler_mismatch(preset, tmp_path, gpt2_tokenizer):
    trainer = direct_trainer(tmp_path, gpt2_tokenizer, {"algorithm": preset, "kl_control": {"kind": "fixed"}},
                             max_steps=1, save_every=None)
    (metrics,) = trainer.fit().history
    assert all(math.isfinite(v) for k, v in metrics.items() if k != "explained_variance"), metrics
    # fp32 sampling and fp32 training on CPU: the same model, a different batch layout (KV cache vs full forward).
    assert 0.0 <= metrics["sampler_logp_abs_diff"] < 1e-4 and 0.0 <= metrics["sampler_kl"] < 1e-6
    assert trainer.cfg.advantage is not None and trainer.value is None


def test_explicit_parts_override_the_preset_and_merge_its_settings():
    cfg = OnlineConfig(reward="x", algorithm="grpo", grpo={"clip_eps": 0.1},
                       policy_loss={"name": "ppo_clip", "dual_clip": 3.0}, loss_aggregation="token_mean")
    assert cfg.policy_loss is not None and cfg.policy_loss.settings == {"clip_low": 0.1, "clip_high": None,
                                                                        "dual_clip": 3.0}
    assert cfg.loss_aggregation is not None and cfg.loss_aggregation.name == "token_mean"
    assert cfg.advantage is not None and cfg.advantage.name == "grpo" and cfg.epochs == 1
    other = OnlineConfig(reward="x", algorithm="grpo", policy_loss="cispo")  # another part: its own defaults
    assert other.policy_loss is not None and other.policy_loss.settings == {"clip_low": None, "clip_high": 4.0}


def test_bad_parts_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"online\.policy_loss\.name: unknown policy loss 'nope'; registered: .*ppo_clip"):
        OnlineConfig(reward="x", policy_loss="nope")
    with pytest.raises(ValueError, match=r"online\.policy_loss\.clip_low: .*less than 1 \(ppo_clip\)"):
        OnlineConfig(reward="x", policy_loss={"name": "ppo_clip", "clip_low": 1.5})
    with pytest.raises(ValueError, match=r"online\.advantage dr_grpo needs online\.samples_per_prompt >= 2"):
        OnlineConfig(reward="x", samples_per_prompt=1, advantage="dr_grpo")
    with pytest.raises(ValueError, match=r"online\.kl\.estimator: unknown KL estimator 'k9'"):
        OnlineConfig(reward="x", kl={"estimator": "k9"})


def test_a_mis_cap_below_every_weight_drops_every_token(tmp_path, gpt2_tokenizer):
    online = {"algorithm": "dapo", "kl_control": {"kind": "fixed"}, "rollout_correction": {"name": "mis", "cap": 0.5}}
    (metrics,) = direct_trainer(tmp_path, gpt2_tokenizer, online, max_steps=1, save_every=None).fit().history
    assert metrics["policy_loss"] == 0.0 and metrics["grad_norm"] == 0.0  # w ~ 1 > 0.5 everywhere: all masked


def test_the_entropy_bonus_has_the_gradient_of_the_entropy(gpt2_tokenizer):
    torch.manual_seed(0)
    policy = make_tiny_gpt2()
    comps = [Completion(0, "", [464, 1110], [318, 257, 922]), Completion(0, "", [32], [3797, 13])]
    chunked = token_forward(policy, comps, 0, chunk_size=2, entropy_grad=True)  # recomputed per chunk
    assert chunked.entropy is not None and chunked.entropy.requires_grad
    torch.where(chunked.mask, chunked.entropy, 0.0).sum().backward()
    want = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    policy.zero_grad()
    logits = policy(input_ids=torch.tensor([[464, 1110, 318, 257]])).logits[0, 1:4].float()
    full = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    logits2 = policy(input_ids=torch.tensor([[32, 3797]])).logits[0, 0:2].float()
    full2 = -(torch.softmax(logits2, -1) * torch.log_softmax(logits2, -1)).sum(-1)
    (full.sum() + full2.sum()).backward()
    for name, p in policy.named_parameters():
        if name in want:
            torch.testing.assert_close(want[name], p.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(chunked.entropy[0, :3].detach(), full.detach(), rtol=1e-5, atol=1e-5)


def test_the_entropy_bonus_changes_the_update(tmp_path, gpt2_tokenizer):
    base = {"algorithm": "grpo", "kl_control": {"kind": "fixed"}}
    a = direct_trainer(tmp_path / "a", gpt2_tokenizer, base, max_steps=1, save_every=None).fit().history[0]
    b = direct_trainer(tmp_path / "b", gpt2_tokenizer, {**base, "entropy_coef": 0.1}, max_steps=1,
                       save_every=None).fit().history[0]
    assert a["reward"] == b["reward"] and a["grad_norm"] != b["grad_norm"]
    assert b["policy_loss"] < a["policy_loss"]  # minus 0.1 x an entropy of about 10.8 per token


def test_rollouts_keep_the_sampler_log_probs(gpt2_tokenizer):
    policy = make_tiny_gpt2()
    cfg = OnlineConfig(reward="x", samples_per_prompt=2, max_new_tokens=4)
    comps = sample_groups(policy, gpt2_tokenizer, PROMPTS[:2], [0, 1], cfg.sampling, seed=0, step=0)
    for c in comps:
        assert c.sampler_logps is not None and len(c.sampler_logps) == c.num_tokens
    with torch.no_grad():
        out = token_forward(policy, comps, gpt2_tokenizer.eos_token_id)
    for row, c in enumerate(comps):
        torch.testing.assert_close(torch.tensor(c.sampler_logps, dtype=torch.float32), out.logps[row, :c.num_tokens],
                                   rtol=1e-4, atol=1e-4)


def _plugin_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "online.yaml"
    path.write_text(RECIPE.replace("MODEL", str(_tiny_model_folder(tmp_path / "tiny"))))
    data = yaml.safe_load(path.read_text())
    data["output_dir"] = str(tmp_path / "run")
    data["eval"] = None
    data["train"]["max_steps"] = 2
    data["online"].update(algorithm="grpo", samples_per_prompt=2, advantage="group_median",
                          policy_loss={"name": "tanh_ratio", "scale": 0.5})
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_plugin_advantage_and_policy_loss_drive_alignkit_online(tmp_path, capsys):
    recipe = _plugin_recipe(tmp_path)
    if "group_median" not in ADVANTAGES:  # another test of this process may have imported the plugin already
        with pytest.raises(RecipeError, match=r"unknown advantage estimator 'group_median'"):
            load_online_recipe(recipe)
    assert main(["online", str(recipe), "--plugin", str(PLUGIN)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "advantage: group_median" in err and "policy loss: tanh_ratio(scale=0.5)" in err
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["online"]
    assert saved["advantage"] == {"name": "group_median"} and saved["policy_loss"] == {"name": "tanh_ratio",
                                                                                       "scale": 0.5}
    assert saved["loss_aggregation"] == {"name": "seq_mean_token_mean"}  # the preset filled the rest
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert any("tanh_ratio" in line for line in report["objective_parts"])
    lines = (tmp_path / "run" / "online" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(math.isfinite(json.loads(line)["policy_loss"]) for line in lines)
    # compare --online takes the same --plugin
    ((_, planned, seed),) = plan_online_runs([recipe], [str(PLUGIN)])
    assert seed is None and planned is not None and planned.online.policy_loss is not None
    assert planned.online.policy_loss.name == "tanh_ratio"


@pytest.mark.parametrize("temperature", [0.5, 1.5])
def test_the_trainer_scores_the_distribution_it_sampled_at_any_temperature(temperature, tmp_path, gpt2_tokenizer):
    """At T != 1 the sampler draws from softmax(logits / T); the trainer's log-probs (ratios, KL, the mismatch it
    logs) are of that distribution. Scored at T = 1 instead, the same tokens are off by far more than rounding."""
    trainer = direct_trainer(tmp_path, gpt2_tokenizer, {"algorithm": "grpo", "temperature": temperature,
                                                        "kl_control": {"kind": "fixed"}},
                             max_steps=1, save_every=None)
    (metrics,) = trainer.fit().history
    assert 0.0 <= metrics["sampler_logp_abs_diff"] < 1e-4 and 0.0 <= metrics["sampler_kl"] < 1e-6, metrics
    comps = sample_groups(trainer.policy, gpt2_tokenizer, PROMPTS[:2], [0, 1], trainer.cfg.sampling, seed=5, step=1)
    sampled = torch.cat([torch.tensor(c.sampler_logps) for c in comps])
    scored = {t: token_forward(trainer.policy, comps, trainer.pad_id, temperature=t) for t in (temperature, 1.0)}
    flat = {t: out.logps[out.mask] for t, out in scored.items()}
    assert (flat[temperature] - sampled).abs().max() < 1e-4
    assert (flat[1.0] - sampled).abs().mean() > 1e-2  # a trainer that ignores the temperature


def test_continuous_batching_rollouts_train_the_same_run(tmp_path, gpt2_tokenizer):
    """online.continuous_batching reaches the rollout sampler, and a run with it is the batch loop's run on a tiny
    model in fp32 (the loop's own equality tests, with rows ending early and slots refilled, are in
    tests/models/test_continuous.py)."""
    online = {"algorithm": "grpo", "kl_control": {"kind": "fixed"}, "generation_batch_size": 2}
    runs = {flag: direct_trainer(tmp_path / str(flag), gpt2_tokenizer, {**online, "continuous_batching": flag},
                                 max_steps=2, save_every=None) for flag in (False, True)}
    assert runs[True].cfg.sampling.continuous_batching and not runs[False].cfg.sampling.continuous_batching
    histories = {flag: without_timing(trainer.fit().history) for flag, trainer in runs.items()}
    assert histories[True] == histories[False]
