"""Data parallelism under ``torchrun``: process group set-up and gradient / metric all-reduce.

We average gradients ourselves (one flattened all-reduce per optimizer step, after gradient accumulation)
instead of wrapping the model in DistributedDataParallel: our forward pass goes through the decoder and the
output embedding separately (chunked log-probs), which DDP's forward hooks would not see. Decisions every
process must take together (a non-finite loss on one process stops them all) ride in that all-reduce.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

__all__ = [
    "DistEnv",
    "all_gather_cat",
    "all_reduce_flags",
    "all_reduce_gradients",
    "all_reduce_sum",
    "broadcast_parameters",
    "full_value",
    "init_distributed",
    "local_tensors",
]


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":  # one GPU per process: NCCL and every `cuda` tensor without an index use it
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_cat(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """(world_size·n,) every process's (n,) ``values``, concatenated in rank order (detached); ``values`` in
    one process. Every process must call it with the same n."""
    if not env.enabled:
        return values
    local = values.detach().to(_collective_device())
    parts = [torch.empty_like(local) for _ in range(env.world_size)]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(values.device)


def _collective_device() -> torch.device:
    """Where a tensor must be for the process group's collectives: NCCL reduces CUDA tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_flags(values: Sequence[float], env: DistEnv) -> list[float]:
    """``values`` summed over processes in float64 (flags, counts, sums); ``values`` itself in one process."""
    if not env.enabled:
        return [float(v) for v in values]
    summed = all_reduce_sum(torch.tensor(list(values), dtype=torch.float64, device=_collective_device()), env)
    return [float(v) for v in summed.tolist()]


def all_reduce_gradients(params: list[torch.nn.Parameter], env: DistEnv,
                         extra: Sequence[float] = ()) -> list[float]:
    """Sum gradients over processes (each process's loss is already divided by the global count).

    Args:
        params: the trainable parameters; those with a gradient take part.
        env: the data-parallel environment; in one process nothing is communicated.
        extra: numbers to sum over processes as well (flags, counts); they travel in the same all-reduce as
            the gradients, so a decision every process must share costs no extra round trip.

    Returns:
        ``extra`` summed over processes (``extra`` itself in one process).
    """
    if not env.enabled:
        return list(extra)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:  # every process runs the same model: none has gradients
        return all_reduce_flags(extra, env) if len(extra) else []
    # The extras ride at the end of the flat buffer, in the gradients' dtype: they are small counts, exact
    # even in bfloat16.
    flags = torch.tensor(list(extra), dtype=grads[0].dtype, device=grads[0].device)
    flat = torch._utils._flatten_dense_tensors([*grads, flags])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    *synced, summed = torch._utils._unflatten_dense_tensors(flat, [*grads, flags])
    for grad, value in zip(grads, synced, strict=True):
        grad.copy_(value)
    return [float(v) for v in summed.tolist()]


def broadcast_parameters(params: list[torch.nn.Parameter], env: DistEnv) -> None:
    """Start every process from rank 0's trainable weights (a randomly initialised adapter or head, say)."""
    if not env.enabled:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def full_value(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself, or the whole tensor when it is a DTensor (a clipped gradient norm, say)."""
    return x.full_tensor() if isinstance(x, DTensor) else x


def local_tensors(named: Iterable[tuple[str, torch.Tensor]]
                  ) -> list[tuple[str, torch.Tensor]]:
    """(name, this process's shard) for DTensors, (name, tensor) for the rest."""
    return [(n, t.to_local() if isinstance(t, DTensor) else t) for n, t in named]
