"""FSDP2 sharding (``distributed.strategy: fsdp``): each decoder block and the root are ``fully_shard``-ed.

Parameters, gradients and optimizer states are then split over the processes; a block's parameters are
gathered just before its forward and freed after it (``reshard_after_forward``). What alignkit adds to
PyTorch's FSDP2:

- the chunked log-prob path never calls ``model.forward`` (it runs the decoder, then the lm-head a chunk at a
  time), so the root's parameters are gathered by running that path inside a method registered with
  :func:`register_fsdp_forward_method` (:data:`alignkit.models.logps.ROOT_CALL`);
- each process's loss is already divided by the global weight of the step (:mod:`alignkit.train.trainer`),
  so gradients are summed over processes, not averaged (the gradient divide factor is 1);
- checkpoints keep the same files as a one-process run (full trainable weights, index-keyed optimizer
  state, in safetensors and JSON): gathered to the main process to save, sharded again on load, so a run
  resumes on any number of processes and with either strategy. PyTorch's distributed checkpoint format is
  not used because its metadata is a pickle, and alignkit never unpickles.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
    register_fsdp_forward_method,
)

from alignkit.models.logps import ROOT_CALL
from alignkit.train.config import DistributedConfig
from alignkit.train.distributed import DistEnv, broadcast_parameters

__all__ = [
    "ShardingError",
    "check_mesh",
    "decoder_blocks",
    "gather_optimizer_state",
    "gather_trainable_state",
    "is_sharded",
    "load_sharded_state",
    "shard_model",
]


class ShardingError(ValueError):
    """A model or a process layout that ``distributed.strategy: fsdp`` cannot shard."""


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard_model` (its parameters are DTensors)."""
    return isinstance(model, FSDPModule)


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules that each become one FSDP unit: those of the classes the model declares unsplittable
    (``_no_split_modules``: ``GPT2Block``, ``LlamaDecoderLayer``, ...).

    Raises:
        ShardingError: the model declares none, or none of its modules is of those classes.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ShardingError(
            f"distributed.strategy fsdp: {type(model).__name__} does not say which modules are its decoder "
            f"blocks (_no_split_modules is {sorted(names) or 'empty'}); use strategy ddp for this model"
        )
    return blocks


def check_mesh(cfg: DistributedConfig, world_size: int) -> None:
    """Raise when ``distributed.mesh`` does not cover the ``world_size`` processes exactly."""
    if cfg.mesh is not None and cfg.mesh.replicate * cfg.mesh.shard != world_size:
        raise ShardingError(
            f"distributed.mesh: replicate {cfg.mesh.replicate} x shard {cfg.mesh.shard} = "
            f"{cfg.mesh.replicate * cfg.mesh.shard} processes, but {world_size} were started"
        )


def _mesh(cfg: DistributedConfig, env: DistEnv, device: torch.device) -> DeviceMesh:
    check_mesh(cfg, env.world_size)
    if cfg.mesh is None or cfg.mesh.replicate == 1:
        return init_device_mesh(device.type, (env.world_size,))
    return init_device_mesh(device.type, (cfg.mesh.replicate, cfg.mesh.shard),
                            mesh_dim_names=("replicate", "shard"))


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _policies(cfg: DistributedConfig, device: torch.device) -> dict[str, Any]:
    mp = cfg.mixed_precision
    policy = MixedPrecisionPolicy(
        param_dtype=_DTYPES[mp.param_dtype] if mp and mp.param_dtype else None,
        reduce_dtype=_DTYPES[mp.reduce_dtype] if mp and mp.reduce_dtype else None,
    )
    if cfg.cpu_offload and device.type != "cuda":
        raise ShardingError(f"distributed.cpu_offload moves CUDA memory to the CPU; this run is on {device}")
    offload = CPUOffloadPolicy() if cfg.cpu_offload else OffloadPolicy()
    return {"mp_policy": policy, "offload_policy": offload}


def _root_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def shard_model(model: nn.Module, cfg: DistributedConfig, env: DistEnv, device: torch.device,
                *, trainable: bool = True) -> None:
    """Shard ``model`` in place over the processes of ``env`` (FSDP2: each decoder block, then the root).

    Every process must hold the same weights: the trainable ones are broadcast from the main process first
    (a randomly initialised adapter or head, say). A frozen model (``trainable=False``, a reference copy)
    is sharded the same way.
    """
    blocks = decoder_blocks(model)
    if trainable:
        broadcast_parameters([p for p in model.parameters() if p.requires_grad], env)
    kwargs = {"mesh": _mesh(cfg, env, device), "reshard_after_forward": cfg.reshard_after_forward,
              **_policies(cfg, device)}
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # Each process's loss is divided by the global weight already: gradients add up, no mean.
            # SUM-only collectives: gloo (CPU) has no pre-multiplied sum or average.
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    setattr(model, ROOT_CALL, _root_call)
    register_fsdp_forward_method(model, ROOT_CALL)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Skip (False) or do (True) the gradient reduce-scatter of the next backward: no communication on
    the micro-batches before the last one of an optimizer step."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)


_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def _trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def gather_trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full trainable weights on the main process (empty elsewhere). Every process must call it."""
    state: dict[str, Any] = dict(get_model_state_dict(model, options=_GATHER))
    # named_parameters, as a one-process checkpoint: a tied weight (lm-head = embedding) once, by its first name
    return {n: state[n].contiguous() for n in _trainable_names(model) if n in state}


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state as a one-process ``optimizer.state_dict()`` (states keyed by parameter index),
    on the main process (empty elsewhere). Every process must call it."""
    by_name: dict[str, Any] = dict(get_optimizer_state_dict(model, optimizer, options=_GATHER))
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(_trainable_names(model))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]
    return {"state": {index[n]: s for n, s in by_name["state"].items()}, "param_groups": groups}


def load_sharded_state(model: nn.Module, weights: dict[str, torch.Tensor],
                       optimizer: torch.optim.Optimizer | None = None,
                       optimizer_state: dict[str, Any] | None = None) -> None:
    """Load full (unsharded) trainable ``weights`` and a one-process ``optimizer_state`` into a sharded
    model and its optimizer; every process holds the full values and keeps its shard."""
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, dict[str, Any](weights), options=options)
    if optimizer is None or optimizer_state is None:
        return
    names = _trainable_names(model)
    by_name: dict[str, Any] = {
        "state": {names[int(i)]: s for i, s in optimizer_state["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                         for g in optimizer_state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=options)
