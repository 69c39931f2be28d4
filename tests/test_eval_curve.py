"""``eval.every``: reward and KL along training, logged, reported, drawn, and without effect on the training."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import main
from alignkit.eval.curve import curve_points
from alignkit.recipe import RecipeError, load_recipe
from alignkit.report.compare_plots import plot_frontier
from alignkit.report.compare_table import comparison_row
from tests.test_compare import RECIPE, _overrides


def _run(hh_path, out, *extra):
    overrides = _overrides(hh_path, "train.max_steps=3", "train.save_every=1", "train.precision=fp32", *extra)
    assert main(["run", RECIPE, *overrides, f"output_dir={out}"]) == 0
    return json.loads((out / "report.json").read_text())


def test_a_run_with_eval_every_draws_a_curve_and_trains_exactly_as_one_without(hh_path, tmp_path):
    plain = _run(hh_path, tmp_path / "plain")
    curved = _run(hh_path, tmp_path / "curve", "eval.every=1")
    assert "reward_kl_curve" not in plain
    curve = curved["reward_kl_curve"]
    assert [p["step"] for p in curve] == [1, 2, 3]
    # The last point is the run's own final evaluation; the others were logged along training.
    assert curve[-1]["reward"] == curved["reward_kl"]["after"]["reward"]
    records = [json.loads(line) for line in (tmp_path / "curve" / "preference" / "metrics.jsonl").open()]
    logged = [r for r in records if "curve/kl" in r]
    assert [r["step"] for r in logged] == [1, 2]
    assert curve[0]["kl"]["estimate"] == logged[0]["curve/kl"]
    # Sampling along training leaves the training's random state alone: the same final policy, in fp32 exactly.
    for key in ("reward", "kl"):
        assert curved["reward_kl"]["after"][key] == plain["reward_kl"]["after"][key]
    assert (curved["stages"]["preference"]["eval_after"] == plain["stages"]["preference"]["eval_after"])

    row = comparison_row(label="dpo", loss="dpo", params={}, status="trained", report=curved)
    assert row["curve"] == curve
    assert plot_frontier([row], tmp_path / "frontier.png") == tmp_path / "frontier.png"


def test_curve_points_order_by_step_and_end_with_the_final_evaluation():
    def record(step, kl):
        return {"stage": "preference", "step": step, "curve/reward": 0.1 * step, "curve/reward_low": 0.0,
                "curve/reward_high": 1.0, "curve/kl": kl}

    final = {"reward": {"estimate": 0.9, "low": 0.8, "high": 1.0}, "kl": {"estimate": 3.0, "low": 2.0, "high": 4.0}}
    points = curve_points([record(4, 2.0), {"step": 4, "loss": 0.5}, record(2, 1.0)], final, 6)
    assert [p["step"] for p in points] == [2, 4, 6]
    assert points[0]["kl"] == {"estimate": 1.0, "low": None, "high": None}  # no interval logged: no bounds
    assert points[-1] == {"step": 6, **final}


def test_eval_every_needs_a_reward(hh_path):
    with pytest.raises(RecipeError, match="eval.every evaluates reward and KL along training: set eval.reward"):
        load_recipe(RECIPE, [*_overrides(hh_path), "eval.reward=null", "eval.every=2"])


def test_an_online_recipe_refuses_eval_every(tmp_path):
    from alignkit.recipe.online import load_online_recipe
    from tests.test_compare import ONLINE_RECIPE

    path = tmp_path / "rloo.yaml"
    path.write_text(ONLINE_RECIPE.replace("OUT", str(tmp_path / "run")) + "  every: 1\n")
    with pytest.raises(RecipeError, match="eval.every.*for offline recipes"):
        load_online_recipe(path)
