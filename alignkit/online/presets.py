"""The presets of ``online.algorithm``: each names the parts it expands to (the only place algorithms have names).

A preset fills the part fields a recipe leaves out (``online.advantage``, ``online.policy_loss``,
``online.loss_aggregation``, ``online.kl``, ``online.epochs``, ``online.minibatch_size``, ``online.value``,
``online.dynamic_sampling``);
a part the recipe sets explicitly wins (its settings merged over the preset's when it names the same part).
The legacy sections ``online.ppo`` and ``online.grpo`` are read by the presets that own them, so recipes
written before the parts existed expand to the same objective and give the same numbers.

| preset | advantage | policy loss | aggregation | KL |
|---|---|---|---|---|
| rloo | rloo | vanilla_pg | seq_mean_token_sum | k1 in the reward |
| reinforce | reinforce | vanilla_pg | seq_mean_token_sum | k1 in the reward |
| reinforce_pp | reinforce_pp | ppo_clip | token_mean | k1 in the reward (per token) |
| ppo | gae (+ value model) | ppo_clip | token_mean | k1 in the reward (per token) |
| grpo | grpo | ppo_clip | seq_mean_token_mean | k3 in the loss |
| dr_grpo | dr_grpo | ppo_clip | seq_mean_token_sum_norm | k3 in the loss |
| dapo | grpo | dapo (+ dynamic sampling) | token_mean | none |
| gspo | grpo | gspo | seq_mean_token_mean | none |
| cispo | grpo | cispo | token_mean | none |
| gmpo | grpo | gmpo | seq_mean_token_mean | none |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["PRESETS", "Preset", "PresetName"]

PresetName = Literal["rloo", "reinforce", "reinforce_pp", "ppo", "grpo", "dr_grpo", "dapo", "gspo", "cispo", "gmpo"]

# What a preset expands to: the online fields it fills, from the legacy section it reads (or None).
Expansion = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Preset:
    """An ``online.algorithm`` value.

    Attributes:
        section: the legacy section (``ppo`` or ``grpo``) it reads and fills in with defaults, or None.
        expand: section -> the online fields of its parts.
    """

    section: str | None
    expand: Expansion


def _one_step(advantage: str) -> dict[str, Any]:
    return {"advantage": {"name": advantage}, "policy_loss": {"name": "vanilla_pg"},
            "loss_aggregation": {"name": "seq_mean_token_sum"}, "kl": {"estimator": "k1", "placement": "reward"},
            "epochs": 1, "minibatch_size": None}


def _ppo(p: Any) -> dict[str, Any]:
    return {
        "advantage": {"name": "gae", "gamma": p.gamma, "lam": p.lam, "whiten": p.whiten_advantages},
        "policy_loss": {"name": "ppo_clip", "clip_low": p.clip_eps},
        "loss_aggregation": {"name": "token_mean"},
        "kl": {"estimator": "k1", "placement": "reward"},
        "epochs": p.epochs, "minibatch_size": p.minibatch_size,
        "value": {"value_model": p.value_model, "value_init": p.value_init, "vf_coef": p.vf_coef,
                  "clip_eps_value": p.clip_eps_value},
    }


def _grpo(g: Any, *, dr: bool = False) -> dict[str, Any]:
    scale, length = (False, False) if dr else (g.scale_rewards, g.length_normalise)
    kl: dict[str, Any] = ({"estimator": "k3", "placement": "loss", "coef": g.kl_coef} if g.kl == "loss"
                          else {"estimator": "k1", "placement": "reward"})
    return {
        "advantage": {"name": "grpo" if scale else "dr_grpo"},
        "policy_loss": {"name": "ppo_clip", "clip_low": g.clip_eps},
        "loss_aggregation": {"name": "seq_mean_token_mean" if length else "seq_mean_token_sum_norm"},
        "kl": kl, "epochs": g.iterations, "minibatch_size": None,
    }


def _group(loss: str, aggregation: str, *, dynamic_sampling: bool = False) -> Expansion:
    return lambda _: {"advantage": {"name": "grpo"}, "policy_loss": {"name": loss},
                      "loss_aggregation": {"name": aggregation}, "kl": {"estimator": "k1", "placement": "none"},
                      "epochs": 1, "minibatch_size": None, "dynamic_sampling": {"enabled": dynamic_sampling}}


PRESETS: dict[str, Preset] = {
    "rloo": Preset(None, lambda _: _one_step("rloo")),
    "reinforce": Preset(None, lambda _: _one_step("reinforce")),
    "reinforce_pp": Preset(None, lambda _: {**_one_step("reinforce_pp"), "policy_loss": {"name": "ppo_clip"},
                                            "loss_aggregation": {"name": "token_mean"}}),
    "ppo": Preset("ppo", _ppo),
    "grpo": Preset("grpo", _grpo),
    "dr_grpo": Preset("grpo", lambda g: _grpo(g, dr=True)),
    "dapo": Preset(None, _group("dapo", "token_mean", dynamic_sampling=True)),
    "gspo": Preset(None, _group("gspo", "seq_mean_token_mean")),
    "cispo": Preset(None, _group("cispo", "token_mean")),
    "gmpo": Preset(None, _group("gmpo", "seq_mean_token_mean")),
}
