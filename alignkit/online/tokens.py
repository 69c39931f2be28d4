"""Per-token forwards of sampled completions: log-probs, entropies and values, for PPO and GRPO.

RLOO needs one log-prob per completion (:func:`alignkit.models.kl.completion_logps`); PPO and GRPO need one per
completion *token*, and PPO a value at every token. A micro-batch of completions is laid out as
:func:`~alignkit.models.kl.completion_batch` lays it out (prompt then completion, right-padded); the outputs are
(b, T) over the completion tokens only, T the longest completion of the micro-batch, right-padded with a mask,
the convention of :mod:`alignkit.online.ppo`. Completion token j of row r is predicted by the hidden state at
position ``len(prompt_r) + j - 1``; the value V_j is read from that same hidden state (the state before the
token is chosen), as in the implementations :mod:`alignkit.online.ppo` cites.

Where the architecture is known (:func:`alignkit.models.logps.lm_head_parts`) the decoder runs once and the
lm-head only at the completion positions, ``chunk_size`` at a time and recomputed in backward, as
:func:`~alignkit.models.logps.sequence_logps` does (without its packing); otherwise the model's own forward
gives the logits and its last hidden state.

Value models (``online.ppo.value_model``):

- :class:`ValueHead` (``policy_head``): a scalar linear head on the policy's last hidden state, zero-initialised
  (every value starts at 0, and the value loss reaches the shared body only once the head has moved);
- :class:`ValueModel` (``separate``): a body of its own (a copy of the policy's decoder, or the body of an
  alignkit reward model) with a scalar head (a fresh :class:`ValueHead`, or the reward model's score layer).

Neither is a submodule of the policy, so the policy's ``model/`` folder and checkpoint weights hold only the
policy; the trainer keeps the value model's trainable tensors in a checkpoint file of their own.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from alignkit.models.generate import Completion
from alignkit.models.kl import completion_batch
from alignkit.models.logps import LMHeadParts, lm_head_parts

__all__ = [
    "TokenOutputs",
    "TokenPositions",
    "ValueHead",
    "ValueModel",
    "hidden_size",
    "token_forward",
    "value_forward",
    "value_model_from_policy",
    "value_model_from_reward_model",
]


@dataclass(frozen=True)
class TokenPositions:
    """Where the completion tokens of a micro-batch sit.

    Attributes:
        rows: (M,) the row of each completion token (row-major over the micro-batch).
        sources: (M,) the position in the padded batch whose hidden state predicts it.
        columns: (M,) its index among its completion's tokens.
        targets: (M,) its token id.
        mask: (b, T) bool, True at the completion tokens, right-padded.
    """

    rows: Tensor
    sources: Tensor
    columns: Tensor
    targets: Tensor
    mask: Tensor

    @classmethod
    def of(cls, completions: Sequence[Completion], device: torch.device) -> TokenPositions:
        if not completions:
            raise ValueError("a micro-batch needs at least one completion")
        rows: list[int] = []
        sources: list[int] = []
        columns: list[int] = []
        targets: list[int] = []
        for r, c in enumerate(completions):
            p, n = len(c.prompt_ids), len(c.completion_ids)
            if p == 0:
                raise ValueError("a completion of an empty prompt has no position that predicts its first token; "
                                 "give every prompt at least one token")
            if n == 0:
                raise ValueError("a completion without tokens cannot carry a reward")
            rows += [r] * n
            sources += range(p - 1, p + n - 1)
            columns += range(n)
            targets += c.completion_ids
        width = max(len(c.completion_ids) for c in completions)
        lengths = torch.tensor([len(c.completion_ids) for c in completions])
        mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)

        def as_tensor(values: list[int]) -> Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return cls(as_tensor(rows), as_tensor(sources), as_tensor(columns), as_tensor(targets), mask.to(device))

    def scatter(self, values: Tensor) -> Tensor:
        """(M,) values -> (b, T) float32, 0 at padding (differentiable)."""
        out = torch.zeros(self.mask.shape, dtype=torch.float32, device=values.device)
        return out.index_put((self.rows, self.columns), values.float())


@dataclass
class TokenOutputs:
    """Per-token outputs of one micro-batch, (b, T) each, right-padded (see the module docstring).

    Attributes:
        logps: log pi of the sampled tokens (with gradient when grad is enabled).
        mask: bool, True at real tokens.
        values: V at each token (``value_head`` given), else None.
        entropy: the policy's entropy at each token (``entropy=True``, no gradient), else None.
    """

    logps: Tensor
    mask: Tensor
    values: Tensor | None = None
    entropy: Tensor | None = None


def _float(logits: Tensor) -> Tensor:
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _logps_of(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def _tempered(logits: Tensor, temperature: float) -> Tensor:
    """The logits of the distribution the sampler drew from: divided by its temperature (none at 1, so the
    default path is unchanged to the bit)."""
    return logits if temperature == 1.0 else logits / temperature


def _chunk_logits(hidden: Tensor, parts: LMHeadParts, temperature: float) -> Tensor:
    return _tempered(parts.transform(_float(parts.head(hidden)), parts.config), temperature)


def _chunk_logps(hidden: Tensor, targets: Tensor, parts: LMHeadParts, temperature: float = 1.0) -> Tensor:
    return _logps_of(_chunk_logits(hidden, parts, temperature), targets)


def _entropy_of(logits: Tensor) -> Tensor:
    return torch.special.entr(torch.softmax(logits.float(), dim=-1)).sum(-1)  # 0 log 0 = 0


def _differentiable_entropy(logits: Tensor) -> Tensor:
    """H = logsumexp(z) - sum softmax(z) z: the same value, with a gradient that stays finite."""
    z = logits.float()
    return z.logsumexp(-1) - (torch.softmax(z, dim=-1) * z).sum(-1)


def _chunk_logps_entropy(hidden: Tensor, targets: Tensor, parts: LMHeadParts, temperature: float = 1.0) -> Tensor:
    """(2, n): log-probs and entropies of a chunk, both with gradient."""
    logits = _chunk_logits(hidden, parts, temperature)
    return torch.stack([_logps_of(logits, targets), _differentiable_entropy(logits)])


class ValueHead(nn.Module):
    """V(h) = w . h + b on a hidden state, in float32, zero-initialised."""

    def __init__(self, hidden_size: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1, device=device, dtype=torch.float32)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """(..., H) -> (...,) float32."""
        return self.linear(hidden.float()).squeeze(-1)


def _last_hidden(module: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(b, W, H) last hidden states of a decoder body or (``output_hidden_states``) of a whole model."""
    out = module(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True)
    hidden = getattr(out, "last_hidden_state", None)
    return hidden if hidden is not None else out.hidden_states[-1]


