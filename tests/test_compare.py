"""`alignkit compare`: planning, a tiny end-to-end comparison, reuse, resume, stale folders and failures."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import main
from alignkit.commands.compare import parse_sweep, plan_comparison
from alignkit.recipe import RecipeError
from alignkit.report.compare_table import comparison_row, find_win_rate, rows_to_markdown

RECIPE = "recipes/dpo_gpt2_hh.yaml"
TINY_GPT2 = "{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 1024}"


def _overrides(hh_path, *extra):
    """The tiny-GPT-2 override set of tests/test_run_e2e.py, trimmed: no SFT, 2 steps, a 2-prompt reward eval."""
    return [
        f"model.from_config={TINY_GPT2}", "model.tokenizer=gpt2",
        f"data.source.path={hh_path}", f"data.test_source.path={hh_path}",
        "data.max_examples=12", "data.max_length=48", "data.max_prompt_length=32",
        "sft.enabled=false",
        "train.batch_size=2", "train.grad_accum=1", "train.max_steps=2", "train.warmup_steps=0", "train.lr=1e-3",
        "train.optimizer=adamw", "train.eval_every=2", "train.max_eval_examples=4", "train.save_every=2",
        "eval.reward=vader_sentiment", "eval.num_prompts=2", "eval.samples_per_prompt=2", "eval.max_new_tokens=4",
        "eval.batch_size=4",
        *extra,
    ]


# ---------------------------------------------------------------------------------------------------------
# Planning (no training)

def test_plan_expands_losses_by_sweep_and_skips_missing_parameters(hh_path, tmp_path):
    out, plans = plan_comparison(RECIPE, ["dpo", "slic_hf", "simpo"], sweeps=["loss.beta=0.1,0.5"],
                                 overrides=_overrides(hh_path), out=tmp_path / "cmp")
    assert out == tmp_path / "cmp"
    assert [p.label for p in plans] == ["dpo_beta0.1", "dpo_beta0.5", "slic_hf_beta0.1", "slic_hf_beta0.5",
                                        "simpo_beta0.1", "simpo_beta0.5"]
    skipped = [p for p in plans if p.recipe is None]
    assert [p.loss for p in skipped] == ["slic_hf", "slic_hf"]
    assert "slic_hf has no parameter beta" in skipped[0].skip_reason
    dpo = plans[1].recipe
    assert dpo.loss == {"name": "dpo", "beta": 0.5} and dpo.run_dir() == tmp_path / "cmp" / "dpo_beta0.5"
    # The base recipe's DPO parameters do not leak into another objective.
    assert plans[4].recipe.loss == {"name": "simpo", "beta": 0.1}
    dumps = [p.recipe.model_dump() for p in plans if p.recipe is not None]
    for d in dumps:
        d.pop("loss"), d.pop("output_dir")
    assert all(d == dumps[0] for d in dumps)


def test_plan_without_sweep_labels_runs_by_loss_and_fixed_loss_overrides_apply_where_they_exist(hh_path, tmp_path):
    _, plans = plan_comparison(RECIPE, ["ipo", "orpo"], overrides=_overrides(hh_path, "loss.beta=0.3"),
                               out=tmp_path)
    assert [p.label for p in plans] == ["ipo", "orpo"]
    assert plans[0].recipe.loss == {"name": "ipo", "beta": 0.3}
    assert plans[1].recipe is None and "orpo has no parameter beta" in plans[1].skip_reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"losses": ["dpo"], "sweeps": ["train.lr=1e-4,1e-3"]}, "only loss parameters are swept"),
        ({"losses": ["dpo"], "sweeps": ["loss.beta"]}, "expected key=v1,v2"),
        ({"losses": ["dpo"], "sweeps": ["loss.beta=0.1,0.1"]}, "a value is repeated"),
        ({"losses": ["dpo", "dpo"]}, "an objective is repeated"),
        ({"losses": []}, "name at least one objective"),
        ({"losses": ["dpo"], "overrides": ["loss.name=ipo"]}, "chosen with --losses"),
        ({"losses": ["dpo", "no_such_loss"]}, "no_such_loss"),
    ],
)
def test_plan_rejects_bad_input_before_anything_runs(hh_path, tmp_path, kwargs, message):
    kwargs = {"overrides": _overrides(hh_path), **kwargs}
    losses = kwargs.pop("losses")
    with pytest.raises(RecipeError, match=message):
        plan_comparison(RECIPE, losses, out=tmp_path, **kwargs)


def test_parse_sweep_keeps_the_command_line_text():
    assert parse_sweep("loss.beta=0.05, 0.1,0.5") == ("loss.beta", ["0.05", "0.1", "0.5"])


# ---------------------------------------------------------------------------------------------------------
# Table rows from reports

def test_row_reads_accuracy_reward_kl_memory_and_median_throughput():
    ci = {"estimate": 0.5, "low": 0.4, "high": 0.6}
    report = {
        "stages": {"preference": {"steps": 3, "eval_after": {"eval/rewards/accuracies": 0.75,
                                                             "eval/rewards/margins": 0.2}}},
        "reward_kl": {"reward": "vader_sentiment", "before": {"reward": ci, "kl": {**ci, "estimate": 0.0}},
                      "after": {"reward": ci, "kl": {"estimate": 1.5, "low": 1.0, "high": 2.0}}},
        "wall_seconds": 12.0, "peak_rss_mib": 800.0,
    }
    metrics = [{"stage": "preference", "step": s, "tokens_per_second": t} for s, t in ((1, 10.0), (2, 100.0),
                                                                                        (3, 120.0))]
    metrics.append({"stage": "preference", "step": 3, "eval/loss": 0.6})
    row = comparison_row(label="dpo", loss="dpo", params={}, status="trained", report=report, metrics=metrics)
    assert row["heldout_accuracy"] == 0.75 and row["heldout_margin"] == 0.2 and row["steps"] == 3
    assert row["kl"] == {"estimate": 1.5, "low": 1.0, "high": 2.0} and row["reward_name"] == "vader_sentiment"
    assert row["tokens_per_second"] == 100.0  # the median, not the slow first step
    assert (row["peak_memory_mib"], row["memory_kind"]) == (800.0, "rss")
    assert row["win_rate"] is None
    md = rows_to_markdown([row], title="t")
    assert "| dpo | trained | 0.750 | 0.200 | - | 0.500 [0.400, 0.600] | 1.500 [1.000, 2.000] | 12.0 | 800 | 100 |" in md


def test_win_rate_of_a_judged_run_and_throughput_from_the_report_when_metrics_are_gone():
    report = {"stages": {"preference": {"last_train_metrics": {"tokens_per_second": 42.0}}},
              "judge": {"baseline": "chosen", "win_rate": {"estimate": 0.625, "low": 0.5, "high": 0.75}}}
    row = comparison_row(label="ipo", loss="ipo", params={"beta": "0.1"}, status="reused", report=report)
    assert row["tokens_per_second"] == 42.0 and row["win_rate"]["estimate"] == 0.625
    assert "0.625 [0.500, 0.750] (vs chosen)" in rows_to_markdown([row], title="")


def test_win_rate_is_found_in_the_shapes_a_judge_report_may_take():
    assert find_win_rate({}) is None
    assert find_win_rate({"win_rate": {"estimate": 0.6, "low": 0.5, "high": 0.7}})["high"] == 0.7
    assert find_win_rate({"judge": {"win_rate": {"win_rate": 0.6, "ci": [0.5, 0.7]}}})["low"] == 0.5
    assert find_win_rate({"judge": {"win_rate": 0.6}})["estimate"] == 0.6


# ---------------------------------------------------------------------------------------------------------
# End to end: 2 losses x 2 betas on a tiny GPT-2 and the shipped HH fixture

def _rows(out):
    return {r["label"]: r for r in json.loads((out / "comparison.json").read_text())["rows"]}


def _check_trained(row, steps=2):
    assert row["status"] == "trained" and row["steps"] == steps
    assert 0.0 <= row["heldout_accuracy"] <= 1.0 and row["heldout_margin"] is not None
    assert row["reward"]["low"] <= row["reward"]["estimate"] <= row["reward"]["high"]
    assert row["kl"]["low"] <= row["kl"]["estimate"] <= row["kl"]["high"]
    assert row["tokens_per_second"] > 0 and row["wall_seconds"] > 0 and row["peak_memory_mib"] > 0
    assert row["win_rate"] is None


def test_compare_end_to_end_reuses_resumes_and_refuses_stale_folders(hh_path, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", RECIPE, "--losses", "dpo,orpo", "--sweep", "loss.beta=0.1,0.5", *_overrides(hh_path),
            "--out", str(out)]
    assert main(args) == 0
    rows = _rows(out)
    trained = ["dpo_beta0.1", "dpo_beta0.5"]
    assert list(rows) == [*trained, "orpo_beta0.1", "orpo_beta0.5"]
    for label in trained:
        _check_trained(rows[label])
    assert rows["orpo_beta0.1"]["status"] == "skipped" and "no parameter beta" in rows["orpo_beta0.1"]["note"]
    assert not (out / "orpo_beta0.1").exists()
    for name in ("comparison.md", "frontier.png", "training_curves.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "comparison.md").read_text()
    assert "| dpo_beta0.5 | trained |" in md and "![frontier](frontier.png)" in md
    assert "skipped" in capsys.readouterr().err

    # Second invocation: a complete run is reused (no retraining); an interrupted one is resumed.
    metrics = {lab: (out / lab / "preference" / "metrics.jsonl") for lab in trained}
    stamp, text = metrics["dpo_beta0.1"].stat().st_mtime_ns, metrics["dpo_beta0.5"].read_text()
    (out / "dpo_beta0.5" / "report.json").unlink()
    assert main(args) == 0
    rows = _rows(out)
    assert [rows[lab]["status"] for lab in trained] == ["reused", "resumed"]
    assert metrics["dpo_beta0.1"].stat().st_mtime_ns == stamp
    assert metrics["dpo_beta0.5"].read_text() == text  # resumed at its last checkpoint: nothing retrained
    assert (out / "dpo_beta0.5" / "report.json").is_file() and rows["dpo_beta0.5"]["heldout_accuracy"] is not None

    # A different budget in the same folders is refused before anything runs; the table stays as it was.
    table = (out / "comparison.md").read_text()
    capsys.readouterr()
    assert main([*args, "train.max_steps=3"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "2 run folder(s) hold a different recipe" in err and "--overwrite" in err
    assert "train.max_steps: 2 -> 3" in err
    assert (out / "comparison.md").read_text() == table


@pytest.mark.slow
def test_compare_two_objectives_by_two_betas_share_data_model_and_seed(hh_path, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", RECIPE, "--losses", "dpo,ipo,slic_hf", "--sweep", "loss.beta=0.1,0.5", *_overrides(hh_path),
            "--out", str(out)]
    assert main(args) == 0
    rows = _rows(out)
    trained = ["dpo_beta0.1", "dpo_beta0.5", "ipo_beta0.1", "ipo_beta0.5"]
    assert list(rows) == [*trained, "slic_hf_beta0.1", "slic_hf_beta0.5"]
    for label in trained:
        _check_trained(rows[label])
    # Same data, model and seed: every run sees the same held-out log-probs before its first step.
    before = {lab: json.loads((out / lab / "report.json").read_text())["stages"]["preference"]["eval_before"]
              for lab in trained}
    assert before["dpo_beta0.1"]["eval/loss"] == pytest.approx(0.6931, abs=1e-4)
    assert len({b["eval/logps/chosen"] for b in before.values()}) == 1
    # Same reference samples: the "before" reward of every run is identical.
    assert len({json.dumps(rows[lab]["reference_reward"]) for lab in trained}) == 1


def test_a_failing_run_is_reported_and_the_others_continue(hh_path, tmp_path):
    out = tmp_path / "cmp"
    # A loss that fails in training (validation cannot know: it fails on purpose); SimPO must still train.
    # (A loss that cannot work with the recipe, e.g. DPO with reference.mode none, is refused by validation.)
    from alignkit.losses import LOSSES

    plugin = tmp_path / "failing_loss.py"
    plugin.write_text("from alignkit.losses import register_loss\n\n\n@register_loss('fails_in_training')\n"
                      "def fails_in_training(stats, cfg):\n    raise RuntimeError('this loss fails on purpose')\n")
    args = ["compare", RECIPE, "--plugin", str(plugin), "--losses", "fails_in_training,simpo", *_overrides(hh_path),
            "--out", str(out)]
    try:
        assert main(args) == 1
    finally:
        LOSSES.remove("fails_in_training")  # registries are per process: leave it as other tests expect
    rows = _rows(out)
    assert rows["fails_in_training"]["status"] == "failed" and "fails on purpose" in rows["fails_in_training"]["note"]
    assert rows["simpo"]["status"] == "trained" and rows["simpo"]["heldout_accuracy"] is not None


# ---------------------------------------------------------------------------------------------------------
# Online runs on the same plot

ONLINE_RECIPE = f"""name: tiny_rloo
output_dir: OUT
seed: 0
model:
  name_or_path: gpt2
  from_config: {TINY_GPT2}
  tokenizer: gpt2
