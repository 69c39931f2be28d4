"""Online alignment: RLOO, REINFORCE, PPO or GRPO with a KL anchor (initial or EMA), adaptive beta, and WARP
weight averaging.

``alignkit online RECIPE`` runs a recipe with an ``online:`` section (see docs/online.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.lazy import lazy_exports

if TYPE_CHECKING:
    from alignkit.online.anchor import EMAAnchor, FrozenAnchor, swapped_parameters, trainable_tensors
    from alignkit.online.kl_control import AdaptiveKLController, FixedKLController
    from alignkit.online.rloo import (
        distinct_n,
        leave_one_out_advantages,
        penalised_rewards,
        policy_gradient_loss,
        sequence_kl_estimate,
    )
    from alignkit.online.warp import interpolate, liti, slerp, slerp_merge, task_vectors

__all__ = [
    "AdaptiveKLController",
    "EMAAnchor",
    "FixedKLController",
    "FrozenAnchor",
    "distinct_n",
    "interpolate",
    "leave_one_out_advantages",
    "liti",
    "penalised_rewards",
    "policy_gradient_loss",
    "sequence_kl_estimate",
    "slerp",
    "slerp_merge",
    "swapped_parameters",
    "task_vectors",
    "trainable_tensors",
]

__getattr__ = lazy_exports(__name__, {
    "anchor": ("EMAAnchor", "FrozenAnchor", "swapped_parameters", "trainable_tensors"),
    "kl_control": ("AdaptiveKLController", "FixedKLController"),
    "rloo": ("distinct_n", "leave_one_out_advantages", "penalised_rewards", "policy_gradient_loss", "sequence_kl_estimate"),
    "warp": ("interpolate", "liti", "slerp", "slerp_merge", "task_vectors"),
})
