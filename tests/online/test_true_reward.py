"""online.true_reward: validated like online.reward, logged beside the proxy reward, plotted against KL."""

from __future__ import annotations

import json

import pytest
from test_online_e2e import REWARD, _recipe

from alignkit.commands.online import run_online_recipe
from alignkit.online.config import OnlineConfig
from alignkit.recipe import RecipeError
from alignkit.report.frontier import plot_proxy_vs_true, proxy_true_series, running_mean


def test_true_reward_is_optional_and_strict():
    assert OnlineConfig(reward="vader_sentiment").true_reward is None
    assert OnlineConfig(reward_model="some/rm", true_reward="vader_sentiment").true_reward == "vader_sentiment"


def test_unknown_true_reward_is_a_validation_error(tmp_path):
    with pytest.raises(RecipeError, match=r"online\.true_reward: unknown reward function 'nosuch'; registered:"):
        _recipe(tmp_path, "online.true_reward=nosuch")
    assert _recipe(tmp_path, "online.true_reward=vader_sentiment").online.true_reward == "vader_sentiment"


def _metrics(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_proxy_true_series_and_plot_from_a_hand_written_metrics_file(tmp_path):
    run = tmp_path / "run_a"
    _metrics(run / "online" / "metrics.jsonl", [
        {"step": 2, "reward": 1.5, "true_reward": 0.4, "kl": 1.0},
        {"step": 1, "reward": 0.5, "true_reward": 0.2, "kl": 0.0},
        {"step": 2, "eval/loss": 0.3},  # a record without the three keys is skipped
        {"step": 3, "reward": 3.0, "true_reward": 0.1, "kl": 4.0},
    ])
    series = proxy_true_series(run)  # a run folder: its online/metrics.jsonl
    assert series == {"kl": [0.0, 1.0, 4.0], "reward": [0.5, 1.5, 3.0], "true_reward": [0.2, 0.4, 0.1]}
    other = _metrics(tmp_path / "b.jsonl", [{"step": 1, "reward": 0.1, "true_reward": 0.1, "kl": 0.5}])
    out = plot_proxy_vs_true([run, other], tmp_path / "plots" / "proxy.png", title="t")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no record with kl, reward and true_reward"):
        proxy_true_series(_metrics(tmp_path / "c.jsonl", [{"step": 1, "reward": 1.0, "kl": 0.0}]))
    with pytest.raises(FileNotFoundError):
        proxy_true_series(tmp_path / "missing")


def test_running_mean_by_hand():
    assert running_mean([1.0, 2.0, 6.0, 3.0], 2) == [1.5, 4.0, 4.5]
    assert running_mean([1.0, 2.0], 1) == [1.0, 2.0]
    assert running_mean([1.0, 2.0, 3.0], 3) == [2.0]
    with pytest.raises(ValueError, match="window 3"):
        running_mean([1.0, 2.0], 3)


def test_rollouts_log_the_true_reward_beside_the_proxy(tmp_path):
    """Trained on the tiny task's reward; VADER measured on the same samples, logged, reported and plotted."""
    recipe = _recipe(tmp_path, "train.max_steps=2", "online.true_reward=vader_sentiment")
    summary = run_online_recipe(recipe)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "online" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert {"reward", "true_reward", "kl"} <= set(r) and -1.0 <= r["true_reward"] <= 1.0
    assert (run / "plots" / "proxy_vs_true.png").is_file()
    section = summary.report["proxy_vs_true"]
    assert section["true_reward_name"] == "vader_sentiment"
    assert section["before"]["kl"]["estimate"] == 0.0
    assert {"proxy_reward", "true_reward", "kl"} <= set(section["after"])
    assert summary.report["reward_kl"]["reward"] == REWARD
    assert "Proxy vs true reward" in (run / "report.md").read_text()


def test_without_true_reward_nothing_is_added(tmp_path):
    summary = run_online_recipe(_recipe(tmp_path, "train.max_steps=1", "eval=null"))
    assert "true_reward" not in summary.results["online"].history[-1]
    assert "proxy_vs_true" not in summary.report and not (tmp_path / "run" / "plots" / "proxy_vs_true.png").exists()