prompts:
  kind: inline
  train: [The weather today, My favourite food, A story about, In the morning]
  eval: [The cat, A long day]
online:
  reward: vader_sentiment
  samples_per_prompt: 2
  max_new_tokens: 4
  beta: 0.05
train:
  optimizer: adamw
  lr: 0.001
  prompts_per_step: 2
  max_steps: 1
  device: cpu
eval:
  reward: vader_sentiment
  num_prompts: 2
  samples_per_prompt: 2
  max_new_tokens: 4
  batch_size: 4
"""


def test_compare_places_online_runs_on_the_frontier_and_states_how_their_evaluation_differs(hh_path, tmp_path,
                                                                                          capsys):
    online = tmp_path / "rloo.yaml"
    online.write_text(ONLINE_RECIPE.replace("OUT", str(tmp_path / "rloo_run")))
    out = tmp_path / "cmp"
    args = ["compare", RECIPE, "--losses", "dpo", *_overrides(hh_path), "--out", str(out), "--online", str(online)]
    assert main(args) == 0
    payload = json.loads((out / "comparison.json").read_text())
    (row,) = payload["online_rows"]
    assert row["loss"] == "rloo" and row["params"] == {"beta": 0.05} and row["label"] == "rloo_run"
    assert row["reward"]["low"] <= row["reward"]["estimate"] <= row["reward"]["high"]
    assert row["kl"]["low"] <= row["kl"]["estimate"] <= row["kl"]["high"]
    md = " ".join((out / "comparison.md").read_text().split())
    assert "## Online runs" in md and "| rloo_run | rloo | beta=0.05 | trained |" in md
    # Same reward and sampling, different prompts: said next to the table, not hidden.
    assert "rloo_run is evaluated differently from the offline runs" in md
    assert "prompts: data.source.kind 'hh_rlhf' vs prompts.kind 'inline'" in md
    assert (out / "frontier.png").stat().st_size > 0

    # A finished online run is reused, not retrained.
    report = tmp_path / "rloo_run" / "report.json"
    stamp = report.stat().st_mtime_ns
    assert main(args) == 0
    assert report.stat().st_mtime_ns == stamp
    assert "| rloo_run | rloo | beta=0.05 | reused |" in (out / "comparison.md").read_text()

    # A path that is neither an online run folder nor an online recipe is refused before anything runs.
    capsys.readouterr()
    assert main([*args[:-1], RECIPE]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--online recipes/dpo_gpt2_hh.yaml: not an online run folder nor a recipe with an 'online:' section" in err


def test_compare_without_losses_compares_online_recipes_alone(tmp_path, capsys):
    """An online recipe as the recipe and no --losses: its run and the --online ones, one table and plot."""
    rloo, grpo = tmp_path / "rloo.yaml", tmp_path / "grpo.yaml"
    rloo.write_text(ONLINE_RECIPE.replace("OUT", str(tmp_path / "rloo_run")))
    grpo.write_text(ONLINE_RECIPE.replace("OUT", str(tmp_path / "grpo_run")).replace("online:\n",
                                                                                      "online:\n  algorithm: grpo\n"))
    out = tmp_path / "cmp"
    assert main(["compare", str(rloo), "--online", str(grpo), "--out", str(out)]) == 0
    payload = json.loads((out / "comparison.json").read_text())
    assert [(r["label"], r["loss"]) for r in payload["online_rows"]] == [("rloo_run", "rloo"), ("grpo_run", "grpo")]
    assert payload["rows"] == [] and payload["losses"] == []
    md = (out / "comparison.md").read_text()
    assert "| run | status |" not in md and "tokens/s" not in md  # no empty offline table, nor its legend
    assert md.startswith(f"# {out.name}: online runs compared\n")  # named by its folder, not its first run
    assert "| rloo_run | rloo | beta=0.05 | trained |" in md and "| grpo_run | grpo |" in md
    assert f"alignkit compare {rloo} --online {grpo}" in md  # the recorded command reruns it
    assert (out / "frontier.png").stat().st_size > 0

    # Overrides and sweeps are the offline runs' (each online recipe sets its own); an offline recipe needs --losses.
    capsys.readouterr()
    assert main(["compare", str(rloo), "--out", str(out), "train.max_steps=2"]) == 2
    assert "overrides: apply to the offline runs of --losses" in capsys.readouterr().err
    assert main(["compare", RECIPE, "--online", str(grpo), "--out", str(out)]) == 2
    assert "--losses: name at least one objective" in " ".join(capsys.readouterr().err.split())


def test_eval_differences_between_the_shipped_offline_and_online_sentiment_recipes():
    from alignkit.commands.compare_online import eval_differences
    from alignkit.recipe import load_recipe
    from alignkit.recipe.online import load_online_recipe

    offline = load_recipe("recipes/compare_smollm2_sentiment.yaml")
    assert eval_differences(offline, load_online_recipe("recipes/online/rloo_smollm2_sentiment.yaml")) == [
        "eval.num_prompts: 32 vs 64"]
    same = load_recipe("recipes/dpo_smollm2_sentiment.yaml")
    assert eval_differences(same, load_online_recipe("recipes/online/warp_smollm2_sentiment.yaml")) == []


def test_a_folder_written_before_a_new_setting_existed_is_not_stale(hh_path, tmp_path):
    import yaml

    from alignkit.commands.compare import _folder_state
    from alignkit.recipe import recipe_to_yaml
    from alignkit.workflow.run_folder import RUN_MARKER

    _, (plan,) = plan_comparison(RECIPE, ["dpo"], overrides=_overrides(hh_path), out=tmp_path / "cmp")
    saved = yaml.safe_load(recipe_to_yaml(plan.recipe))
    del saved["model"]["padding_free"]  # as written by a version without the setting
    plan.recipe.run_dir().mkdir(parents=True)
    (plan.recipe.run_dir() / RUN_MARKER).write_text("")  # a folder a run claimed
    (plan.recipe.run_dir() / "recipe.yaml").write_text(yaml.safe_dump(saved))
    assert _folder_state(plan.recipe) == ("partial", "")
    saved["model"]["padding_free"] = False  # a real difference still counts
    (plan.recipe.run_dir() / "recipe.yaml").write_text(yaml.safe_dump(saved))
    assert _folder_state(plan.recipe)[0] == "stale"


INTERRUPTING_LOSS = '''
import os
from pathlib import Path

from alignkit.losses import register_loss
from alignkit.losses.dpo import DPOConfig, dpo

calls = 0


@register_loss("dpo_ctrl_c", config=DPOConfig, needs_reference=True, description="DPO; Ctrl-C once at step 2")
def dpo_ctrl_c(stats, cfg):
    """DPO, as if the user pressed Ctrl-C during the second step of the first process that reaches it."""
    global calls
    calls += 1
    mark = Path(os.environ["ALIGNKIT_TEST_CTRL_C"])
    if calls == 2 and mark.exists():
        mark.unlink()
        raise KeyboardInterrupt
    return dpo(stats, cfg)
'''


def test_after_ctrl_c_compare_prints_a_command_that_continues_it(hh_path, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the middle of a comparison's second run; the printed command, run as printed, reuses the
    finished run and resumes the interrupted one from its checkpoint (no --resume, which compare rejects)."""
    import shlex

    plugin = tmp_path / "ctrl_c.py"
    plugin.write_text(INTERRUPTING_LOSS)
    mark = tmp_path / "press-ctrl-c"
    mark.touch()
    monkeypatch.setenv("ALIGNKIT_TEST_CTRL_C", str(mark))
    out = tmp_path / "cmp"
    args = ["compare", RECIPE, "--losses", "dpo,dpo_ctrl_c", "--plugin", str(plugin), *_overrides(hh_path),
            "train.eval_every=null", "train.save_every=1", "--out", str(out)]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert not mark.exists() and "--resume" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("interrupted: ")]
    again = shlex.split(line.split(": alignkit ", 1)[1])
    assert again[0] == "compare" and main(again) == 0
    rows = _rows(out)
    assert rows["dpo"]["status"] == "reused" and rows["dpo_ctrl_c"]["status"] == "resumed"
    assert "resumed from" in capsys.readouterr().err


def test_the_recorded_command_names_its_plugins():
    """comparison.md's command reruns the comparison: the --plugin files that define its losses are in it."""
    from alignkit.commands.compare import _protocol_facts

    facts = _protocol_facts("r.yaml", ["dpo", "sigmoid_hinge"], None, ["loss.beta=0.1,0.2"], ["train.max_steps=4"],
                            ["my_losses.py"], 3.0)
    assert facts[0] == ("- command: `alignkit compare r.yaml --losses dpo,sigmoid_hinge --plugin my_losses.py "
                        "--sweep loss.beta=0.1,0.2 train.max_steps=4`")
