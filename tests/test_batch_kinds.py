"""Batch kinds are registered objects: nothing outside their registry tests a kind by its name, and every
loss, source, collate function and statistics function is tied to a registered kind."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import alignkit.data  # noqa: F401  (attaches the collate functions)
import alignkit.train.forward  # noqa: F401  (attaches the statistics functions)
from alignkit.data import SOURCES
from alignkit.data.sources import sources_feeding
from alignkit.losses import (
    BATCH_KINDS,
    KWAY,
    LOGPS,
    SCORES,
    UNPAIRED,
    BatchKind,
    build_objective,
    list_losses,
    losses_reading,
    register_loss,
)
from alignkit.losses.base import LOSSES, LossOutput, PreferenceStats
from alignkit.registry import RegistryError
from alignkit.train.metrics import stage_metric_names

PACKAGE = Path(__file__).resolve().parents[1] / "alignkit"
REGISTRY_MODULE = PACKAGE / "losses" / "batch_kinds.py"
# Every word a kind has gone by: the kinds' names and the word sources used for preference pairs.
KIND_WORDS = {*BATCH_KINDS.names(), "pairs"}


def _kind_words(node: ast.AST) -> list[str]:
    """The kind words among a node's string constants (a constant, or a tuple/list/set of them)."""
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and i.value in KIND_WORDS]


def string_tests_of_kinds(source: str) -> list[tuple[int, str]]:
    """(line, word) of each comparison with a kind word (``==``, ``!=``, ``in``, ``match``) and each mapping
    keyed by several kind words (a dispatch table): the ways a kind has been tested by string. One kind word
    as a key among others is a metric or file field (``"logps"``), not a kind."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                found += [(node.lineno, w) for w in _kind_words(side)]
        elif isinstance(node, ast.Dict):  # a table over kinds: two or more kind words as keys
            words = [w for key in node.keys if key is not None for w in _kind_words(key)]
            found += [(node.lineno, w) for w in words] if len(set(words)) > 1 else []
        elif isinstance(node, ast.match_case) and isinstance(node.pattern, ast.MatchValue):
            found += [(node.pattern.lineno, w) for w in _kind_words(node.pattern.value)]
    return found


def test_no_kind_is_tested_by_string_outside_its_registry() -> None:
    hits = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == REGISTRY_MODULE:
            continue
        found = string_tests_of_kinds(path.read_text(encoding="utf-8"))
        if found:
            hits[str(path.relative_to(PACKAGE))] = found
    assert hits == {}, f"batch kinds tested by string (ask the kind object instead): {hits}"


@pytest.mark.parametrize("planted", [
    'if objective.inputs == "kway":\n    pass',
    'reward = spec.inputs in ("scores", "kway")',
    'if spec.inputs != "pairs": pass',
    'COLLATES = {"kway": collate_kway, "unpaired": collate_unpaired}',
    'match objective.inputs:\n    case "logps":\n        pass',
])
def test_the_check_finds_a_planted_string_test(planted: str) -> None:
    assert string_tests_of_kinds(planted)


def test_the_check_ignores_strings_that_are_not_kind_tests() -> None:
    assert not string_tests_of_kinds('scores = batch["scores"]\nname = "kway_jsonl"\nif x == "reward": pass\n'
                                     'record = {"logps": 1.0, "loss": 2.0}')


def test_every_loss_and_source_names_a_registered_kind_object() -> None:
    kinds = [BATCH_KINDS.get(n) for n in BATCH_KINDS.names()]
    assert {k.name for k in kinds} == {"logps", "scores", "kway", "unpaired"}
    for spec in list_losses():
        assert any(spec.inputs is k for k in kinds), spec.name
    for name in SOURCES.names():
        assert SOURCES.get(name).feeds and all(any(f is k for k in kinds) for f in SOURCES.get(name).feeds), name
    assert sorted(s.name for s in losses_reading(KWAY)) == ["reward_kway"]
    assert sorted(s.name for s in losses_reading(UNPAIRED)) == ["bco", "kto"]
    assert sources_feeding(KWAY) == ["kway_jsonl"]
    # Unpaired examples come from unpaired sources and, split, from every source of pairs.
    assert {"unpaired_jsonl", "jsonl", "hh_rlhf"} <= set(sources_feeding(UNPAIRED))
    assert "unpaired_jsonl" not in sources_feeding(LOGPS) and "kway_jsonl" not in sources_feeding(SCORES)


def test_every_kind_collates_and_computes_its_statistics() -> None:
    for name in BATCH_KINDS.names():
        kind = BATCH_KINDS.get(name)
        assert kind._collate is not None and kind._stats is not None, name
        stats = kind.made_up_stats(needs_reference=True, needs_mismatched=True)
        assert stats.batch_size == 2, name


def test_a_loss_declares_its_kind_by_the_object_or_its_name() -> None:
    assert build_objective("reward_kway").inputs is KWAY and build_objective("dpo").inputs is LOGPS
    with pytest.raises(RegistryError, match="unknown batch kind 'pair'; registered: kway, logps, scores, unpaired"):
        register_loss("bad_kind_loss", inputs="pair")(lambda stats, cfg: None)
    assert "bad_kind_loss" not in LOSSES


def test_a_kind_refuses_a_second_collate_function() -> None:
    def other(items: object, pad_token_id: int) -> dict[str, torch.Tensor]:
        return {}

    with pytest.raises(RegistryError, match="already has a collate function"):
        KWAY.collates(other)


def test_a_new_kind_plugs_in_without_touching_the_trainer() -> None:
    """A kind made outside alignkit: its made-up statistics give the metric names a stage with its loss logs."""

    def made_up(needs_reference: bool, needs_mismatched: bool, paired: bool) -> PreferenceStats:
        return PreferenceStats(chosen_scores=torch.tensor([1.0, 2.0]), rejected_scores=torch.tensor([0.0, 3.0]))

    toy = BatchKind("toy_scores", "toy pairs", "scores of a toy model", reward_model=True, made_up=made_up)

    @register_loss("toy_margin", inputs=toy)
    def toy_margin(stats: PreferenceStats, cfg: object) -> LossOutput:
        """Toy margin loss."""
        assert stats.chosen_scores is not None and stats.rejected_scores is not None
        margin = stats.chosen_scores - stats.rejected_scores
        return LossOutput(-margin, stats.chosen_scores, stats.rejected_scores, {"toy/margin": margin})

    try:
        objective = build_objective("toy_margin")
        assert objective.inputs is toy and objective.inputs.reward_model
        names = stage_metric_names(objective, paired=True)
        assert names.complete and "toy/margin" in names.train and "rewards/accuracies" in names.train
        with pytest.raises(RegistryError, match="'toy_scores' has no collate function"):
            toy.collate([], 0)
    finally:
        LOSSES.remove("toy_margin")
