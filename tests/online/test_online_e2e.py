"""Tiny online runs end to end: the reward rises under RLOO; WARP merges runs and evaluates its front."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import single_thread

from alignkit.commands.online import run_online_recipe
from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer
from alignkit.models.rewards import REWARDS, register_reward
from alignkit.recipe.online import load_online_recipe

REWARD = "fraction_the"
THE = 262  # GPT-2's id of " the"


def _fraction_the(texts: list[str]) -> list[float]:
    """Fraction of a completion's GPT-2 tokens that are " the"."""
    tok = offline_gpt2_tokenizer()
    out = []
    for text in texts:
        ids = tok(text)["input_ids"]
        out.append(sum(i == THE for i in ids) / max(1, len(ids)))
    return out


if REWARD not in REWARDS:
    register_reward(REWARD)(_fraction_the)


def _tiny_model_folder(folder):
    """A tiny random GPT-2 in which " the" starts at a few percent (a uniform 1/50257 would give no signal).

    The final layer norm's bias b and the (tied) embedding of " the" point the same way, so every position's
    logit of " the" is raised; the policy gradient can then push along b, a direction shared by all positions.
    """
    from conftest import make_tiny_gpt2

    model = make_tiny_gpt2()
    with torch.no_grad():
        b = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(0))
        b = b / b.norm() * 6.0
        model.transformer.ln_f.bias.copy_(b)
        model.transformer.wte.weight[THE] = 0.2 * b
    model.save_pretrained(str(folder))
    return folder


