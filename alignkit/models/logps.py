"""Sequence log-probabilities: the hot path of every preference objective.

A naive implementation materializes the (N, T, V) logits and their fp32 log-softmax: for GPT-2's 50,257
tokens, 8 sequences of 512 tokens that is 800 MB per copy, kept alive for backward. Here the transformer
body runs once to give hidden states (N, T, H); the lm-head is then applied only at positions whose label
counts, ``chunk_size`` positions at a time, and each chunk is wrapped in activation checkpointing, so
backward recomputes that chunk's logits instead of storing them. Peak extra memory is one chunk of
(chunk_size, V) fp32 logits, and values and gradients match the naive computation. How the work is laid out
(chunk size, packing) travels as one :class:`LogpsOptions`. Before the body runs,
the batch's sequences are packed into fewer rows without padding where the architecture allows it
(:mod:`alignkit.models.packing`), so the body does not spend compute and activation memory on padding.

The chunked path needs to know what the model's forward does between the last hidden state and the
logits. Supported (see ``_LOGIT_TRANSFORMS``): a plain lm-head (GPT-2, Llama, Mistral, Qwen2/3, Gemma,
Phi-3, OLMo/OLMo-2, GPT-NeoX, SmolLM3), final logit soft-capping (Gemma-2, Gemma-3 text), multiplicative
``logit_scale`` (Cohere) and ``logits_scaling`` division (Granite). Any other architecture, or a model
wrapped in DistributedDataParallel (whose forward must run for gradients to be synchronized), takes the
naive full-logits path: correct, just not memory-lean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from alignkit.models.packing import is_right_padded, pack_rows, supports_packing
from alignkit.models.padding import IGNORE_INDEX

__all__ = [
    "DEFAULT_LOGPS",
    "IGNORE_INDEX",
    "ROOT_CALL",
    "LMHeadParts",
    "LogpsOptions",
    "chosen_rejected",
    "concatenated_forward",
    "lm_head_parts",
    "naive_sequence_logps",
    "reward_scores",
    "sequence_logps",
    "supports_chunked_logps",
]


# A sharded model (FSDP2, :mod:`alignkit.train.sharding`) gathers the parameters its root owns (embeddings,
# final norm, lm-head) only inside a call its hooks see. The chunked path calls the decoder and the lm-head
# separately, never ``model.forward``, so it runs inside this method, which the sharding registers as one
# that FSDP treats like forward: ``getattr(model, ROOT_CALL)(fn, *args)`` runs ``fn(*args)`` there.
ROOT_CALL = "alignkit_root_call"


def _through_root(model: nn.Module, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(model, *args, **kwargs)``, inside the root's forward hooks when ``model`` is sharded."""
    root_call = getattr(model, ROOT_CALL, None)
    if root_call is None:
        return fn(model, *args, **kwargs)
    return root_call(fn, model, *args, **kwargs)


@dataclass(frozen=True)
class LogpsOptions:
    """How :func:`sequence_logps` lays out its work; they change memory and speed, not the values (beyond
    float rounding). A recipe's are ``recipe.model.logps`` (``model.logps_chunk_size``, ``model.padding_free``).

    Attributes:
        chunk_size: positions per lm-head chunk; bounds the transient logits at chunk_size x V floats.
        padding_free: pack the sequences into fewer rows (:mod:`alignkit.models.packing`) when the
            architecture supports it, the batch is right padded and packing saves at least one row.
    """

    chunk_size: int = 256
    padding_free: bool = True

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


DEFAULT_LOGPS = LogpsOptions()


