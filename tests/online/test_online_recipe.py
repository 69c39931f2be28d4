"""Online recipes: shipped ones validate; errors name file, line and path; the frontier reads run reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignkit.cli import main
from alignkit.recipe import RecipeError
from alignkit.recipe.online import OnlineRecipe, is_online_recipe, load_online_recipe
from alignkit.report.frontier import online_frontier_rows, plot_online_frontier

ONLINE_RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes" / "online").glob("*.yaml"))

BASE = """name: t
model:
  name_or_path: gpt2
prompts:
  kind: inline
  train: [a, b]
  eval: [c]
online:
  reward: vader_sentiment
"""


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", ONLINE_RECIPES, ids=[p.stem for p in ONLINE_RECIPES])
def test_every_shipped_online_recipe_validates(path):
    recipe = load_online_recipe(path)
    assert is_online_recipe(path)
    if recipe.prompts.kind == "reasoning_gym":  # a verifiable task: its own scorer, and accuracy measured
        assert recipe.online.rewards is not None and recipe.online.rewards[0].name == "reasoning_gym"
        assert recipe.accuracy is not None and recipe.accuracy.num_problems >= 200
    else:
        assert recipe.online.reward == "vader_sentiment"


def test_there_are_rloo_and_warp_recipes():
    assert {p.stem for p in ONLINE_RECIPES} >= {"rloo_smollm2_sentiment", "warp_smollm2_sentiment"}


def test_unknown_key_reports_file_line_and_path(tmp_path):
    path = _write(tmp_path, BASE + "  betta: 0.1\n")
    with pytest.raises(RecipeError) as err:
        load_online_recipe(path)
    assert f"{path}:10: online.betta: Extra inputs are not permitted" in str(err.value)


def test_overrides_and_cross_field_checks(tmp_path):
    path = _write(tmp_path, BASE)
    assert load_online_recipe(path, ["online.beta=0.3"]).online.beta == 0.3
    with pytest.raises(RecipeError, match="kl_control.target is required"):
        load_online_recipe(path, ["online.kl_control.kind=adaptive"])
    with pytest.raises(RecipeError, match="exactly one of 'reward'"):
        load_online_recipe(path, ["online.reward_model=some/folder"])
    with pytest.raises(RecipeError, match="needs anchor.kind 'ema'"):
        load_online_recipe(path, ["online.warp={runs: 2}"])
    with pytest.raises(RecipeError, match=r"adapter\.kind: WARP merges"):
        load_online_recipe(path, ["online.warp={runs: 2}", "online.anchor.kind=ema", "adapter={kind: lora}"])



def test_a_chosen_baseline_is_refused_online_prompts_have_no_chosen_responses(tmp_path):
    path = _write(tmp_path, BASE)
    judge = "eval={judge: {kind: reward, reward: vader_sentiment}, baseline: chosen}"
    with pytest.raises(RecipeError, match=r"eval\.baselines: 'chosen' .* but online prompts have none"):
        load_online_recipe(path, [judge])
    load_online_recipe(path, [judge.replace("chosen", "reference")])


@pytest.mark.parametrize("name", ["../escape", "/abs/run", "a/b", ".."])
def test_a_name_that_is_not_a_folder_name_is_refused(tmp_path, name):
    with pytest.raises(RecipeError, match=r"name: .* is not a plain folder name"):
        load_online_recipe(_write(tmp_path, BASE), [f"name={name!r}"])


def test_cli_validate_and_error(tmp_path, capsys):
    path = _write(tmp_path, BASE)
    assert main(["online", str(path), "--validate"]) == 0
    assert main(["online", str(path), "online.samples_per_prompt=0", "--validate"]) == 2
    assert "online.samples_per_prompt" in capsys.readouterr().err


def _interval(x: float) -> dict:
    return {"estimate": x, "low": x - 0.1, "high": x + 0.1}


def test_frontier_rows_from_online_reports(tmp_path):
    before = {"reward": _interval(0.1), "kl": _interval(0.0)}
    rloo = tmp_path / "rloo"
    rloo.mkdir()
    (rloo / "report.json").write_text(json.dumps({
        "method": "rloo", "online": {"beta": 0.05},
        "reward_kl": {"reward": "vader_sentiment", "before": before,
                      "after": {"reward": _interval(0.5), "kl": _interval(3.0)}}}))
    warp = tmp_path / "warp"
    warp.mkdir()
    (warp / "report.json").write_text(json.dumps({
        "method": "warp", "online": {"beta": 0.05}, "reward_kl": {"reward": "vader_sentiment", "before": before},
        "warp_front": [{"eta": e, "reward": _interval(0.1 + e), "kl": _interval(4 * e), "mean_length": 9.0,
                        "reward_name": "vader_sentiment"} for e in (0.0, 0.5, 1.0)]}))
    ppo = tmp_path / "ppo"  # a PPO run is labelled by its algorithm
    ppo.mkdir()
    (ppo / "report.json").write_text((rloo / "report.json").read_text().replace('"rloo"', '"ppo"'))
    rows = online_frontier_rows([rloo, warp, ppo])
    assert [(r["loss"], r["params"]) for r in rows] == [
        ("rloo", {"beta": 0.05}), ("warp front", {"eta": 0.0}), ("warp front", {"eta": 0.5}),
        ("warp front", {"eta": 1.0}), ("ppo", {"beta": 0.05})]
    assert rows[0]["reference_reward"]["estimate"] == 0.1
    assert plot_online_frontier([rloo, warp], tmp_path / "f.png").is_file()
    with pytest.raises(FileNotFoundError):
        online_frontier_rows([tmp_path / "missing"])


@pytest.mark.parametrize("kl, label", [
    ({"estimator": "k1", "placement": "none", "coef": None}, {"kl": "none"}),  # dapo, gspo, cispo, gmpo
    ({"estimator": "k3", "placement": "loss", "coef": 0.2}, {"beta": 0.2}),   # its own coefficient
    ({"estimator": "k3", "placement": "loss", "coef": None}, {"beta": 0.05}),  # online.beta's
    ({"estimator": "k1", "placement": "reward", "coef": 0.3}, {"beta": 0.3}),
    ({"estimator": "k1", "placement": "reward", "coef": None}, {"beta": 0.05}),
    (None, {"beta": 0.05}),                                                    # a report older than the parts
])
def test_an_online_rows_setting_names_what_weighs_its_kl_term(tmp_path, kl, label):
    """The table and plot label show beta only where a KL term uses it: a run without one says so."""
    run = tmp_path / "run"
    run.mkdir()
    online = {"beta": 0.05, **({"kl": kl} if kl else {})}
    point = {"estimate": 0.2, "low": 0.1, "high": 0.3}
    (run / "report.json").write_text(json.dumps({"method": "dapo", "online": online,
                                                 "reward_kl": {"after": {"reward": point, "kl": point}}}))
    assert online_frontier_rows([run])[0]["params"] == label


def test_run_and_validate_dispatch_on_the_online_key(tmp_path):
    path = _write(tmp_path, BASE)
    assert main(["validate", str(path)]) == 0
    # `alignkit run` on an online recipe goes to the online loop: here it stops at the bad override.
    assert main(["run", str(path), "online.max_new_tokens=0"]) == 2


def test_a_step_that_does_not_split_over_the_processes_is_refused_before_anything_is_written(tmp_path):
    """Each process samples an equal share of whole prompts: train.prompts_per_step must divide."""
    from alignkit.commands.online import OnlineRun
    from alignkit.online.parallel import check_world_size

    check_world_size(4, 1)
    check_world_size(4, 2)
    with pytest.raises(ValueError, match=r"train\.prompts_per_step=3 is not divisible by the 2 processes"):
        check_world_size(3, 2)
    recipe = load_online_recipe(_write(tmp_path, BASE), [f"output_dir={tmp_path / 'run'}", "train.prompts_per_step=3"])
    cpu = torch.device("cpu")
    OnlineRun(recipe).check_processes(1, cpu)
    OnlineRun(recipe).check_processes(3, cpu)
    with pytest.raises(ValueError, match=r"train\.prompts_per_step=3"):
        OnlineRun(recipe).check_processes(2, cpu)
    assert not (tmp_path / "run").exists()


def test_sharded_weights_are_refused_online(tmp_path):
    """The online loop replicates the model on every process (strategy ddp); fsdp is refused with the recipe."""
    with pytest.raises(RecipeError, match="distributed"):
        load_online_recipe(_write(tmp_path, BASE), ["distributed.strategy=fsdp"])
    assert load_online_recipe(_write(tmp_path, BASE), ["distributed.strategy=ddp"]).distributed.strategy == "ddp"


def test_offline_and_online_recipes_share_one_base_of_run_fields() -> None:
    """The fields every training recipe has are declared once (RunRecipe): the same names, types, defaults and
    descriptions in both schemas, first in both, so the saved recipes and the reference read alike."""
    from alignkit.recipe.model import Recipe, RunRecipe

    shared = list(RunRecipe.model_fields)
    assert shared == ["name", "output_dir", "seed", "plugins", "model", "adapter"]
    for schema in (Recipe, OnlineRecipe):
        assert issubclass(schema, RunRecipe)
        assert list(schema.model_fields)[: len(shared)] == shared
        for name in shared:  # a field declared again in a subclass (its own description or default) fails here
            assert repr(schema.model_fields[name]) == repr(RunRecipe.model_fields[name]), (schema.__name__, name)
