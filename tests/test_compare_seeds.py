"""`alignkit compare --seeds`: Student-t intervals across seeds, paired differences, planning and a tiny run.

Interval figures are worked by hand here (the t quantiles are those of any statistics table), so a wrong
quantile (e.g. the normal 1.96), a population standard deviation or pairing by position instead of by seed
fails.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from alignkit.cli import main
from alignkit.commands.compare_plan import common_part, parse_seeds, plan_comparison
from alignkit.recipe import RecipeError
from alignkit.report.seeds import paired_differences, seed_summary, seeds_markdown, t_interval, t_quantile
from tests.test_compare import ONLINE_RECIPE, RECIPE, _overrides


@pytest.mark.parametrize(("df", "expected"), [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262),
                                              (30, 2.042)])
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=5e-4)
    assert t_quantile(0.99, 2) == pytest.approx(9.925, abs=5e-4)


def test_t_interval_by_hand():
    # mean 0.6, sample sd 0.1 (n - 1 = 2), half-width 4.3027 * 0.1 / sqrt(3) = 0.24842
    ci = t_interval([0.5, 0.6, 0.7])
    assert ci["estimate"] == pytest.approx(0.6) and ci["sd"] == pytest.approx(0.1) and ci["n"] == 3
    assert (ci["low"], ci["high"]) == pytest.approx((0.35158, 0.84842), abs=1e-5)
    single = t_interval([0.4])
    assert single["estimate"] == 0.4 and math.isnan(single["low"]) and math.isnan(single["high"])
    assert t_interval([]) is None
    with pytest.raises(ValueError, match="df 0"):
        t_quantile(0.95, 0)


def _row(group, seed, reward, kl, loss="dpo", half=0.05, accuracy=None):
    def ci(x, h):
        return {"estimate": x, "low": x - h, "high": x + h}

    return {"label": f"{group}_seed{seed}", "group": group, "seed": seed, "loss": loss, "params": {},
            "reward": ci(reward, half) if reward is not None else None, "kl": ci(kl, 0.5) if kl is not None else None,
            "heldout_accuracy": accuracy, "reward_name": "vader_sentiment",
            "reference_reward": ci(0.1, 0.05), "reference_kl": ci(0.0, 0.0)}


# dpo: rewards 0.50, 0.60, 0.70 over seeds 0, 1, 2; ipo: 0.55, 0.68, 0.74 on the same seeds, listed in
# another order (a pairing by position would pair 0.74 with 0.50), and a failed seed 3 on ipo only.
ROWS = [_row("dpo", 0, 0.50, 2.0, accuracy=0.5), _row("dpo", 1, 0.60, 3.0, accuracy=0.6),
        _row("dpo", 2, 0.70, 4.0, accuracy=0.7),
        _row("ipo", 2, 0.74, 4.5, "ipo"), _row("ipo", 0, 0.55, 2.5, "ipo"), _row("ipo", 1, 0.68, 3.5, "ipo"),
        _row("ipo", 3, None, None, "ipo")]


def test_seed_summary_by_hand():
    dpo, ipo = seed_summary([*ROWS, {"label": "single", "seed": None, "loss": "x"}])
    assert dpo["label"] == "dpo" and dpo["seeds"] == [0, 1, 2] and dpo["missing_seeds"] == []
    assert (dpo["reward"]["low"], dpo["reward"]["high"]) == pytest.approx((0.35158, 0.84842), abs=1e-5)
    # KL 2, 3, 4: sd 1, half-width 4.302653 / sqrt(3) = 2.484138
    assert (dpo["kl"]["low"], dpo["kl"]["high"]) == pytest.approx((0.515862, 5.484138), abs=1e-6)
    assert dpo["reward_eval_half_width"] == pytest.approx(0.05) and dpo["kl_eval_half_width"] == pytest.approx(0.5)
    assert dpo["heldout_accuracy"]["estimate"] == pytest.approx(0.6)
    assert ipo["seeds"] == [2, 0, 1] and ipo["missing_seeds"] == [3]
    assert ipo["reward"]["estimate"] == pytest.approx(0.656667, abs=1e-6)


def test_paired_difference_by_hand_is_sharper_than_the_two_intervals():
    (diff,) = paired_differences(ROWS)
    assert diff["baseline"] == "dpo" and diff["label"] == "ipo" and diff["seeds"] == [0, 1, 2]
    # per-seed differences 0.05, 0.08, 0.04: mean 0.056667, sd 0.020817, half 4.3027 * 0.020817 / sqrt(3) = 0.051713
    reward = diff["reward_difference"]
    assert reward["estimate"] == pytest.approx(0.056667, abs=1e-6)
    assert (reward["low"], reward["high"]) == pytest.approx((0.004954, 0.108380), abs=1e-5)
    assert diff["kl_difference"]["estimate"] == pytest.approx(0.5) and diff["kl_difference"]["sd"] == 0.0
    # The unpaired across-seed intervals overlap; the paired one excludes 0.
    dpo, ipo = seed_summary(ROWS)
    assert ipo["reward"]["low"] < dpo["reward"]["estimate"] < ipo["reward"]["high"]
    md = seeds_markdown(ROWS)
    assert "## Across seeds" in md and "| dpo | 0,1,2 | 0.600 [0.352, 0.848] | +-0.050 |" in md
    assert "| ipo | 2,0,1 (missing 3) |" in md
    assert "| ipo | 0,1,2 | 0.057 [0.005, 0.108] | higher |" in md
    (back,) = paired_differences(ROWS, baseline="ipo")
    assert back["label"] == "dpo" and back["reward_difference"]["estimate"] == pytest.approx(-0.056667, abs=1e-6)
    with pytest.raises(ValueError, match="not a compared method"):
        paired_differences(ROWS, baseline="simpo")
    assert seeds_markdown([{"label": "x", "seed": None}]) == ""


def test_plan_over_seeds_differs_only_in_seed_loss_and_folder(hh_path, tmp_path):
    out, plans = plan_comparison(RECIPE, ["dpo", "orpo"], sweeps=["loss.beta=0.1"], overrides=_overrides(hh_path),
                                 out=tmp_path / "cmp", seeds=[0, 7])
    assert [p.label for p in plans] == ["dpo_beta0.1_seed0", "dpo_beta0.1_seed7", "orpo_beta0.1_seed0",
                                        "orpo_beta0.1_seed7"]
    assert [p.group for p in plans] == ["dpo_beta0.1"] * 2 + ["orpo_beta0.1"] * 2
    assert [p.seed for p in plans] == [0, 7, 0, 7]
    first, second = plans[0].recipe, plans[1].recipe
    assert (first.seed, second.seed) == (0, 7) and second.run_dir() == out / "dpo_beta0.1_seed7"
    assert plans[2].recipe is None and "no parameter beta" in plans[2].skip_reason
    assert common_part(first, seeded=True) == common_part(second, seeded=True)
    assert common_part(first) != common_part(second)  # the seed is what differs
    # Without --seeds nothing changes: one run per combination, the recipe's own seed.
    _, plain = plan_comparison(RECIPE, ["dpo"], overrides=_overrides(hh_path), out=tmp_path / "p")
    assert [(p.label, p.group, p.seed) for p in plain] == [("dpo", "dpo", None)]


@pytest.mark.parametrize(("spec", "message"), [("0,x", "whole numbers"), ("0,-1", "whole numbers"), ("", "whole"),
                                               ("1,1", "repeated")])
def test_bad_seeds_are_refused(spec, message):
    with pytest.raises(RecipeError, match=message):
        parse_seeds(spec)
    assert parse_seeds(" 2, 0 ,1") == [2, 0, 1]


def test_cli_refuses_bad_seeds_and_a_baseline_without_seeds_before_anything_runs(hh_path, tmp_path, capsys):
    base = ["compare", RECIPE, "--losses", "dpo", *_overrides(hh_path), "--out", str(tmp_path / "cmp")]
    assert main([*base, "--seeds", "0,a"]) == 2
    assert main([*base, "--baseline", "dpo"]) == 2
    assert main([*base, "--seeds", "0,1", "--baseline", "ipo"]) == 2
    err = capsys.readouterr().err
    assert "--seeds '0,a': expected whole numbers" in err and "Traceback" not in err
    assert "--baseline: a paired comparison needs --seeds" in err
    assert "--baseline 'ipo': not a compared method; methods: dpo" in err
    assert not (tmp_path / "cmp").exists()


@pytest.fixture(scope="module")
def seeded_comparison(hh_path, tmp_path_factory):
    """A tiny `compare --seeds 0,1` of DPO and an online RLOO recipe: (its folder, comparison.json)."""
    tmp_path = tmp_path_factory.mktemp("seeded")
    online = tmp_path / "rloo.yaml"
    online.write_text(ONLINE_RECIPE.replace("OUT", str(tmp_path / "rloo_run")))
    out = tmp_path / "cmp"
    args = ["compare", RECIPE, "--losses", "dpo", "--seeds", "0,1", *_overrides(hh_path), "--out", str(out),
            "--online", str(online), "--baseline", "rloo_run"]
    assert main(args) == 0
    return out, json.loads((out / "comparison.json").read_text())


def test_compare_over_seeds_end_to_end_with_an_online_method(seeded_comparison):
    out, payload = seeded_comparison
    tmp_path = out.parent
    rows = {r["label"]: r for r in payload["rows"]}
    assert list(rows) == ["dpo_seed0", "dpo_seed1"]
    assert [yaml.safe_load((out / lab / "recipe.yaml").read_text())["seed"] for lab in rows] == [0, 1]
    # The seed reaches training: the two seeds of one objective end with different held-out figures.
    assert rows["dpo_seed0"]["heldout_margin"] != rows["dpo_seed1"]["heldout_margin"]
    online_rows = {r["label"]: r for r in payload["online_rows"]}
    assert set(online_rows) == {"rloo_run_seed0", "rloo_run_seed1"}
    assert {r["group"] for r in online_rows.values()} == {"rloo_run"}
    assert (tmp_path / "rloo_run_seed1" / "report.json").is_file()
    summary = {s["label"]: s for s in payload["across_seeds"]}
    assert list(summary) == ["dpo", "rloo_run"] and all(s["seeds"] == [0, 1] for s in summary.values())
    dpo = summary["dpo"]
    seeds = [rows["dpo_seed0"]["reward"]["estimate"], rows["dpo_seed1"]["reward"]["estimate"]]
    assert dpo["reward"]["estimate"] == pytest.approx(sum(seeds) / 2)
    # two seeds: half-width 12.706 * |a - b| / 2
    assert dpo["reward"]["high"] - dpo["reward"]["estimate"] == pytest.approx(12.7062 * abs(seeds[0] - seeds[1]) / 2,
                                                                              rel=1e-4)
    (paired,) = payload["paired"]
    assert (paired["baseline"], paired["label"], paired["seeds"]) == ("rloo_run", "dpo", [0, 1])
    md = (out / "comparison.md").read_text()
    assert "--seeds 0,1" in md and "## Across seeds" in md and "## Paired differences against rloo_run" in md
    assert (out / "frontier.png").stat().st_size > 0


def test_frontier_of_a_seeded_comparison_draws_what_compare_drew_offline_and_online(seeded_comparison, tmp_path):
    out, payload = seeded_comparison
    front, data = tmp_path / "front.png", tmp_path / "points" / "front.json"  # a folder made for it, as for the PNG
    args = ["frontier", "--comparison", str(out / "comparison.json"), "--out", str(front), "--data", str(data)]
    assert main(args) == 0
    assert front.stat().st_size > 0
    layout = json.loads(data.read_text())
    # The same drawing path as compare's own frontier: the same figures, point for point.
    assert layout == json.loads((out / "frontier.json").read_text())
    # Every seed's point, offline (rows) and online (online_rows), where its run put it.
    seeds = {(p["group"], p["seed"]): p for p in layout["seeds"]}
    assert set(seeds) == {("dpo", 0), ("dpo", 1), ("rloo_run", 0), ("rloo_run", 1)}
    for row in [*payload["rows"], *payload["online_rows"]]:
        point = seeds[(row["group"], row["seed"])]
        assert (point["reward"], point["kl"], point["loss"]) == (row["reward"], row["kl"], row["loss"])
    # Each method's mean over the seeds, with its across-seed interval, is the point with error bars.
    means = {p["label"]: p for p in layout["points"]}
    assert set(means) == {"dpo", "rloo_run"}
    for summary in payload["across_seeds"]:
        mean = means[summary["label"]]
        assert (mean["reward"], mean["kl"], mean["seeds"]) == (summary["reward"], summary["kl"], [0, 1])
        assert mean["reward"]["low"] < mean["reward"]["estimate"] < mean["reward"]["high"]
    assert layout["reference"]["reward"] == payload["rows"][0]["reference_reward"]
