"""Recipe checks of verifiable rewards: names, settings and where a reward that reads examples may be used."""

from __future__ import annotations

import pytest

from alignkit.recipe import RecipeError
from alignkit.recipe.online import load_online_recipe

BASE = """name: r
model: {name_or_path: gpt2, tokenizer: gpt2}
prompts: {kind: gsm8k_jsonl, path: data.jsonl}
train: {max_steps: 1}
"""


def _load(tmp_path, extra: str):
    path = tmp_path / "r.yaml"
    path.write_text(BASE + extra)
    return load_online_recipe(path, check_environment=False)


def test_a_weighted_list_of_rewards_with_settings_validates(tmp_path):
    recipe = _load(tmp_path, "online:\n  rewards: [{name: exact_match, extract: gsm8k}, {name: format, weight: 0.1}]\n"
                             "  normalise_rewards: true\n"
                             "accuracy: {reward: {name: exact_match, extract: gsm8k}, samples: 4, ks: [1, 4]}\n")
    assert [t.name for t in recipe.online.rewards] == ["exact_match", "format"]
    assert recipe.online.rewards[0].settings == {"extract": "gsm8k"} and recipe.online.rewards[1].weight == 0.1


@pytest.mark.parametrize("extra, message", [
    ("online:\n  rewards: [{name: exact_match, extrct: gsm8k}]\n", r"r.yaml:6: online.rewards\[0\]: reward 'exact_match' "
     "has no setting 'extrct'; it takes: extract, pattern"),
    ("online:\n  rewards: [{name: exact_mach}]\n", r"online.rewards\[0\].name: unknown reward function 'exact_mach'"),
    ("online:\n  reward: exact_match\n  rewards: [format]\n", "set exactly one of 'reward'"),
    ("online:\n  reward: exact_match\n  normalise_rewards: true\n", "normalise_rewards needs online.rewards"),
    ("online:\n  reward: exact_match\n  true_reward: format\n", "online.true_reward: reward 'format' reads each "
     "prompt's metadata"),
    ("online:\n  reward: exact_match\naccuracy: {reward: exact_match, samples: 4, ks: [1, 8]}\n",
     r"accuracy.ks: \[8\] outside 1..samples \(4\)"),
])
def test_mistakes_are_named_where_they_are(tmp_path, extra, message):
    with pytest.raises(RecipeError, match=message):
        _load(tmp_path, extra)
