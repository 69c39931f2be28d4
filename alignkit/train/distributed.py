"""Data parallelism under ``torchrun``: process group set-up and gradient / metric all-reduce.

We average gradients ourselves (one flattened all-reduce per optimizer step, after gradient accumulation)
instead of wrapping the model in DistributedDataParallel: our forward pass goes through the decoder and the
output embedding separately (chunked log-probs), which DDP's forward hooks would not see. Decisions every
process must take together (a non-finite loss on one process stops them all) ride in that all-reduce.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from alignkit.train.config import DEFAULT_TIMEOUT_S

__all__ = [
    "DistEnv",
    "all_gather_cat",
    "all_reduce_flags",
    "all_reduce_gradients",
    "all_reduce_sum",
    "broadcast_parameters",
    "describe_timeout",
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


# Each process writes the time into the group's store every few seconds (a thread), so a process whose
# collective timed out can name the ones that stopped answering: a frozen process stops beating, one that
# merely waits at the collective does not.
_HEARTBEAT_KEY = "alignkit/heartbeat/{rank}"


@dataclass
class _Heartbeat:
    store: dist.Store
    interval_s: float
    timeout_s: float


_heartbeat: _Heartbeat | None = None


def _beat(beat: _Heartbeat, rank: int) -> None:
    key = _HEARTBEAT_KEY.format(rank=rank)
    while True:
        try:
            beat.store.set(key, repr(time.time()))
        except Exception:  # noqa: BLE001 - the group is gone (the run ended or failed): stop beating
            return
        time.sleep(beat.interval_s)


def init_distributed(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistEnv:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on CUDA).

    Args:
        device: where this process computes (a CUDA device selects NCCL and this process's GPU).
        timeout_s: how long a collective waits for the other processes before it fails
            (``distributed.timeout_s``); :func:`describe_timeout` then names the processes that stopped.
    """
    global _heartbeat
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":  # one GPU per process: NCCL and every `cuda` tensor without an index use it
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_s))
        store = dist.distributed_c10d._get_default_store()
        _heartbeat = _Heartbeat(store, interval_s=min(5.0, max(0.2, timeout_s / 8)), timeout_s=timeout_s)
        threading.Thread(target=_beat, args=(_heartbeat, dist.get_rank()), name="alignkit-heartbeat",
                         daemon=True).start()
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def _stopped_ranks(beat: _Heartbeat, rank: int, world: int) -> list[int] | None:
    """The other processes whose heartbeat is older than three beats; None when the store cannot tell."""
    now, stale = time.time(), []
    try:
        for other in range(world):
            key = _HEARTBEAT_KEY.format(rank=other)
            if other == rank:
                continue
            if not beat.store.check([key]) or now - float(beat.store.get(key)) > 3 * beat.interval_s:
                stale.append(other)
    except Exception:  # noqa: BLE001 - the store's host is what stopped
        return None
    return stale


def describe_timeout(err: BaseException) -> str | None:
    """A one-line account of a collective that timed out in this process (naming the processes that stopped
    answering, from their heartbeats); None when ``err`` is not such a timeout."""
    text = str(err)
    if _heartbeat is None or not dist.is_initialized() or not ("Timed out" in text or "timed out" in text
                                                               or "Timeout" in text):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    stopped = _stopped_ranks(_heartbeat, rank, world)
    who = (f"process {', '.join(map(str, stopped))} of {world} stopped answering (frozen, stopped or killed)"
           if stopped else "another process did not answer")
    return (f"process {rank} of {world} waited {_heartbeat.timeout_s:g} s (distributed.timeout_s) at a collective: "
            f"{who}; the run was stopped, continue it with --resume")


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