class ValueModel(nn.Module):
    """A value model of its own: ``head(body(ids).last_hidden_state)`` at every completion token.

    Args:
        body: a decoder (or a whole model whose forward gives ``hidden_states``).
        head: (..., H) -> (..., 1) or (...,), e.g. a :class:`ValueHead` or a reward model's score layer.
    """

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, positions: TokenPositions) -> Tensor:
        """(b, T) float32 values at the completion tokens."""
        hidden = _last_hidden(self.body, input_ids, attention_mask)[positions.rows, positions.sources]  # (M, H)
        weight = next(self.head.parameters())
        values = self.head(hidden.to(weight.dtype)).float()
        return positions.scatter(values.reshape(-1))


def value_model_from_policy(policy: nn.Module) -> ValueModel:
    """A copy of the policy's decoder (the whole policy for an architecture without known parts), trainable
    where the policy is (its adapter, or every weight), with a fresh zero-initialised :class:`ValueHead`."""
    parts = lm_head_parts(policy)
    body = copy.deepcopy(parts.body if parts is not None else policy)
    device = next(policy.parameters()).device
    return ValueModel(body, ValueHead(hidden_size(policy), device=device))


def value_model_from_reward_model(folder: str | Path, tokenizer, device: torch.device,
                                  dtype: torch.dtype) -> ValueModel:
    """The body and score layer of an alignkit reward model (a one-label sequence classifier), all trainable.

    Raises:
        ValueError: not a model folder, or a tokenizer whose vocabulary differs from the policy's (the value
            model reads the policy's token ids).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"online.ppo.value_init: {folder} is not a reward-model folder (no config.json)")
    if AutoTokenizer.from_pretrained(folder).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"online.ppo.value_init: the reward model in {folder} has another tokenizer than the "
                         "policy; its value model must read the policy's token ids")
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=dtype,
                                                               use_safetensors=True)
    head = getattr(model, "score", None)
    if not isinstance(head, nn.Module) or model.base_model is model:
        raise ValueError(f"online.ppo.value_init: {folder} has no body and 'score' layer to start a value model from")
    value = ValueModel(model.base_model, head).to(device)
    for p in value.parameters():
        p.requires_grad_(True)
    return value


def hidden_size(model: nn.Module) -> int:
    """The width of ``model``'s hidden states: its config's ``hidden_size``, else its input embeddings' width."""
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    if isinstance(size, int):
        return size
    embeddings: Any = cast(Any, model).get_input_embeddings()
    return int(embeddings.weight.shape[1])


