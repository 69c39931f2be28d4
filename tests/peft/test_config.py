"""The `adapter:` recipe section: defaults, exclusive fields and refused combinations."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alignkit.peft import BottleneckConfig, LoRAConfig, NoAdapter, parse_adapter_config


def test_discriminated_on_kind() -> None:
    assert isinstance(parse_adapter_config({"kind": "none"}), NoAdapter)
    assert isinstance(parse_adapter_config({"kind": "bottleneck"}), BottleneckConfig)
    lora = parse_adapter_config({"kind": "lora", "r": 4, "alpha": 8})
    assert isinstance(lora, LoRAConfig) and lora.scaling == 2.0
    with pytest.raises(ValidationError, match="kind"):
        parse_adapter_config({"kind": "prefix"})


def test_unknown_field_is_named() -> None:
    with pytest.raises(ValidationError, match="rank"):
        parse_adapter_config({"kind": "lora", "rank": 4})


@pytest.mark.parametrize(
    ("placement", "init", "activation", "factor"),
    [("sequential", "identity", "relu", 16.0), ("parallel", "identity", "relu", 16.0), ("replace", "from_mlp", None, 2.0)],
)
def test_bottleneck_defaults_per_placement(placement: str, init: str, activation: str | None, factor: float) -> None:
    cfg = BottleneckConfig(placement=placement)
    assert (cfg.init, cfg.activation, cfg.reduction_factor, cfg.bottleneck_size) == (init, activation, factor, None)


def test_size_from_reduction_factor_or_explicit() -> None:
    assert BottleneckConfig(reduction_factor=16).size_for(768) == 48
    assert BottleneckConfig(reduction_factor=3).size_for(32) == 10
    assert BottleneckConfig(reduction_factor=1000).size_for(32) == 1  # never zero
    assert BottleneckConfig(bottleneck_size=7).size_for(768) == 7


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bottleneck_size": 8, "reduction_factor": 4}, "exactly one"),
        ({"placement": "replace", "init": "identity"}, "replace needs init=from_mlp"),
        ({"placement": "sequential", "init": "from_mlp"}, "sequential adapter reads the MLP's output"),
        ({"placement": "parallel", "init": "from_mlp", "activation": "relu"}, "activation must be unset"),
        ({"bottleneck_size": 0}, "bottleneck_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"scaling": "auto"}, "scaling"),
    ],
)
def test_bottleneck_refuses(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BottleneckConfig(**fields)


def test_configs_are_frozen_and_round_trip_json() -> None:
    cfg = parse_adapter_config({"kind": "bottleneck", "placement": "parallel", "scaling": "learned"})
    with pytest.raises(ValidationError):
        cfg.dropout = 0.5  # type: ignore[misc]
    assert parse_adapter_config(cfg.model_dump(mode="json")) == cfg