def chosen_rejected(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Split what was computed on a concatenated preference batch into its two halves.

    Args:
        rows: (2B, ...) rows 0..B-1 for the chosen sequences, B..2B-1 for the rejected ones.

    Returns:
        chosen (B, ...) and rejected (B, ...), views of ``rows``.
    """
    if rows.shape[0] % 2:
        raise ValueError(f"a preference batch needs an even number of rows (chosen then rejected), got {rows.shape[0]}")
    chosen, rejected = rearrange(rows, "(side b) ... -> side b ...", side=2)
    return chosen, rejected


def _identity(logits: Tensor, config: Any) -> Tensor:
    return logits


def _softcap(logits: Tensor, config: Any) -> Tensor:
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap


def _cohere_scale(logits: Tensor, config: Any) -> Tensor:
    return logits * config.logit_scale


def _granite_scale(logits: Tensor, config: Any) -> Tensor:
    return logits / config.logits_scaling


# model_type -> what the architecture's ForCausalLM.forward applies to ``lm_head(hidden)``.
_LOGIT_TRANSFORMS: dict[str, Callable[[Tensor, Any], Tensor]] = {
    **dict.fromkeys(
        ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "olmo", "olmo2", "gpt_neox", "smollm3"],
        _identity,
    ),
    "gemma2": _softcap,
    "gemma3_text": _softcap,
    "cohere": _cohere_scale,
    "cohere2": _cohere_scale,
    "granite": _granite_scale,
}


@dataclass(frozen=True)
class LMHeadParts:
    """What the chunked path runs instead of ``model.forward``: ``transform(head(body(...)), config)``."""

    body: nn.Module  # the decoder: ids -> (N, T, H) last hidden states
    head: nn.Module  # the lm-head: (..., H) -> (..., V) logits
    transform: Callable[[Tensor, Any], Tensor]
    config: Any  # the model's config, read by ``transform``


def lm_head_parts(model: nn.Module) -> LMHeadParts | None:
    """The decoder, lm-head and logit transform of ``model`` (``transform(head(body(...)), config)`` are its
    logits) for the chunked path, or None for an architecture it does not know (then only ``model.forward``
    is safe)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return None
    config = getattr(model, "config", None)
    transform = _LOGIT_TRANSFORMS.get(getattr(config, "model_type", ""))
    get_decoder = getattr(model, "get_decoder", None)
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if transform is None or get_decoder is None or not isinstance(head, nn.Module):
        return None
    body = get_decoder()
    return LMHeadParts(body, head, transform, config) if isinstance(body, nn.Module) else None


def supports_chunked_logps(model: nn.Module) -> bool:
    """Whether :func:`sequence_logps` can use the chunked lm-head path for ``model``."""
    return lm_head_parts(model) is not None


def _shifted_targets(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Targets aligned with the positions that predict them.

    Returns:
        targets: (N, T-1), token t+1's label at position t.
        mask: (N, T-1) bool, True where the target counts.
    """
    targets = labels[:, 1:]
    return targets, targets != IGNORE_INDEX


def naive_sequence_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """Reference implementation through the full (N, T, V) logits; used for unsupported architectures.

    Args and returns as :func:`sequence_logps`.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (N, T, V)
    targets, mask = _shifted_targets(labels)
    logprobs = _at_least_fp32(logits[:, :-1]).log_softmax(-1)  # (N, T-1, V)
    token_logps = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (N, T-1)
    token_logps = token_logps * mask
    return token_logps.sum(-1), mask.sum(-1).float()


def _at_least_fp32(x: Tensor) -> Tensor:
    """Half-precision logits are upcast before the softmax; float64 (tests) stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _chunk_token_logps(
    hidden: Tensor, targets: Tensor, head: nn.Module, transform: Callable[[Tensor, Any], Tensor], config: Any
) -> Tensor:
    """log p(target) for a chunk of positions.

    Args:
        hidden: (C, H) last hidden states of C positions.
        targets: (C,) token ids they predict.

    Returns:
        (C,) log-probs in fp32 (float64 for a float64 model).
    """
    logits = transform(_at_least_fp32(head(hidden)), config)  # (C, V)
    # logit - logsumexp avoids a second (C, V) tensor that log_softmax would allocate.
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def sequence_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    logps: LogpsOptions = DEFAULT_LOGPS,
) -> tuple[Tensor, Tensor]:
    """Summed log-probs of the labelled tokens of each sequence under a causal LM.

    Token t is scored by the distribution at position t-1 (labels are shifted inside), so ``labels`` is
    ``input_ids`` with prompt and padding positions set to -100.

    Args:
        model: a Hugging Face ``*ForCausalLM`` (or anything whose forward returns ``.logits``).
        input_ids: (N, T) token ids, right padded.
        attention_mask: (N, T) 1 for real tokens, 0 for padding.
        labels: (N, T) target ids, -100 where a token is not scored.
        logps: chunk size and packing (:class:`LogpsOptions`).

    Returns:
        logps: (N,) fp32 (float64 for a float64 model) sum of log p(label_t | tokens < t) over scored tokens (0 for a row with none).
        counts: (N,) fp32 number of scored tokens.
    """
    if input_ids.shape != labels.shape or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and labels "
            f"{tuple(labels.shape)} must have the same (N, T) shape"
        )
    sums, counts = _through_root(model, _sequence_logps, input_ids, attention_mask, labels, logps)
    return sums, counts


def _sequence_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, logps: LogpsOptions
) -> tuple[Tensor, Tensor]:
    """:func:`sequence_logps` once its arguments are checked (inside the root's hooks when sharded)."""
    parts = lm_head_parts(model)
    if parts is None:
        return naive_sequence_logps(model, input_ids, attention_mask, labels)

    body, head, transform = parts.body, parts.head, parts.transform
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(-1).float()
    pack = logps.padding_free and supports_packing(model) and is_right_padded(attention_mask)
    packed = pack_rows(input_ids, attention_mask, labels) if pack else None
    if packed is not None and packed.num_rows < input_ids.shape[0]:
        hidden = body(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).last_hidden_state
        labels, owner = packed.labels, packed.sequence[:, 1:]  # owner: the original row of each target
    else:
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        owner = None
    # hidden: (R, C, H) with R = N, C = T unless packed

    targets, mask = _shifted_targets(labels)  # (R, C-1)
    rows, cols = mask.nonzero(as_tuple=True)  # (M,) each: the scored positions, row-major
    picked_hidden = hidden[:, :-1][rows, cols]  # (M, H)
    picked_targets = targets[rows, cols]  # (M,)
    sequences = rows if owner is None else owner[rows, cols]  # (M,) original row of each scored token

    # Checkpoint only when backward will run; under no_grad it would just add overhead.
    recompute = torch.is_grad_enabled() and picked_hidden.requires_grad
    pieces = []
    chunk = logps.chunk_size
    for start in range(0, picked_hidden.shape[0], chunk):
        args = (picked_hidden[start : start + chunk], picked_targets[start : start + chunk])
        if recompute:
            pieces.append(
                checkpoint(_chunk_token_logps, *args, head, transform, parts.config, use_reentrant=False)
            )
        else:
            pieces.append(_chunk_token_logps(*args, head, transform, parts.config))
    if not pieces:  # nothing scored: zeros, still attached to the graph so backward() works
        return hidden.sum() * 0.0 + hidden.new_zeros(input_ids.shape[0]).float(), counts
    token_logps = torch.cat(pieces)  # (M,)
    sums = token_logps.new_zeros(input_ids.shape[0]).index_add(0, sequences, token_logps)  # (N,)
    return sums, counts


def concatenated_forward(
    model: nn.Module, batch: Mapping[str, Tensor], *, logps: LogpsOptions = DEFAULT_LOGPS
) -> dict[str, Tensor]:
    """Chosen and rejected log-probs of a preference batch in one forward pass.

    Args:
        model: the causal LM.
        batch: ``input_ids``, ``attention_mask``, ``labels``, each (2B, T), rows 0..B-1 the chosen
            sequences and rows B..2B-1 the rejected ones (pair i is rows i and B+i).
        logps: chunk size and packing (:class:`LogpsOptions`).

    Returns:
        ``chosen_logps``, ``rejected_logps`` (B,) summed response log-probs and ``chosen_lengths``,
        ``rejected_lengths`` (B,) response token counts.
    """
    chosen_rejected(batch["input_ids"])  # fails early, before the forward, on an odd number of rows
    sums, counts = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], logps=logps)
    chosen_logps, rejected_logps = chosen_rejected(sums)  # (B,) each
    chosen_lengths, rejected_lengths = chosen_rejected(counts)
    return {
        "chosen_logps": chosen_logps,
        "rejected_logps": rejected_logps,
        "chosen_lengths": chosen_lengths,
        "rejected_lengths": rejected_lengths,
    }


def reward_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Scalar reward of each sequence from a sequence-classification model with one label.

    The score is read at the last real token of each row (right padding assumed).

    Args:
        model: ``AutoModelForSequenceClassification`` with ``num_labels=1``.
        input_ids: (N, T) token ids, right padded.
        attention_mask: (N, T) 1 for real tokens.

    Returns:
        (N,) fp32 scores.
    """
    scores: Tensor = _through_root(model, _reward_scores, input_ids, attention_mask)
    return scores


def _reward_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    last = (attention_mask.sum(-1) - 1).clamp(min=0)  # (N,) index of the last real token
    head = getattr(model, "score", None)
    body = getattr(model, "base_model", model)
    if isinstance(head, nn.Module) and body is not model:
        # Pool by the attention mask ourselves: the model's own pooling looks for pad_token_id, which is
        # often eos, so a sequence ending in a real eos would be scored one token early.
        hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, T, H)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (N, H)
        return head(pooled).squeeze(-1).float()  # (N,)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (N, 1), pooled by the model
    return logits[:, 0].float()
