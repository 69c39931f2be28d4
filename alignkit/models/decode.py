"""The sampling loop behind every generation: per-row random streams, rows sorted by prompt length, finished
rows dropped from the batch, and a key/value cache allocated once at its final size.

Each row (one completion) owns a stream of uniforms, one per new token, fixed before decoding starts; a token
is picked by inverse CDF from the distribution sampling uses (logits / temperature, then the top-p nucleus).
A row's completion therefore depends only on its prompt and its stream, not on the rows beside it, how the
rows are batched or ordered, or when the others finish, which is what lets the loop:

- sort all rows by prompt length before cutting batches (less left padding to compute);
- drop a row from the batch as soon as it emits EOS (transformers' ``generate`` keeps computing finished rows
  until the last one ends);
- write keys and values into a buffer allocated for prompt + ``max_new_tokens`` positions (transformers'
  dynamic cache concatenates, copying the whole cache at every step).

:mod:`alignkit.models.continuous` builds continuous batching (finished rows replaced by waiting prompts) on
these pieces.

Batching changes the floating-point sums slightly (a different matrix shape), so a token whose uniform falls
within that rounding of a CDF boundary can differ between two batchings, and its row goes its own way from
there. The tests check that the tokens are equal on tiny models. On SmolLM2-135M in fp32 the log-probs of 12
chat rows moved by at most 2.3e-5 between two batch layouts, and halving the batch changed 6 of 64 chat rows
of 128 tokens (batches of 32 and 16) and 10 of 256 rows of 32 tokens (batches of 64 and 32)
(benchmarks/RESULTS_continuous_batching.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

from alignkit.models.padding import pad_token_rows
from alignkit.models.sampling import GREEDY_BELOW_TEMPERATURE

__all__ = [
    "DecodeStats",
    "PreallocatedLayer",
    "cache_argument",
    "decode",
    "new_cache",
    "pick_and_record",
    "pick_tokens",
    "prefill",
    "row_uniforms",
]


@dataclass
class DecodeStats:
    """What a decode did: forward passes over the weights, and the tokens they ran on.

    Attributes:
        forwards: model forward calls (one prefill per batch, then one per decoding step).
        prompt_tokens: non-padding prompt tokens prefilled.
        new_tokens: tokens sampled (EOS included); each is one row of one decoding forward.
    """

    forwards: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0


class PreallocatedLayer(DynamicLayer):
    """A layer's key/value cache in a buffer of fixed length: ``update`` writes in place, never concatenates.

    ``keys``/``values`` are views of the filled prefix, as transformers' attention expects.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._keys: Tensor | None = None
        self._values: Tensor | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.device = key_states.device
        b, heads, _, dim = key_states.shape
        self._keys = key_states.new_empty((b, heads, self.capacity, dim))
        self._values = value_states.new_empty((b, value_states.shape[1], self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args: object,
               **kwargs: object) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self._keys is not None and self._values is not None
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"key/value cache of {self.capacity} positions cannot hold {end}")
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: Tensor, drop: int = 0) -> None:
        """Keep the rows ``indices`` (copying only the filled positions), and leave out the first ``drop``
        positions (which no kept row attends to)."""
        if self._keys is None or self._values is None:
            return
        self.length -= drop
        keys = self._keys.new_empty((len(indices), *self._keys.shape[1:]))
        values = self._values.new_empty((len(indices), *self._values.shape[1:]))
        keys[:, :, :self.length] = self._keys[indices, :, drop:drop + self.length]
        values[:, :, :self.length] = self._values[indices, :, drop:drop + self.length]
        self._keys, self._values = keys, values
        self.keys, self.values = keys[:, :, :self.length], values[:, :, :self.length]

    @classmethod
    def stacked(cls, upper: PreallocatedLayer, lower: PreallocatedLayer, capacity: int) -> PreallocatedLayer:
        """A new layer holding ``upper``'s rows above ``lower``'s, right-aligned to the longer of their lengths.

        A row's next position comes right after its last one, in either part; the positions before a row's
        first one are zeros (masked by the caller; finite, so a zero attention weight times them stays zero).

        Shape:
            upper: (B1, H, L1, D), lower: (B2, H, L2, D) -> (B1 + B2, H, max(L1, L2), D) in a buffer of
            ``capacity`` positions.
        """
        if upper._keys is None or upper._values is None or lower._keys is None or lower._values is None:
            raise RuntimeError("cannot stack a key/value cache that holds nothing yet")
        length = max(upper.length, lower.length)
        rows = upper._keys.shape[0] + lower._keys.shape[0]
        layer = cls(capacity)
        layer.device, layer.is_initialized, layer.length = upper.device, True, length
        keys = upper._keys.new_zeros((rows, upper._keys.shape[1], capacity, upper._keys.shape[-1]))
        values = upper._values.new_zeros((rows, upper._values.shape[1], capacity, upper._values.shape[-1]))
        for buffer, top, bottom in ((keys, upper._keys, lower._keys), (values, upper._values, lower._values)):
            buffer[:len(top), :, length - upper.length:length] = top[:, :, :upper.length]
            buffer[len(top):, :, length - lower.length:length] = bottom[:, :, :lower.length]
        layer._keys, layer._values = keys, values
        layer.keys, layer.values = keys[:, :, :length], values[:, :, :length]
        return layer