RECIPE = f"""name: tiny_online
seed: 0
model:
  name_or_path: MODEL
  tokenizer: gpt2
prompts:
  kind: inline
  train: [The weather today, My favourite food, A story about, The city at night, In the morning, Yesterday I saw]
  eval: [The cat, A long day]
online:
  reward: {REWARD}
  samples_per_prompt: 4
  max_new_tokens: 6
  beta: 0.01
train:
  optimizer: adamw
  lr: 0.0003
  prompts_per_step: 2
  max_steps: 12
  device: cpu
eval:
  reward: {REWARD}
  num_prompts: 2
  samples_per_prompt: 4
  max_new_tokens: 6
  batch_size: 8
"""


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def _recipe(tmp_path, *overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "online.yaml"
    path.write_text(RECIPE.replace("MODEL", str(_tiny_model_folder(tmp_path / "tiny"))))
    return load_online_recipe(path, [f"output_dir={tmp_path / 'run'}", *overrides])


def test_rloo_reward_rises_and_report_is_written(tmp_path):
    summary = run_online_recipe(_recipe(tmp_path))
    history = summary.results["online"].history
    first = sum(h["reward"] for h in history[:3]) / 3
    last = sum(h["reward"] for h in history[-4:]) / 4
    assert last > first + 0.3, (first, last)
    assert all(h["kl"] == h["kl_anchor"] for h in history)  # the anchor is the initial model
    for key in ("reward", "kl", "entropy", "length", "distinct_1", "distinct_2", "beta"):
        assert key in history[-1]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["method"] == "rloo"
    assert report["reward_kl"]["before"]["kl"]["estimate"] == 0.0
    assert report["reward_kl"]["after"]["reward"]["estimate"] > report["reward_kl"]["before"]["reward"]["estimate"]
    lines = (tmp_path / "run" / "online" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12


def test_ema_anchor_and_adaptive_beta_run(tmp_path):
    summary = run_online_recipe(_recipe(
        tmp_path, "train.max_steps=4", "online.anchor.kind=ema", "online.anchor.ema_rate=0.5",
        "online.kl_control.kind=adaptive", "online.kl_control.target=0.5", "online.beta=0.1", "eval=null"))
    history = summary.results["online"].history
    assert history[0]["beta"] == pytest.approx(0.1)
    assert history[-1]["beta"] != pytest.approx(0.1)  # the controller moved it
    assert any(h["kl"] != h["kl_anchor"] for h in history[1:])  # EMA anchor drifts away from the initial model


@pytest.mark.slow
def test_warp_merges_runs_and_evaluates_front(tmp_path):
    summary = run_online_recipe(_recipe(
        tmp_path, "train.max_steps=8", "online.anchor.kind=ema", "online.anchor.ema_rate=0.1",
        "online.warp={iterations: 2, runs: 2, liti_eta: 0.5, front_etas: [0.0, 0.5, 1.0]}"))
    assert sorted(summary.results) == ["warp_iter0_run0", "warp_iter0_run1", "warp_iter1_run0", "warp_iter1_run1"]
    front = summary.report["warp_front"]
    assert [p["eta"] for p in front] == [0.0, 0.5, 1.0]
    assert front[0]["kl"]["estimate"] == pytest.approx(0.0, abs=1e-4)  # eta 0 is the initial model itself
    assert front[-1]["reward"]["estimate"] > front[0]["reward"]["estimate"]
    assert (tmp_path / "run" / "plots" / "warp_front.png").is_file()
    assert "WARP front" in (tmp_path / "run" / "report.md").read_text()


def test_initial_anchor_of_fresh_lora_is_the_base_model(tiny_gpt2):
    from alignkit.eval.kl import completion_logps
    from alignkit.models.generate import Completion
    from alignkit.online.anchor import FrozenAnchor
    from alignkit.peft import adapters_disabled, apply_adapter

    apply_adapter(tiny_gpt2, {"kind": "lora", "r": 4, "alpha": 8})
    anchor = FrozenAnchor(tiny_gpt2)
    assert anchor.tensors and all("lora" in name for name in anchor.tensors)
    with torch.no_grad():
        for p in tiny_gpt2.parameters():
            if p.requires_grad:
                p.add_(0.05)  # training moved the adapter
    comps = [Completion(0, "", [464, 3290, 318], [257, 922, 1110])]
    with anchor.model_context() as m:
        anchored = completion_logps(m, comps, batch_size=1, pad_token_id=0)
    with adapters_disabled(tiny_gpt2) as m:
        base = completion_logps(m, comps, batch_size=1, pad_token_id=0)
    moved = completion_logps(tiny_gpt2, comps, batch_size=1, pad_token_id=0)
    assert torch.allclose(anchored, base, atol=1e-6)
    assert not torch.allclose(moved, base, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["{kind: lora, r: 4, alpha: 8}", "{kind: bottleneck, reduction_factor: 4}"])
def test_online_run_with_adapters(tmp_path, adapter):
    extra = ["online.anchor.kind=ema", "online.warp={runs: 2, front_etas: [0.0, 1.0]}"] if "bottleneck" in adapter else []
    summary = run_online_recipe(_recipe(tmp_path, f"adapter={adapter}", "train.max_steps=2", "eval.num_prompts=1",
                                        "eval.samples_per_prompt=2", *extra))
    report = summary.report
    assert report["parameters"]["trainable"] < report["parameters"]["total"]
    assert report["method"] == ("warp" if extra else "rloo")
    assert (tmp_path / "run" / "model").is_dir()


@pytest.mark.slow
def test_resume_continues_like_an_uninterrupted_run(tmp_path, monkeypatch):
    from alignkit.online.trainer import OnlineTrainer

    common = ["eval=null", "online.anchor.kind=ema", "online.anchor.ema_rate=0.5", "online.kl_control.kind=adaptive",
              "online.kl_control.target=0.5", "online.beta=0.1", "train.save_every=2"]
    full = run_online_recipe(_recipe(tmp_path / "a", "train.max_steps=4", *common)).results["online"].history
    step = OnlineTrainer.train_step

    def interrupted_at_step_3(self: OnlineTrainer, i: int) -> dict[str, float]:
        if i == 2:
            raise KeyboardInterrupt
        return step(self, i)

    monkeypatch.setattr(OnlineTrainer, "train_step", interrupted_at_step_3)
    with pytest.raises(KeyboardInterrupt):  # killed after 2 updates, the same recipe
        run_online_recipe(_recipe(tmp_path / "b", "train.max_steps=4", *common))
    monkeypatch.undo()
    resumed = run_online_recipe(_recipe(tmp_path / "b", "train.max_steps=4", *common), resume=True)
    history = resumed.results["online"].history
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for key in ("reward", "kl", "kl_anchor", "beta"):
        assert [h[key] for h in history] == pytest.approx([h[key] for h in full], abs=1e-5), key
    lines = (tmp_path / "b" / "run" / "online" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
