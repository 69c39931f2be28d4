"""pass@k of one verifiable-reward recipe over its seeds: mean before, after and paired gain, Student-t intervals.

Reads each run folder's ``recipe.yaml`` (its seed) and ``report.json`` (its ``accuracy`` section) and writes
the summary of :func:`alignkit.report.accuracy_seeds.accuracy_over_seeds` as JSON and Markdown.

Usage::

    python benchmarks/accuracy_seeds.py runs/grpo_s0 runs/grpo_s1 runs/grpo_s2 --out docs/results/x/seeds
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from alignkit.jsonio import read_json, to_json
from alignkit.report.accuracy_seeds import accuracy_over_seeds, accuracy_seeds_markdown


def run_accuracy(run_dir: Path) -> tuple[int, dict[str, Any]]:
    """The seed and the ``accuracy`` section of one finished run folder."""
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    report = read_json(run_dir / "report.json", what="a run's report")
    if not report.get("accuracy"):
        raise SystemExit(f"{run_dir / 'report.json'}: no accuracy section (the recipe has no accuracy:)")
    return int(recipe["seed"]), report["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    runs = {d: run_accuracy(d) for d in args.run_dirs}
    sections = {seed: section for seed, section in runs.values()}
    if len(sections) < len(runs):
        raise SystemExit("accuracy over seeds: two run folders trained the same seed")
    summary = accuracy_over_seeds(sections)
    summary["wall_seconds"] = {runs[d][0]: read_json(d / "report.json")["wall_seconds"] for d in args.run_dirs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(to_json(summary) + "\n", encoding="utf-8")
    table = accuracy_seeds_markdown(summary)
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
