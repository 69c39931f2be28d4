"""A reward that hangs, raises, exits, returns the wrong count or non-finite values stops `online` and `eval`
with an error naming it (exit 2), never blocking forever nor ending with exit 0 and an empty run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.eval.judges.reward import RewardJudge
from alignkit.models import rewards
from alignkit.models.rewards import RewardError, checked_reward

PLUGIN = '''
import math, sys, threading
from alignkit.models.rewards import register_reward

@register_reward("fault_hang")
def fault_hang(texts):
    threading.Event().wait()

@register_reward("fault_raise")
def fault_raise(texts):
    raise KeyError("boom")

@register_reward("fault_exit")
def fault_exit(texts):
    sys.exit(0)

@register_reward("fault_count")
def fault_count(texts):
    return [0.0]

@register_reward("fault_nan")
def fault_nan(texts):
    return [math.nan] * len(texts)
'''

RECIPE = """name: faulty_reward
output_dir: {out}
plugins: [{plugin}]
model:
  name_or_path: gpt2
  tokenizer: gpt2
  from_config: {{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 64}}
prompts:
  kind: inline
  train: ["A day", "The sea"]
  eval: ["A cat"]
online:
  reward: {reward}
  reward_timeout_s: 1
  samples_per_prompt: 2
  max_new_tokens: 3
train:
  prompts_per_step: 2
  max_steps: 2
  device: cpu
eval:
  reward: null
"""

# reward name -> what the one-line error says
FAULTS = {
    "fault_hang": "reward 'fault_hang' did not return within 1 s",
    "fault_raise": "reward 'fault_raise' raised KeyError: 'boom'",
    "fault_exit": "reward 'fault_exit' called sys.exit(0)",
    "fault_count": "reward 'fault_count' returned 1 values for 4 texts",
    "fault_nan": "non-finite reward at step 1",
}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "faulty_rewards.py"
    path.write_text(PLUGIN)
    return path


@pytest.mark.parametrize("reward", sorted(FAULTS))
def test_a_faulty_reward_stops_online_with_an_error_naming_it(tmp_path, plugin, capsys, reward):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "run", plugin=plugin, reward=reward))
    assert main(["online", str(recipe)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert FAULTS[reward] in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "report.json").exists() and not (tmp_path / "run" / "model").exists()


def test_a_reward_that_hangs_or_exits_in_a_judge_is_an_error(plugin, monkeypatch):
    from alignkit.plugins import load_plugin

    load_plugin(str(plugin))
    monkeypatch.setattr(rewards, "REWARD_TIMEOUT_S", 0.5)  # eval's limit, read at each call
    items = [("q", "yes", "no")]
    with pytest.raises(RewardError, match="reward 'fault_hang' did not return within 0.5 s"):
        RewardJudge("fault_hang").compare_many(items)
    with pytest.raises(RewardError, match=r"reward 'fault_exit' called sys.exit\(0\)"):
        RewardJudge("fault_exit").compare_many(items)
    with pytest.raises(RewardError, match="reward 'fault_count' returned 1 values for 2 texts"):
        RewardJudge("fault_count").compare_many(items)


def test_checked_reward_passes_good_values_and_keeps_its_limit():
    assert checked_reward("ok", lambda texts: [1.0] * len(texts), timeout_s=5)(["a", "b"]) == [1.0, 1.0]
    checked = checked_reward("ok", len)
    assert checked_reward("again", checked) is checked  # wrapped once, not a thread inside a thread


def test_eval_reward_kl_refuses_a_non_finite_reward(tiny_gpt2, gpt2_tokenizer, plugin):
    from alignkit.eval.reward_kl import evaluate_model_reward
    from alignkit.plugins import load_plugin

    load_plugin(str(plugin))
    with pytest.raises(RewardError, match="reward 'fault_nan' returned nan for text 0"):
        evaluate_model_reward(tiny_gpt2, gpt2_tokenizer, ["A cat"], "fault_nan", max_new_tokens=2)
