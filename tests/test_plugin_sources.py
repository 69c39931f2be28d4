"""A plugin's data source and prompt source, registered with their config classes, are named by recipes like the
built-in kinds (examples/my_sources.py): validated field by field, saved and read back, and trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alignkit.cli import main
from alignkit.data.prompt_sources import load_prompt_split
from alignkit.data.sources import SOURCES, register_source
from alignkit.recipe import RecipeError, load_recipe, recipe_to_yaml
from alignkit.recipe.online import load_online_recipe, online_recipe_to_yaml

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "my_sources.py"
TINY_GPT2 = "{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 256}"
OFFLINE = "recipes/dpo_gpt2_hh.yaml"
ONLINE = "recipes/online/rloo_smollm2_sentiment.yaml"
SOURCE = "data.source={kind: arithmetic_pairs, count: 40}"
PROMPTS = "prompts={kind: arithmetic_prompts, count: 30, num_eval_prompts: 6}"


def _offline(*extra: str) -> list[str]:
    return [f"plugins={PLUGIN}", SOURCE, "data.test_source=null", *extra]


def test_a_recipe_names_a_plugin_data_source_and_saves_it():
    recipe = load_recipe(OFFLINE, _offline())
    assert type(recipe.data.source).__name__ == "ArithmeticPairs" and recipe.data.source.count == 40
    saved = yaml.safe_load(recipe_to_yaml(recipe))
    assert saved["data"]["source"] == {"kind": "arithmetic_pairs", "count": 40}
    again = load_recipe(OFFLINE, _offline(f"data.source={json.dumps(saved['data']['source'])}"))
    assert again.data.source == recipe.data.source


def test_a_plugin_source_setting_is_checked_at_its_field():
    with pytest.raises(RecipeError, match=r"data\.source\.count"):
        load_recipe(OFFLINE, _offline("data.source.count=0"))
    with pytest.raises(RecipeError, match=r"data\.source\.cuont"):
        load_recipe(OFFLINE, _offline("data.source.cuont=3"))


def test_an_unregistered_kind_is_refused_naming_the_built_in_ones():
    with pytest.raises(RecipeError, match=r"data\.source.*no_such_pairs.*hh_rlhf"):
        load_recipe(OFFLINE, ["data.source={kind: no_such_pairs}", "data.test_source=null"])


def test_a_kind_registered_without_a_config_class_says_how_to_fix_it():
    register_source("configless_pairs")(lambda cfg, **_: ([], None))
    try:
        with pytest.raises(RecipeError, match=r"registered without a config class.*config="):
            load_recipe(OFFLINE, ["data.source={kind: configless_pairs}", "data.test_source=null"])
    finally:
        SOURCES.remove("configless_pairs")


def test_an_online_recipe_names_a_plugin_prompt_source():
    recipe = load_online_recipe(ONLINE, [f"plugins={PLUGIN}", PROMPTS])
    split = load_prompt_split(recipe.prompts, None)
    assert len(split.train) == 30 and len(split.eval) == 6 and not set(split.train) & set(split.eval)
    assert split.metadata[split.eval[0]] == {"answer": "0"}
    assert yaml.safe_load(online_recipe_to_yaml(recipe))["prompts"] == {
        "kind": "arithmetic_prompts", "count": 30, "num_eval_prompts": 6}


def test_a_run_trains_on_a_plugin_data_source(tmp_path):
    out = tmp_path / "run"
    args = _offline(f"output_dir={out}", f"model.from_config={TINY_GPT2}", "model.tokenizer=gpt2",
                    "data.max_length=64", "data.max_prompt_length=32", "sft.enabled=false",
                    "train.batch_size=4", "train.grad_accum=1", "train.max_steps=2", "train.warmup_steps=0",
                    "train.eval_every=null", "train.max_eval_examples=8", "eval=null")
    assert main(["run", OFFLINE, *args]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["preference"]["steps"] == 2
    assert yaml.safe_load((out / "recipe.yaml").read_text())["data"]["source"]["kind"] == "arithmetic_pairs"


def test_every_built_in_kind_has_its_config_in_the_union_and_no_other():
    """validate_plugin_kind sends the unions' kinds to the union: every kind alignkit registers (without a config
    class) must have its config there, and the union nothing alignkit does not register."""
    from typing import get_args

    from alignkit.data.config import BUILTIN_SOURCES
    from alignkit.data.prompt_sources import PROMPT_SOURCES
    from alignkit.online.config import BUILTIN_PROMPTS

    def alignkit_own(entry) -> bool:  # other tests register kinds of their own in this process
        fn = entry if callable(entry) else (entry.load or entry.prepare)
        return fn.__module__.startswith("alignkit.")

    for registry, builtin in ((SOURCES, BUILTIN_SOURCES), (PROMPT_SOURCES, BUILTIN_PROMPTS)):
        union_kinds = {get_args(m.model_fields["kind"].annotation)[0] for m in builtin}
        own = {k for k in registry.names() if alignkit_own(registry.get(k))}
        assert union_kinds == own and all(registry.config(k) is None for k in own), registry.kind
