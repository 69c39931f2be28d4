"""What a run does differently when its policy is sharded (``distributed.strategy: fsdp`` under torchrun).

The policy is sharded once, after its adapter, before the first stage. A frozen reference is sharded like
it. After the last stage the main process rebuilds the policy as one ordinary model with the trained
weights, which is saved and evaluated exactly as a one-process run's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from alignkit.models.precision import resolve_precision
from alignkit.recipe import RecipeError
from alignkit.train.config import DistributedConfig, MixedPrecisionConfig, SFTConfig, TrainConfig
from alignkit.train.distributed import DistEnv
from alignkit.train.sharding import check_mesh, gather_trainable_state, shard_model

__all__ = ["RunSharding", "check_process_layout", "compute_precision", "training_sections"]


def training_sections(recipe: Any) -> dict[str, TrainConfig]:
    """The recipe's sections that train with a global batch (``train``, ``sft``), by name."""
    return {name: cfg for name in ("train", "sft") if isinstance(cfg := getattr(recipe, name, None), TrainConfig)}


def check_process_layout(distributed: DistributedConfig, stages: dict[str, TrainConfig], world_size: int,
                         device: torch.device | None = None) -> None:
    """Refuse, before any model is loaded, a layout the processes cannot share.

    Args:
        distributed: the recipe's ``distributed`` section.
        stages: the training sections that will run, by recipe name (``train``, ``sft``).
        world_size: the number of processes started.
        device: this process's device, when known.

    Raises:
        RecipeError: naming the field: a mesh that does not cover the processes, or a batch that does not
            split over them and the micro-batches.
    """
    problems = []
    if world_size > 1 and distributed.strategy == "fsdp":  # in one process the section changes nothing
        try:
            check_mesh(distributed, world_size)
        except ValueError as err:
            problems.append(str(err))
    if distributed.cpu_offload and device is not None and device.type != "cuda":
        problems.append(f"distributed.cpu_offload moves CUDA memory to the CPU; this run is on {device}")
    for section, cfg in stages.items():
        if isinstance(cfg, SFTConfig) and not cfg.enabled:
            continue
        if cfg.batch_size % (cfg.grad_accum * world_size):
            problems.append(f"{section}.batch_size: {cfg.batch_size} examples do not split over {cfg.grad_accum} "
                            f"micro-batches ({section}.grad_accum) x {world_size} processes")
    if problems:
        raise RecipeError("\n".join(problems))


def compute_precision(cfg: DistributedConfig, precision: str, device: torch.device) -> DistributedConfig:
    """``cfg`` with ``mixed_precision`` following ``train.precision`` when the recipe leaves it null.

    bf16 autocast over sharded fp32 weights would cast every gathered weight to bf16 and keep that copy for
    backward: the whole model in bf16 on every process, not sharded. FSDP's own mixed precision gathers the
    weights in bf16 instead (the stored shards stay fp32, gradients are reduced in fp32).
    """
    bf16 = resolve_precision(precision, device).autocast_dtype == torch.bfloat16
    if cfg.mixed_precision is not None or not bf16:
        return cfg
    policy = MixedPrecisionConfig(param_dtype="bfloat16", reduce_dtype="float32")
    return cfg.model_copy(update={"mixed_precision": policy})


@dataclass
class RunSharding:
    """The sharding of one run's models.

    Attributes:
        cfg: the recipe's ``distributed`` section (strategy fsdp).
        env, device: this process.
        rebuild: the policy as it was before the first stage (loaded again, adapter applied), unsharded;
            it must not change any random stream (see :func:`~alignkit.workflow.environment.rng_preserved`).
    """

    cfg: DistributedConfig
    env: DistEnv
    device: torch.device
    rebuild: Callable[[], nn.Module]

    def shard_policy(self, policy: nn.Module) -> None:
        shard_model(policy, self.cfg, self.env, self.device)

    def frozen(self, model: nn.Module) -> nn.Module:
        """``model`` frozen and sharded like the policy (a named reference)."""
        model.requires_grad_(False).eval()
        shard_model(model, self.cfg, self.env, self.device, trainable=False)
        return model

    def copy_of(self, policy: nn.Module) -> nn.Module:
        """A frozen copy of the sharded ``policy`` as it is now, sharded like it (each process copies its
        own shards: no communication)."""
        copy = self.frozen(self.rebuild())
        with torch.no_grad():
            for target, source in zip(copy.parameters(), policy.parameters(), strict=True):
                target.copy_(source)
        return copy

    def gathered(self, policy: nn.Module) -> nn.Module:
        """On the main process, an unsharded model with the trained weights of ``policy``; elsewhere
        ``policy`` itself. Every process must call it."""
        weights = gather_trainable_state(policy)
        if not self.env.is_main:
            return policy
        model = self.rebuild()
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        return model
