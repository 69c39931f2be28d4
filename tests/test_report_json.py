"""report.json and comparison.json are strict JSON: an interval bound that is not finite is written as null,
and everything that reads those files back (tables, Markdown, plots) accepts a null bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from alignkit.report.compare_table import render_comparison
from alignkit.report.format import format_interval, to_json
from alignkit.report.frontier import plot_online_frontier, rows_from_comparison
from alignkit.report.plots import plot_reward_kl
from alignkit.report.tables import render_report, write_report

NAN = float("nan")


def _strict(path: Path):
    """The file parsed as strict JSON (NaN / Infinity refused)."""
    def refuse(constant: str):
        raise AssertionError(f"{path.name} holds {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


def _interval(estimate: float) -> dict[str, float]:
    return {"estimate": estimate, "low": NAN, "high": NAN}  # what one sample gives


def test_report_json_writes_non_finite_bounds_as_null_and_reads_back(tmp_path):
    """Before: report.json held bare NaN (not JSON), and a None bound broke format_interval."""
    report = {"recipe": "r", "objective": "rloo", "stages": {},
              "reward_kl": {"reward": "vader", "before": {"reward": _interval(0.1), "kl": _interval(0.0)},
                            "after": {"reward": _interval(0.4), "kl": _interval(2.0)},
                            "reward_gain": {"estimate": 0.3, "low": float("-inf"), "high": 0.5}}}
    write_report(report, tmp_path, console=Console(file=None, quiet=True))
    loaded = _strict(tmp_path / "report.json")
    assert loaded["reward_kl"]["after"]["reward"] == {"estimate": 0.4, "low": None, "high": None}
    assert loaded["reward_kl"]["reward_gain"]["low"] is None
    assert format_interval(loaded["reward_kl"]["after"]["reward"]) == "0.400"
    assert "0.400" in render_report(loaded, console=Console(quiet=True))
    assert plot_reward_kl(loaded["reward_kl"], tmp_path / "again.png").is_file()  # None bounds: no error bar


def test_comparison_json_writes_non_finite_bounds_as_null_and_the_frontier_reads_it(tmp_path):
    row = {"label": "dpo", "status": "done", "loss": "dpo", "params": {"beta": 0.1},
           "reward": _interval(0.5), "kl": {"estimate": 1.0, "low": 0.5, "high": NAN}, "reward_name": "vader",
           "reference_reward": _interval(0.2), "reference_kl": None}
    render_comparison([row], console=Console(quiet=True), title="t", json_path=tmp_path / "comparison.json")
    rows = rows_from_comparison(tmp_path / "comparison.json")
    _strict(tmp_path / "comparison.json")
    assert rows[0]["kl"] == {"estimate": 1.0, "low": 0.5, "high": None}
    assert plot_online_frontier([], tmp_path / "front.png", extra_rows=rows) is not None


@pytest.mark.parametrize("value", [NAN, float("inf"), float("-inf")])
def test_to_json_never_writes_a_non_finite_number(value):
    import numpy as np

    text = to_json({"a": [value, 1.5, (value,)], "b": np.float32(value), "c": np.float32(2.0)})
    assert json.loads(text) == {"a": [None, 1.5, [None]], "b": None, "c": 2.0}


ROOT = Path(__file__).resolve().parents[1]


def _unchecked_json_writes(source: str) -> list[int]:
    """Lines of ``json.dump``/``json.dumps`` calls that do not pass ``allow_nan=False``."""
    import ast

    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("dump", "dumps")
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "json"):
            strict = any(k.arg == "allow_nan" and isinstance(k.value, ast.Constant) and k.value.value is False
                         for k in node.keywords)
            if not strict:
                lines.append(node.lineno)
    return lines


def test_every_json_the_project_writes_goes_through_the_strict_writer():
    """JSON is written by ``alignkit.jsonio.to_json`` (non-finite numbers become null); the few direct
    ``json.dumps`` calls left (hash keys) refuse NaN rather than write it."""
    assert _unchecked_json_writes("import json\njson.dumps({'a': 1.0})\n") == [2]  # the check itself can fail
    assert _unchecked_json_writes("import json\njson.dumps({'a': 1.0}, allow_nan=False)\n") == []
    found = []
    for folder in ("alignkit", "benchmarks", "scripts", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name != "jsonio.py":
                found += [f"{path.relative_to(ROOT)}:{line}" for line in _unchecked_json_writes(path.read_text())]
    assert found == []


def test_ppo_writes_a_null_explained_variance_when_the_returns_do_not_vary(tmp_path, gpt2_tokenizer):
    """A constant reward on the first rollout (policy = anchor: no KL) with gamma = lam = 1 gives every token the
    same return: the explained variance is undefined, and metrics.jsonl stays strict JSON with ``null`` there."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "online"))
    from tiny_online import direct_trainer

    trainer = direct_trainer(tmp_path, gpt2_tokenizer, {"algorithm": "ppo", "ppo": {"epochs": 1, "minibatch_size": 4, "lam": 1.0}},
                             max_steps=1, save_every=None, ema=False)
    trainer.score = lambda prompts, texts: [1.0] * len(texts)
    trainer.fit()
    (record,) = [json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.jsonl holds {c}"))
                 for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["explained_variance"] is None


def _ci(estimate: float) -> dict[str, float]:
    return {"estimate": estimate, "low": estimate - 0.1, "high": estimate + 0.1}


def test_online_sections_are_written_by_the_report_writer_once(tmp_path):
    """report.md of an online run (proxy vs true reward, WARP front and its plot) comes from write_report,
    in one write; no command formats Markdown or appends to report.md."""
    report = {"recipe": "r", "objective": "rloo", "stages": {}, "method": "warp", "online": {"beta": 0.05},
              "reward_kl": {"reward": "vader", "before": {"reward": _ci(0.1), "kl": _ci(0.0)},
                            "after": {"reward": _ci(0.5), "kl": _ci(2.0)}, "reward_gain": _ci(0.4)},
              "proxy_vs_true": {"true_reward_name": "vader", **{
                  key: {"label": key, "proxy_reward": _ci(0.2), "true_reward": _ci(0.3), "kl": _ci(1.0)}
                  for key in ("before", "after")}},
              "warp_front": [{"eta": e, "reward": _ci(e), "kl": _ci(2 * e), "mean_length": 9.0,
                              "reward_name": "vader"} for e in (0.0, 1.0)]}
    write_report(report, tmp_path, console=Console(file=None, quiet=True))
    text = (tmp_path / "report.md").read_text()
    assert text.count("## Proxy vs true reward (vader measured") == 1 and text.count("## WARP front") == 1
    assert "![warp front](plots/warp_front.png)" in text and (tmp_path / "plots" / "warp_front.png").is_file()
    assert text.index("Proxy vs true") < text.index("WARP front")
    commands = Path(__file__).resolve().parents[1] / "alignkit" / "commands"
    assert not [m.name for m in commands.glob("*.py") if '"report.md"' in m.read_text()]
    assert 'open("a")' not in (commands / "online.py").read_text()
