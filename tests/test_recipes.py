"""Recipes: every shipped recipe validates; errors name the YAML path and line; overrides work."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.recipe import RecipeError, apply_overrides, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    from alignkit.recipe.online import is_online_recipe, load_online_recipe

    if is_online_recipe(path):
        assert load_online_recipe(path).online
        return
    recipe = load_recipe(path)
    assert recipe.objective().terms


def test_there_are_recipes():
    assert any(p.stem == "dpo_gpt2_hh" for p in RECIPES)


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


BASE = """name: t
model:
  name_or_path: gpt2
data:
  source:
    kind: jsonl
    path: pairs.jsonl
loss:
  name: dpo
  beta: 0.1
"""


def test_unknown_key_is_reported_with_path_and_line(tmp_path):
    path = _write(tmp_path, BASE + "train:\n  lr: 1e-5\n  max_stpes: 3\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert f"{path}:13: train.max_stpes: Extra inputs are not permitted" in str(err.value)


def test_loss_parameter_errors_name_the_parameter(tmp_path):
    path = _write(tmp_path, BASE.replace("beta: 0.1", "beta: -1\n  bta: 2"))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    text = str(err.value)
    assert f"{path}:10: loss.beta: Input should be greater than 0" in text
    assert "loss.bta: unknown parameter of loss 'dpo'" in text


def test_unknown_loss_lists_registered_ones(tmp_path):
    with pytest.raises(RecipeError, match="unknown loss 'dpoo'; registered: .*simpo"):
        load_recipe(_write(tmp_path, BASE), ["loss.name=dpoo"])


def test_overrides_set_nested_values_and_swap_objective(tmp_path):
    recipe = load_recipe(_write(tmp_path, BASE), ["loss.beta=0.3", "train.max_steps=50", "loss.name=simpo"])
    assert recipe.loss == {"name": "simpo"}
    assert recipe.train.max_steps == 50
    recipe = load_recipe(_write(tmp_path, BASE), ["loss.beta=0.3"])
    assert recipe.objective().terms[0].config.beta == 0.3


def test_override_indexes_a_loss_list():
    data = {"loss": [{"name": "dpo"}, {"name": "sft", "weight": 1.0}]}
    apply_overrides(data, ["loss[1].weight=0.1", "loss.0.beta=0.2"])
    assert data["loss"] == [{"name": "dpo", "beta": 0.2}, {"name": "sft", "weight": 0.1}]
    with pytest.raises(RecipeError, match="no index 5"):
        apply_overrides(data, ["loss[5]=1"])
    with pytest.raises(RecipeError, match="expected key=value"):
        apply_overrides(data, ["loss.beta"])


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    path = _write(tmp_path, BASE + "train:\n  lr: -1\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "Traceback" not in err
    assert main(["validate", str(_write(tmp_path, BASE))]) == 0


def test_cli_lists_losses(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name in ("dpo", "ipo", "slic_hf", "simpo", "orpo", "reward_bt", "reward_kway"):
        assert name in out
