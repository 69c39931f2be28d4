"""Every registered judge has its config in the recipe's ``eval.judge`` union, and every config kind a builder."""

from __future__ import annotations

from typing import get_args

import pytest

from alignkit.eval.config import JudgeConfig
from alignkit.eval.judges import JUDGES


def _config_kinds() -> dict[str, type]:
    """``kind`` -> its config class, from the discriminated union ``JudgeConfig``."""
    union, _field = get_args(JudgeConfig)
    return {get_args(cls.model_fields["kind"].annotation)[0]: cls for cls in get_args(union)}


@pytest.mark.parametrize("kind", JUDGES.names())
def test_a_registered_judge_can_be_asked_for_in_a_recipe(kind):
    assert kind in _config_kinds(), f"judge {kind!r} is registered but JudgeConfig has no config with that kind"


@pytest.mark.parametrize("kind", sorted(_config_kinds()))
def test_a_judge_config_kind_has_a_builder(kind):
    assert kind in JUDGES, f"JudgeConfig accepts kind {kind!r} but no judge is registered under it"
