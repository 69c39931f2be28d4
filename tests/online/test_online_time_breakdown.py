"""An online run's report says where its update's time goes: the offline trainer's forward/backward and optimizer
rows under training, beside the no-grad forwards of the policy (log-probs) and of the anchor (reference
log-probs), each with its model FLOPs (alignkit.models.flops) and its fraction of this machine's peak."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny_gpt2, single_thread
from tiny_online import _recipe
from transformers import AutoModelForCausalLM

from alignkit.commands.online import run_online_recipe
from alignkit.models.flops import matmul_parameters, trainable_parameters, training_flops
from alignkit.models.generate import Completion
from alignkit.online.flops import UpdateFlops
from alignkit.online.tokens import ValueHead, value_model_from_policy
from alignkit.timing import PhaseClock, phase, recording

STEPS = 2
# name: (overrides, passes over each rollout, optimizer steps per rollout, anchor forwards per policy forward)
CASES = {
    "rloo": ([], 1, 1, 1),
    # the EMA anchor's forwards and the initial model's (for the logged KL)
    "grpo_ema_anchor": (["online.algorithm=grpo", "online.grpo={iterations: 2}", "online.anchor.kind=ema",
                         "online.anchor.ema_rate=0.5"], 2, 2, 2),
    # 8 completions a rollout: 2 epochs x 2 minibatches of 4; the value model's forwards count too
    "ppo_separate_value": (["online.algorithm=ppo", "online.ppo={epochs: 2, minibatch_size: 4, value_model: separate}"],
                           2, 4, 1),
}
ROWS = ("log-probs", "reference log-probs", "forward/backward", "optimizer")


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.mark.parametrize("case", list(CASES))
def test_online_report_shows_where_the_update_time_goes(tmp_path, case):
    overrides, passes, updates, anchor_forwards = CASES[case]
    run_online_recipe(_recipe(tmp_path, "eval=null", f"train.max_steps={STEPS}", *overrides))
    section = json.loads((tmp_path / "run" / "report.json").read_text())["time_breakdown"]
    rows = {tuple(r["path"]): r for r in section["phases"]}
    for name in ROWS:
        assert ("training", name) in rows, (name, sorted(rows))
    logps, reference, fb, optimizer = (rows["training", name] for name in ROWS)
    assert fb["calls"] == STEPS * updates and optimizer["calls"] == STEPS * updates  # once per optimizer step
    assert optimizer["flops"] == {}
    for row in (logps, reference, fb):
        assert set(row["flops"]) == {"float32"} and row["flops"]["float32"] > 0, row
        # consistency, not speed: a peak measured on a loaded machine may be below what a phase reached
        peak = section["peak_flops"]["float32"]["flops_per_second"]
        assert row["flops_per_second"] == pytest.approx(row["flops"]["float32"] / row["seconds"]), row
        assert row["peak_fraction"] == pytest.approx(row["flops_per_second"] / peak) and row["peak_fraction"] > 0
    for path, row in rows.items():  # a child's time is part of its parent's
        if len(path) > 1:
            assert row["seconds"] <= rows[path[:-1]]["seconds"] + 1e-9

    # Every forward is over the same non-padding tokens (the step's completions and their prompts), so the
    # rows' FLOPs compare as the per-token figures do: the update passes over each completion `passes` times.
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")
    value = value_model_from_policy(policy) if "value" in case else None
    per_token = UpdateFlops.of(policy, value)
    rollout = per_token.rollout_forward  # the policy's forward, and the value model's beside it (PPO)
    flops = {name: rows["training", name]["flops"]["float32"] for name in ROWS[:3]}
    assert flops["forward/backward"] / flops["log-probs"] == pytest.approx(passes * per_token.training / rollout,
                                                                           rel=1e-9)
    assert flops["reference log-probs"] / flops["log-probs"] == pytest.approx(
        anchor_forwards * per_token.policy_forward / rollout, rel=1e-9)
    if value is not None:
        assert per_token.rollout_forward > per_token.policy_forward


def test_update_flops_follow_the_offline_trainers_convention():
    """Per token: 2·N a forward, 4·N + 2·N_trainable trained (the offline trainer's figure), the value head's
    own N beside the policy's; a batch counts its prompts' and completions' tokens, into the open phase."""
    policy, head = make_tiny_gpt2(), ValueHead(32)
    n = matmul_parameters(policy)
    flops = UpdateFlops.of(policy, head)
    assert flops.dtype == "float32" and flops.policy_forward == 2 * n
    assert flops.rollout_forward == 2 * (n + 33)  # the head: a 32 -> 1 linear layer with its bias
    assert flops.training == training_flops(n, trainable_parameters(policy), 1) + 6 * 33
    comps = [Completion(0, "", [1, 2, 3], [4, 5]), Completion(1, "", [6], [7, 8, 9, 10])]  # 10 tokens
    clock = PhaseClock()
    with recording(clock), phase("forward/backward"):
        flops.count_training(comps)
    assert clock.totals[("forward/backward",)].flops == {"float32": 10 * flops.training}
