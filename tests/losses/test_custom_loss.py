"""The worked example of docs/custom_loss.md: examples/my_losses.py, loaded as a plugin."""

from __future__ import annotations

import math
import re

import pytest
import torch
import yaml
from loss_cases import EXAMPLE_PLUGIN, PROPERTY_IDS, ROOT, check_output_contract, fixed_batch, make_stats

from alignkit.losses import LOGPS, LOSSES, build_objective, get_loss
from alignkit.plugins import load_plugins

DOC = ROOT / "docs" / "custom_loss.md"


def test_example_file_loads_as_a_plugin_and_registers() -> None:
    load_plugins(["examples/my_losses.py"], base_dir=ROOT)  # the same file loaded earlier: a no-op
    load_plugins([str(EXAMPLE_PLUGIN)])
    assert "sigmoid_hinge" in LOSSES
    spec = get_loss("sigmoid_hinge")
    assert spec.needs_reference and spec.inputs is LOGPS
    assert spec.description.startswith("Blend of DPO's logistic loss")


def test_example_hand_values() -> None:
    """z = 0 (policy = reference), α = 0.3, m = 1: 0.7·ln 2 + 0.3·max(0, 1 − 0) = 0.7·ln 2 + 0.3.

    β = 1, z = ln 3, α = 0.5, m = 2: 0.5·ln(4/3) + 0.5·(2 − ln 3).
    """
    spec = get_loss("sigmoid_hinge")
    out = spec(make_stats(pc=-4, pr=-6, rc=-4, rr=-6))
    torch.testing.assert_close(out.losses, torch.tensor([0.7 * math.log(2) + 0.3]))
    s = make_stats(pc=math.log(3) - 2, pr=-2, rc=-2, rr=-2)
    out = spec(s, spec.config(beta=1.0, alpha=0.5, margin=2.0))
    want = 0.5 * math.log(4 / 3) + 0.5 * (2 - math.log(3))
    torch.testing.assert_close(out.losses, torch.tensor([want]))
    torch.testing.assert_close(out.metrics["hinge"], torch.tensor([2 - math.log(3)]))


def test_example_is_in_the_property_suite() -> None:
    """The property tests are parametrized over list_losses() after loading the example."""
    assert "sigmoid_hinge" in PROPERTY_IDS
    spec = get_loss("sigmoid_hinge")
    check_output_contract(spec, fixed_batch())
    extreme = make_stats(pc=-1e4, pr=0.0, rc=0.0, rr=-1e4)
    check_output_contract(spec, extreme)


def test_yaml_snippets_of_the_guide_build() -> None:
    """Every YAML block of docs/custom_loss.md with a loss section validates."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    sections = [yaml.safe_load(b) for b in blocks]
    sections = [s for s in sections if isinstance(s, dict) and "loss" in s]
    assert len(sections) >= 2
    for section in sections:
        assert section["plugins"] == ["my_losses.py"]
        obj = build_objective(section["loss"])
        assert obj.terms[0].name == "sigmoid_hinge"


def test_guide_error_message_is_real() -> None:
    with pytest.raises(ValueError, match=r"loss\[0\]\.alpha: Input should be less than or equal to 1"):
        build_objective([{"name": "sigmoid_hinge", "alpha": 1.5}])