def new_cache(model: nn.Module, capacity: int) -> DynamicCache:
    """transformers' cache for ``model``, its full-attention layers preallocated for ``capacity`` positions
    (sliding-window and other layer kinds keep transformers' own classes)."""
    config = model.config
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"{type(model).__name__} has no transformers config: decoding needs a transformers model")
    cache = DynamicCache(config=config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def cache_argument(model: nn.Module) -> str:
    """The forward's name for the key/value cache: ``cache`` in recent transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def row_uniforms(seed: int, row: int, length: int) -> Tensor:
    """The uniforms of row ``row`` under ``seed``: one per new token, float64, the same on any device."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + row) % (2**63))
    return torch.rand(length, generator=generator, dtype=torch.float64)


def pick_tokens(logits: Tensor, uniforms: Tensor, temperature: float, top_p: float) -> Tensor:
    """(B,) tokens: argmax for ``temperature`` 0 (or below :data:`GREEDY_BELOW_TEMPERATURE`), else inverse CDF of softmax(logits / T) cut to the top-p
    nucleus (the most likely tokens whose mass before them is below ``top_p``; the first is always kept).

    Args:
        logits: (B, V) next-token logits.
        uniforms: (B,) draws in [0, 1), one per row.
    """
    if temperature < GREEDY_BELOW_TEMPERATURE:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        probs = probs.scatter(1, order, sorted_probs.masked_fill(outside, 0.0))
    cdf = probs.cumsum(dim=-1)
    # right=True never lands on a zero-probability token (its cdf equals its predecessor's).
    tokens = torch.searchsorted(cdf, (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(1), right=True)
    return tokens.squeeze(1).clamp(max=probs.shape[1] - 1)


def pick_and_record(logits: Tensor, uniforms: Tensor, temperature: float, top_p: float, eos: Tensor,
                    rows: list[int], tokens: list[list[int]], logps: list[list[float]],
                    finished: list[bool]) -> tuple[Tensor, Tensor]:
    """Pick each row's next token and append it, with its sampler log-prob, to that row's record.

    Args:
        logits: (B, V) next-token logits of the rows ``rows``.
        uniforms: (B,) each row's draw for this token.
        eos: the ids that end a completion.
        rows: B indices into ``tokens``, ``logps`` and ``finished``, which are updated in place.

    Returns:
        (B,) the picked tokens and (B,) whether each is an EOS.
    """
    logits = logits.float()
    picked = pick_tokens(logits, uniforms, temperature, top_p)
    picked_logps = torch.log_softmax(logits.double() / (temperature or 1.0), dim=-1).gather(
        1, picked.unsqueeze(1)).squeeze(1)
    ended = torch.isin(picked, eos)
    for r, token, end, logp in zip(rows, picked.tolist(), ended.tolist(), picked_logps.tolist(), strict=True):
        tokens[r].append(token)
        logps[r].append(logp)
        finished[r] = end
    return picked, ended


def prefill(model: nn.Module, prompts: Sequence[Sequence[int]], pad_id: int, max_new_tokens: int,
            device: torch.device, stats: DecodeStats, cache_arg: str) -> tuple[Any, DynamicCache, Tensor, Tensor]:
    """One forward over the left-padded prompts, filling a cache with room for ``max_new_tokens`` more positions.

    Args:
        prompts: B rows of prompt token ids.
        cache_arg: the forward's name for the cache (:func:`cache_argument`).

    Returns:
        The model's output (its logits at the last position only), the cache, the attention mask buffer
        (B, W + max_new_tokens), ones past the prompts, and the position id of each row's next token (B, 1).
    """
    ids, mask = pad_token_rows(prompts, pad_id, left=True)
    ids, mask, width = ids.to(device), mask.to(device), ids.shape[1]
    position = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = new_cache(model, width + max_new_tokens)
    # Full-length mask buffer: a step only extends the view, as the cache does.
    full_mask = torch.ones((len(prompts), width + max_new_tokens), dtype=torch.long, device=device)
    full_mask[:, :width] = mask
    padded = not bool(mask.all())  # without padding the mask is left out: attention takes its causal fast path
    out = model(input_ids=ids, attention_mask=mask if padded else None, position_ids=position, use_cache=True,
                logits_to_keep=1, **{cache_arg: cache})
    if cache.get_seq_length() != width:  # a forward that ignored the cache would decode from nothing, silently
        raise RuntimeError(f"{type(model).__name__} did not fill the key/value cache it was given")
    stats.forwards += 1
    stats.prompt_tokens += int(mask.sum())
    return out, cache, full_mask, position[:, -1:] + 1


# Called after each batch with the number of rows done so far.
BatchDone = Callable[[int], None]


@torch.inference_mode()
def decode(model: nn.Module, prompts: Sequence[Sequence[int]], uniforms: Tensor, *, max_new_tokens: int,
           temperature: float, top_p: float, eos_ids: Sequence[int], pad_id: int, batch_size: int,
           on_batch: BatchDone | None = None, stats: DecodeStats | None = None,
           token_logps: list[list[float]] | None = None,
           stop: Callable[[], bool] | None = None) -> list[tuple[list[int], bool]]:
    """Sample a completion for every prompt row.

    Args:
        model: a causal LM taking ``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values``,
            ``use_cache`` and ``logits_to_keep`` (any transformers model).
        prompts: R rows of prompt token ids (a prompt sampled K times appears K times).
        uniforms: (R, max_new_tokens) each row's stream (see :func:`row_uniforms`).
        eos_ids: ids that end a completion; the EOS is kept as its last token.
        pad_id: the id written under padding (masked, never attended to).
        batch_size: rows decoded together.
        on_batch: called after each batch with the rows done.
        stats: filled with the forwards and tokens this call computed.
        token_logps: when given (an empty list), filled with each row's log-prob of every sampled token under
            the distribution it was drawn from, softmax(logits / temperature) (before a top-p cut; for
            ``temperature == 0``, softmax(logits)): the sampler's log-probs, to compare with a trainer's.
        stop: polled after each new token; True ends the batch there (a server whose client left), and the
            rows not decoded yet are returned empty.

    Returns:
        For each row, in the order given: (new token ids, whether it ended with an EOS).
    """
    if uniforms.shape != (len(prompts), max_new_tokens):
        raise ValueError(f"uniforms of shape {tuple(uniforms.shape)}, expected ({len(prompts)}, {max_new_tokens})")
    stats = stats if stats is not None else DecodeStats()
    device = next(model.parameters()).device
    eos = torch.tensor(list(eos_ids), device=device)
    order = sorted(range(len(prompts)), key=lambda r: (len(prompts[r]), r))
    results: list[tuple[list[int], bool]] = [([], False)] * len(prompts)
    logps: list[list[float]] = [[] for _ in prompts]
    done = 0
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        if stop is not None and stop():
            break
        batch_logps: list[list[float]] = [[] for _ in rows]
        for row, result, row_logps in zip(rows, _decode_batch(model, [prompts[r] for r in rows], uniforms[rows],
                                                              device, eos, max_new_tokens, temperature, top_p,
                                                              pad_id, stats, batch_logps, stop),
                                          batch_logps, strict=True):
            results[row] = result
            logps[row] = row_logps
        done += len(rows)
        if on_batch is not None:
            on_batch(done)
    if token_logps is not None:
        token_logps[:] = logps
    return results


def _decode_batch(model: nn.Module, prompts: list[Sequence[int]], uniforms: Tensor, device: torch.device,
                  eos: Tensor, max_new_tokens: int, temperature: float, top_p: float, pad_id: int,
                  stats: DecodeStats, logps: list[list[float]],
                  stop: Callable[[], bool] | None = None) -> list[tuple[list[int], bool]]:
    """One batch: a prefill of the left-padded prompts, then one forward per new token for the rows still open."""
    cache_arg = cache_argument(model)
    out, cache, full_mask, next_position = prefill(model, prompts, pad_id, max_new_tokens, device, stats, cache_arg)
    width = cache.get_seq_length()
    padded = not bool(full_mask[:, :width].all())  # without padding the mask is left out: the causal fast path
    uniforms = uniforms.to(device)
    open_rows = torch.arange(len(prompts), device=device)  # batch row of each row still decoding
    tokens: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    for step in range(max_new_tokens):
        picked, ended = pick_and_record(out.logits[:, -1], uniforms[open_rows, step], temperature, top_p, eos,
                                        open_rows.tolist(), tokens, logps, finished)
        stats.new_tokens += len(picked)
        if step == max_new_tokens - 1 or (stop is not None and stop()):
            break
        keep = (~ended).nonzero().squeeze(1)
        if len(keep) == 0:
            break
        if len(keep) < len(open_rows):
            cache.batch_select_indices(keep)
            open_rows, picked, next_position = open_rows[keep], picked[keep], next_position[keep]
            full_mask = full_mask[keep]
        out = model(input_ids=picked.unsqueeze(1), attention_mask=full_mask[:, :width + step + 1] if padded else None,
                    position_ids=next_position, use_cache=True, **{cache_arg: cache})
        stats.forwards += 1
        next_position = next_position + 1
    return list(zip(tokens, finished, strict=True))
