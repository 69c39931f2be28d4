"""Stop a diverging run before it stores garbage: non-finite losses, gradient norms and weights.

Policy (both trainers): a non-finite loss stops before ``backward``, a non-finite gradient norm stops before
``optimizer.step`` (the step is not skipped: a learning rate that overflows once overflows again, and a
skipped step would silently train on fewer examples than asked), and the trainable weights are checked
before every checkpoint is written and before every held-out evaluation (not after each step: an update
with finite loss and gradients can still overflow a weight, which the next check finds). Held-out metrics
are checked before they are logged. Every checkpoint on disk is therefore finite, so ``--resume`` after
lowering the learning rate continues from the last good checkpoint.

Under data parallelism every process takes the decision together, or the others would wait forever at
the next all-reduce: a process whose loss is not finite still runs ``backward`` and reports it in the
step's gradient all-reduce (:func:`~alignkit.train.distributed.all_reduce_gradients`), and every process
then raises the same error before ``optimizer.step`` (:meth:`DivergenceGuard.check_processes`). Gradient
norms, held-out metrics and weights are equal on every process already (computed after an all-reduce).

:class:`TrainingDivergedError` is a ``ValueError`` (the command line prints it as a message, exit code 2)
and, for code that caught the earlier error, a ``FloatingPointError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from alignkit.train.distributed import DistEnv, all_reduce_flags, local_tensors

__all__ = ["DivergenceGuard", "TrainingDivergedError", "non_finite_tensors"]


class TrainingDivergedError(ValueError, FloatingPointError):
    """A training stage produced a non-finite value; nothing non-finite was saved.

    Attributes:
        stage: the stage ("sft", "preference", "online", ...).
        step: the 1-based optimizer step.
        metric: what was not finite ("loss", "grad_norm", "weights", ...).
    """

    def __init__(self, stage: str, step: int, metric: str, detail: str, hint: str) -> None:
        self.stage, self.step, self.metric = stage, step, metric
        super().__init__(f"{stage}: non-finite {metric} at step {step} ({detail}); training diverged and "
                         f"stopped, no checkpoint holds these values. {hint}")


def non_finite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity."""
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


@dataclass(frozen=True)
class DivergenceGuard:
    """Raises :class:`TrainingDivergedError` for one stage, with a hint on what to change.

    Attributes:
        stage: the stage name written into the message.
        hint: what to try, e.g. "Lower train.lr (now 10000)".
    """

    stage: str
    hint: str

    def check(self, metric: str, value: float | torch.Tensor, step: int, *, before: str,
              hint: str | None = None) -> None:
        """Raise unless ``value`` is finite.

        Args:
            metric: its name in the message.
            value: a number or a one-element tensor.
            step: the 1-based optimizer step.
            before: what did not happen because of it ("the optimizer step").
            hint: replaces the stage's hint (when the cause is not the optimisation, e.g. a reward).
        """
        number = float(value.detach() if isinstance(value, torch.Tensor) else value)
        if not math.isfinite(number):
            raise TrainingDivergedError(self.stage, step, metric, f"{number}, stopped before {before}",
                                        self.hint if hint is None else hint)

    def check_processes(self, metric: str, non_finite: float, world_size: int, step: int, *, before: str) -> None:
        """Raise, on every process alike, if any process saw a non-finite ``metric``.

        Args:
            metric: its name in the message.
            non_finite: how many processes saw a non-finite value, summed over processes (so equal on all).
            world_size: the number of processes.
            step: the 1-based optimizer step.
            before: what did not happen because of it ("the optimizer step").
        """
        if non_finite > 0:
            raise TrainingDivergedError(self.stage, step, metric, f"on {int(non_finite)} of {world_size} "
                                        f"processes, stopped before {before}", self.hint)

    def check_weights(self, model: torch.nn.Module, step: int, env: DistEnv | None = None) -> None:
        """Raise if a trainable parameter holds a NaN or an infinity (checked before every save).

        A sharded model's processes each check their shards; with ``env`` they learn of each other's, so all
        of them raise together.
        """
        named = local_tensors((n, p.detach()) for n, p in model.named_parameters() if p.requires_grad)
        bad = non_finite_tensors(named)
        count = len(bad)
        if env is not None and env.enabled:
            (total,) = all_reduce_flags((float(count),), env)
            count = int(total)
        if count:
            example = bad[0] if bad else "on another process"
            raise TrainingDivergedError(self.stage, step, "weights",
                                        f"{count} tensors, e.g. {example}; not saved", self.hint)