def token_forward(model: nn.Module, completions: Sequence[Completion], pad_token_id: int, *, chunk_size: int = 256,
                  value_head: ValueHead | None = None, entropy: bool = False,
                  entropy_grad: bool = False, temperature: float = 1.0) -> TokenOutputs:
    """Per-token log-probs (and values from ``value_head`` on the same hidden states, and entropies) of a
    micro-batch of completions under ``model``, with gradient when grad is enabled.

    Args:
        model: the policy (a causal LM), in the mode the caller chose (the trainer uses eval mode).
        completions: b completions (their prompt and completion ids).
        pad_token_id: the padding id (masked out: any valid id).
        chunk_size: lm-head positions per chunk (``model.logps_chunk_size``).
        value_head: read a value at every token from the policy's last hidden state.
        entropy: also compute each token's entropy (no gradient; costs a softmax over the vocabulary).
        entropy_grad: the entropies carry their gradient too (an entropy bonus in the loss); implies ``entropy``.
        temperature: the sampling temperature: log-probs and entropies are those of softmax(logits / T), the
            distribution the completions were drawn from (at T = 1, the model's own).
    """
    entropy = entropy or entropy_grad
    device = next(model.parameters()).device
    batch = completion_batch(completions, pad_token_id, device)
    where = TokenPositions.of(completions, device)
    parts = lm_head_parts(model)
    entropies = None
    if parts is None:  # the model's own forward: full logits
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                    output_hidden_states=value_head is not None)
        logits = _tempered(_float(out.logits[where.rows, where.sources]), temperature)  # (M, V)
        token_logps = _logps_of(logits, where.targets)
        if entropy_grad:
            entropies = _differentiable_entropy(logits)
        elif entropy:
            with torch.no_grad():
                entropies = _entropy_of(logits.detach())
        picked = out.hidden_states[-1][where.rows, where.sources] if value_head is not None else logits
    else:
        hidden = parts.body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            use_cache=False).last_hidden_state  # (b, W, H)
        picked = hidden[where.rows, where.sources]  # (M, H)
        recompute = torch.is_grad_enabled() and picked.requires_grad
        pieces, entropy_pieces = [], []
        for lo in range(0, picked.shape[0], chunk_size):
            h, t = picked[lo:lo + chunk_size], where.targets[lo:lo + chunk_size]
            if recompute and entropy_grad:
                both = checkpoint(_chunk_logps_entropy, h, t, parts, temperature, use_reentrant=False)
                pieces.append(both[0])
                entropy_pieces.append(both[1])
                continue
            if recompute:
                pieces.append(checkpoint(_chunk_logps, h, t, parts, temperature, use_reentrant=False))
            elif entropy:
                logits = _chunk_logits(h, parts, temperature)
                pieces.append(_logps_of(logits, t))
                entropy_pieces.append(_entropy_of(logits))
            else:
                pieces.append(_chunk_logps(h, t, parts, temperature))
            if entropy and recompute:
                with torch.no_grad():
                    entropy_pieces.append(_entropy_of(_chunk_logits(h.detach(), parts, temperature)))
        token_logps = torch.cat(pieces)
        if entropy:
            entropies = torch.cat(entropy_pieces)
    return TokenOutputs(
        logps=where.scatter(token_logps), mask=where.mask,
        values=where.scatter(value_head(picked)) if value_head is not None else None,
        entropy=where.scatter(entropies) if entropies is not None else None,
    )


def value_forward(value_model: ValueModel, completions: Sequence[Completion], pad_token_id: int) -> Tensor:
    """(b, T) values of a micro-batch under a separate value model."""
    device = next(value_model.parameters()).device
    batch = completion_batch(completions, pad_token_id, device)
    values: Tensor = value_model(batch["input_ids"], batch["attention_mask"], TokenPositions.of(completions, device))
    return values
