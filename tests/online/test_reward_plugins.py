"""A reward in the user's plugin file (examples/my_reward.py) drives a tiny online run; bad reward output is an
error that names the reward."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit.cli import main
from alignkit.commands.online import build_score
from alignkit.models.rewards import REWARDS, RewardError, checked_reward, get_reward, register_reward
from alignkit.online.config import OnlineConfig
from alignkit.plugins import load_plugin
from alignkit.recipe import RecipeError
from alignkit.recipe.online import load_online_recipe

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my_reward.py"

RECIPE = """name: plugin_reward
output_dir: {out}
plugins: [{plugin}]
model:
  name_or_path: gpt2
  tokenizer: gpt2
  from_config: {{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 128}}
prompts:
  kind: jsonl
  path: {prompts}
  test_size: 2
online:
  reward: {reward}
  samples_per_prompt: 2
  max_new_tokens: 4
train:
  prompts_per_step: 2
  max_steps: 2
  device: cpu
eval:
  reward: {reward}
  num_prompts: 2
  samples_per_prompt: 1
  max_new_tokens: 4
"""


def _recipe(tmp_path: Path, reward: str = "upbeat_and_brief") -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about day {i}."}) + "\n" for i in range(6)))
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run", plugin=EXAMPLE, prompts=prompts, reward=reward))
    return path


def test_the_example_reward_values():
    load_plugin(str(EXAMPLE))
    fn = get_reward("upbeat_and_brief")
    vader = get_reward("vader_sentiment")
    long = "a nice day " * 10  # 30 words: 10 beyond the budget
    assert fn(["I love it", long]) == pytest.approx([vader(["I love it"])[0], vader([long])[0] - 0.5])


def test_a_plugin_reward_drives_a_tiny_online_run(tmp_path, capsys):
    assert main(["online", str(_recipe(tmp_path))]) == 0
    err = capsys.readouterr().err
    assert "reward upbeat_and_brief" in err and "training prompts: kept 4 of 6 rows" in " ".join(err.split())
    lines = (tmp_path / "run" / "online" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(np.isfinite(json.loads(line)["reward"]) for line in lines)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["online"]["reward"] == "upbeat_and_brief"
    assert report["train_prompts"] == 4 and report["heldout_prompts"] == 2
    assert report["reward_kl"]["after"]["reward_name"] == "upbeat_and_brief"


def test_an_unknown_reward_names_the_plugins_option(tmp_path):
    with pytest.raises(RecipeError, match=r"online\.reward: unknown reward function 'nope'.*a plugin can register"):
        load_online_recipe(_recipe(tmp_path, reward="nope"))


def test_reward_output_is_checked_and_named():
    texts = ["a", "bb", "ccc"]
    assert checked_reward("r", lambda t: np.array([1, 2, 3]))(texts) == [1.0, 2.0, 3.0]
    assert checked_reward("r", lambda t: torch.tensor([0.5, 1.5, 2.5]))(texts) == [0.5, 1.5, 2.5]
    assert checked_reward("r", lambda t: (np.float32(1), 2, 3.0))(texts) == [1.0, 2.0, 3.0]
    with pytest.raises(RewardError, match="reward 'short' returned 2 values for 3 texts"):
        checked_reward("short", lambda t: [1.0, 2.0])(texts)
    with pytest.raises(RewardError, match=r"reward 'words' returned 'x' \(str\) for text 1"):
        checked_reward("words", lambda t: [1.0, "x", 2.0])(texts)
    with pytest.raises(RewardError, match="reward 'one' must return a list of numbers .* got float"):
        checked_reward("one", lambda t: 1.0)(texts)


def test_build_score_checks_a_registered_reward():
    name = "test_plugin_half_length"
    if name not in REWARDS:
        register_reward(name)(lambda texts: [len(t) / 2 for t in texts][:-1])  # one value short
    try:
        label, score = build_score(OnlineConfig(reward=name), torch.device("cpu"))
        assert label == name
        with pytest.raises(RewardError, match=f"reward '{name}' returned 1 values for 2 texts"):
            score(["p", "q"], ["ab", "cdef"])
    finally:
        REWARDS.remove(name)


def test_docs_show_the_example_file_as_it_is():
    """The reward example of docs/online.md is examples/my_reward.py's code, and its YAML validates."""
    doc = (EXAMPLE.parents[1] / "docs" / "online.md").read_text(encoding="utf-8")
    section = doc[doc.index("### Rewards"):]
    code = section[section.index("```python\n") + 10:]
    code = code[:code.index("```")]
    head, body = code.split("\n\n", 1)
    source = EXAMPLE.read_text(encoding="utf-8")
    assert head in source and body.strip() in source
    assert "plugins: [my_reward.py]\nonline: {reward: upbeat_and_brief}" in section
