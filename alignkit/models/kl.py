"""KL(policy || reference): its estimators, and its estimate from the policy's own samples.

For a completion y sampled from the policy given prompt x,

    KL(pi || pi_ref)(x) = E_{y ~ pi(.|x)} [ sum_t log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t) ],

so the per-sample sequence sum of log-ratios is an unbiased estimate (in nats) of the sequence-level
KL; its mean over samples and prompts is the KL reported next to the reward, as in the DPO and WARP
papers. Individual samples can be negative; only the mean estimates a KL. The estimate is unbiased only
when the samples come from the policy itself (temperature 1, top_p 1). :func:`kl_estimate` (from
:mod:`alignkit.models.kl_estimators`) holds the estimators of one log-ratio (Schulman 2020): ``k1`` (the log-ratio itself, what the report uses), ``k2``
(half its square) and ``k3`` (``exp(-d) + d - 1``, never negative).

The reference is passed as ``reference: Callable[[], AbstractContextManager[nn.Module]]``: a
zero-argument callable whose context yields the reference model. That covers a separate frozen model
(:func:`as_reference`) and the policy itself with its adapters switched off (``lambda:
adapters_disabled(policy)``); the policy's log-probs are computed before the context is entered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from alignkit.models.flops import forward_flops, matmul_parameters
from alignkit.models.generate import Completion, eval_mode
from alignkit.models.kl_estimators import KLEstimator, kl_estimate
from alignkit.models.logps import DEFAULT_LOGPS, LogpsOptions, sequence_logps
from alignkit.models.padding import labelled_batch
from alignkit.timing import count_flops, phase, timed

__all__ = ["KLEstimator", "ReferenceFn", "as_reference", "completion_batch", "completion_logps", "kl_estimate",
           "sequence_kl"]

ReferenceFn = Callable[[], AbstractContextManager[nn.Module]]


def as_reference(reference: nn.Module | ReferenceFn | Any) -> ReferenceFn:
    """Normalize a reference to a :data:`ReferenceFn`.

    Accepts a plain module (becomes ``lambda: nullcontext(module)``), an object with a
    ``model_context()`` method (the trainer's ``alignkit.models.reference.Reference``), or a
    :data:`ReferenceFn` itself.
    """
    if isinstance(reference, nn.Module):
        return lambda: nullcontext(reference)
    model_context = getattr(reference, "model_context", None)
    if callable(model_context):
        return model_context
    if not callable(reference):
        raise TypeError(
            "reference must be an nn.Module or a zero-argument callable returning a context manager that "
            f"yields one, got {type(reference).__name__}"
        )
    return reference


def completion_batch(completions: Sequence[Completion], pad_token_id: int, device: torch.device) -> dict[str, Tensor]:
    """Right-padded (B, T) input_ids / attention_mask / labels with only completion tokens labelled."""
    batch = labelled_batch([(c.prompt_ids, c.completion_ids) for c in completions], pad_token_id)
    return {name: value.to(device) for name, value in batch.items()}


@torch.inference_mode()
def completion_logps(
    model: nn.Module, completions: Sequence[Completion], *, batch_size: int, pad_token_id: int,
    logps: LogpsOptions = DEFAULT_LOGPS, phase_name: str = "log-probs",
) -> Tensor:
    """Summed log-probs of each completion's tokens given its prompt.

    Args:
        model: a causal LM (put in eval mode for the call).
        completions: N completions with their prompt and completion ids.
        batch_size: sequences per forward pass.
        pad_token_id: id used for right padding (masked out, so any valid id works).
        logps: chunk size and packing of the forwards.
        phase_name: the phase of the run's time table the forwards and their FLOPs count in (the KL of an
            evaluation and an online step's policy: ``log-probs``; an online step's anchor:
            ``reference log-probs``).

    Returns:
        (N,) fp32 on CPU: sum_t log p(y_t | x, y_<t) over completion tokens (EOS included when sampled).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    n, dtype = matmul_parameters(model), str(next(model.parameters()).dtype).removeprefix("torch.")
    out = []
    with phase(phase_name), eval_mode(model):
        for start in range(0, len(completions), batch_size):
            batch = completion_batch(completions[start : start + batch_size], pad_token_id, device)
            sums, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], logps=logps)
            out.append(sums.float().cpu())
            count_flops(forward_flops(n, int(batch["attention_mask"].sum())), dtype)
    return torch.cat(out) if out else torch.zeros(0)


@timed("KL")
def sequence_kl(
    policy: nn.Module,
    reference: nn.Module | ReferenceFn | Any,
    completions: Sequence[Completion],
    *,
    batch_size: int,
    pad_token_id: int,
) -> Tensor:
    """Per-sample estimate of KL(policy || reference), summed over each completion's tokens.

    Args:
        policy: the model the completions were sampled from.
        reference: a module, a callable returning a context manager that yields the reference model, or
            an object with such a ``model_context`` method.
        completions: N samples from ``policy``.
        batch_size: sequences per forward pass.
        pad_token_id: padding id.

    Returns:
        (N,) fp32 log pi(y|x) - log pi_ref(y|x) in nats; the mean over samples estimates the KL.
    """
    ref_fn = as_reference(reference)
    policy_logps = completion_logps(policy, completions, batch_size=batch_size, pad_token_id=pad_token_id)
    with ref_fn() as ref_model:
        reference_logps = completion_logps(
            ref_model, completions, batch_size=batch_size, pad_token_id=pad_token_id
        )
    return kl_estimate(policy_logps, reference_logps)
