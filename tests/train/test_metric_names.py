"""The metric names a stage logs come from one function, which the early-stopping rule asks too.

A tiny real stage (one step, then a held-out evaluation) writes metrics.jsonl; its names must be exactly
what :func:`alignkit.train.metrics.stage_metric_names` lists, and exactly what the recipe rule for
``early_stopping.metric`` accepts.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_gpt2
from train_data import tiny_pairs

from alignkit.data import collate_preference, collate_sft
from alignkit.losses import SCORES, build_objective
from alignkit.models.reference import FrozenCopyReference
from alignkit.recipe import RecipeError, load_recipe
from alignkit.train.config import TrainConfig
from alignkit.train.metrics import stage_metric_names
from alignkit.train.trainer import Trainer

RECIPE = """name: t
model:
  name_or_path: gpt2
data:
  source:
    kind: jsonl
    path: pairs.jsonl
loss:
  name: dpo
"""

# (id, loss section, paired batches, extra recipe overrides, the recipe section whose early stopping it is)
CASES = [
    ("dpo", {"name": "dpo", "beta": 0.1}, True, [], "train"),
    ("cpo", {"name": "cpo"}, True, [], "train"),  # a loss with a metric of its own (nll)
    ("dpo+sft", [{"name": "dpo"}, {"name": "sft", "weight": 0.1}], True, [], "train"),  # per-term metrics
    ("reward_bt", {"name": "reward_bt"}, True, ["reference.mode=none"], "train"),
    ("sft stage", {"name": "sft"}, False, ["sft.enabled=true"], "sft"),
]


def _tiny_reward_model():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    cfg = GPT2Config(n_positions=256, n_embd=32, n_layer=2, n_head=2, num_labels=1, pad_token_id=50256)
    return GPT2ForSequenceClassification(cfg).eval()


def _logged_names(tmp_path: Path, tokenizer, loss, paired: bool) -> tuple[set[str], set[str]]:
    """The names of the training and of the held-out records of a one-step stage on ``loss``."""
    objective = build_objective(loss)
    model = _tiny_reward_model() if objective.inputs is SCORES else make_tiny_gpt2()
    collate = collate_preference if paired else collate_sft
    pairs = tiny_pairs(tokenizer, 6)
    reference = FrozenCopyReference(model) if objective.needs_reference else None
    trainer = Trainer(model, objective, TrainConfig(lr=1e-3, batch_size=4, max_steps=1, precision="fp32"), train_pairs=pairs[:4],
                      eval_pairs=pairs[4:], collate=partial(collate, pad_token_id=tokenizer.pad_token_id),
                      run_dir=tmp_path, reference=reference)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = {k for r in records if "loss" in r for k in r} - {"stage", "step"}
    held_out = {k for r in records if "eval/loss" in r for k in r} - {"stage", "step"}
    return train, held_out


def _accepted_names(tmp_path: Path, loss, overrides: list[str], section: str) -> set[str]:
    """The held-out metric names the recipe rule accepts for ``section.early_stopping.metric``."""
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    section_overrides = [f"loss={json.dumps(loss)}", *overrides]
    with pytest.raises(RecipeError) as err:
        load_recipe(path, [*section_overrides, f"{section}.early_stopping.metric=eval/never"])
    listed = re.search(r"the held-out metrics of this stage are: (.*)", str(err.value))
    assert listed, str(err.value)
    names = set(listed.group(1).split(", "))
    for name in names:  # and each listed name is accepted
        load_recipe(path, [*section_overrides, f"{section}.early_stopping.metric={name}"])
    return names


@pytest.mark.parametrize(("loss", "paired", "overrides", "section"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_the_rule_accepts_exactly_the_names_a_real_stage_logs(tmp_path, gpt2_tokenizer, loss, paired,
                                                              overrides, section):
    train, held_out = _logged_names(tmp_path / "run", gpt2_tokenizer, loss, paired)
    listed = stage_metric_names(build_objective(loss), paired=paired)
    assert listed.complete
    assert set(listed.train) == train
    assert set(listed.eval) == held_out
    assert _accepted_names(tmp_path, loss, overrides, section) == held_out


def test_pair_accuracy_counts_margins_within_rounding_as_ties():
    from alignkit.train.metrics import TIE_MARGIN, pair_accuracy

    margins = torch.tensor([0.5, -0.5, 1e-7, -2.4e-7, 0.0, 2 * TIE_MARGIN, -2 * TIE_MARGIN])
    assert pair_accuracy(margins).tolist() == [1.0, 0.0, 0.5, 0.5, 0.5, 1.0, 0.0]
