"""Continuous batching: a decoding batch whose finished rows are replaced by prompts waiting in a queue.

:func:`alignkit.models.decode.decode` decodes a batch until its last row ends; rows that end early are
dropped, so the last steps of a batch run on a few rows, each step still reading every weight once. Here the
rows wait in a queue (shortest prompt first, as there) and, whenever ``refill_at`` slots of the batch are free,
the next prompts are prefilled in a forward of their own and joined to the batch:

- the key/value cache holds one buffer per layer for the whole batch (a
  :class:`~alignkit.models.decode.PreallocatedLayer`); a join right-aligns the batch's rows and the newcomers'
  to the longer of their lengths, zeros and a zero attention mask before each row's first position;
- positions no row attends to any more (before every row's first one) are cut whenever rows end, so the
  cache stays as long as its longest row (prompt + tokens so far), not as long as the whole call;
- each row keeps its own position ids (its own token count) and its own stream of uniforms, indexed by its
  own step: its tokens depend only on its prompt and its stream, the same as decoding that prompt alone, up to
  the float rounding of a different batch shape (see the decode module).

Models whose cache has layers other than full attention (sliding windows) decode with
:func:`~alignkit.models.decode.decode`, one batch after the other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from alignkit.models.decode import (
    BatchDone,
    DecodeStats,
    PreallocatedLayer,
    cache_argument,
    decode,
    new_cache,
    pick_and_record,
    prefill,
)

__all__ = ["decode_continuous", "default_refill_at"]


def default_refill_at(batch_size: int) -> int:
    """Free slots that trigger a refill: a quarter of the batch (each refill is a forward of its own)."""
    return max(1, batch_size // 4)


@dataclass
class _Rows:
    """The rows decoding together and the state each carries to its next forward.

    Attributes:
        rows: (B,) each row's index in the call's prompts.
        steps: (B,) tokens each row has sampled.
        tokens: (B,) each row's last sampled token, the input of its next forward.
        positions: (B, 1) that token's position id.
        mask: (B, capacity) attention mask buffer, ones past the cache's length.
        cache: the rows' key/value cache.
    """

    rows: Tensor
    steps: Tensor
    tokens: Tensor
    positions: Tensor
    mask: Tensor
    cache: DynamicCache

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, keep: Tensor) -> None:
        """Keep the rows ``keep`` (batch indices), cache included, and cut the cache's leading positions that
        none of them attends to: the cache stays as long as its longest row (prompt and tokens so far)."""
        self.rows, self.steps, self.tokens = self.rows[keep], self.steps[keep], self.tokens[keep]
        self.positions, mask = self.positions[keep], self.mask[keep]
        length = self.cache.get_seq_length()
        drop = unattended_prefix(mask[:, :length]) if len(keep) else 0
        for layer in _layers(self.cache):
            layer.batch_select_indices(keep, drop)
        # The buffer keeps its width: the positions past the cache stay ones.
        self.mask = torch.cat([mask[:, drop:], mask.new_ones((len(keep), drop))], dim=1)


def _layers(cache: DynamicCache) -> list[PreallocatedLayer]:
    """The cache's layers, every one a preallocated full-attention layer (what :func:`decode_continuous` uses)."""
    layers = [layer for layer in cache.layers if isinstance(layer, PreallocatedLayer)]
    if len(layers) != len(cache.layers):
        raise TypeError("continuous batching joins full-attention caches only")
    return layers


def unattended_prefix(mask: Tensor) -> int:
    """How many leading positions no row attends to (the cache can drop them).

    Shape:
        mask: (B, L) attention mask, B >= 1.
    """
    return int(mask.any(dim=0).int().argmax())  # argmax finds the first True


def join_rows(batch: _Rows | None, newcomers: _Rows, max_new_tokens: int) -> _Rows:
    """``batch``'s rows followed by ``newcomers``', in one cache right-aligned to the longer of the two.

    The new cache has room for ``max_new_tokens`` more positions, enough for any row (each has fewer left).
    """
    if batch is None:
        return newcomers
    length, new_length = batch.cache.get_seq_length(), newcomers.cache.get_seq_length()
    joined = max(length, new_length)
    capacity = joined + max_new_tokens
    batch.cache.layers = [PreallocatedLayer.stacked(top, bottom, capacity)
                          for top, bottom in zip(_layers(batch.cache), _layers(newcomers.cache), strict=True)]
    mask = batch.mask.new_ones((len(batch) + len(newcomers), capacity))
    mask[:, :joined] = 0
    mask[:len(batch), joined - length:joined] = batch.mask[:, :length]
    mask[len(batch):, joined - new_length:joined] = newcomers.mask[:, :new_length]
    return _Rows(torch.cat([batch.rows, newcomers.rows]), torch.cat([batch.steps, newcomers.steps]),
                 torch.cat([batch.tokens, newcomers.tokens]), torch.cat([batch.positions, newcomers.positions]),
                 mask, batch.cache)


def full_attention_only(model: nn.Module) -> bool:
    """Whether every layer of ``model``'s cache is a full-attention one (which joining rows supports)."""
    return all(isinstance(layer, PreallocatedLayer) for layer in new_cache(model, 1).layers)


@torch.inference_mode()
def decode_continuous(model: nn.Module, prompts: Sequence[Sequence[int]], uniforms: Tensor, *,
                      max_new_tokens: int, temperature: float, top_p: float, eos_ids: Sequence[int], pad_id: int,
                      batch_size: int, refill_at: int | None = None, on_batch: BatchDone | None = None,
                      stats: DecodeStats | None = None, token_logps: list[list[float]] | None = None,
                      stop: Callable[[], bool] | None = None) -> list[tuple[list[int], bool]]:
    """Sample a completion for every prompt row, finished rows replaced by waiting ones.

    The arguments and the result are those of :func:`alignkit.models.decode.decode`, and so are the tokens
    (each row depends only on its prompt and its uniforms), except:

    Args:
        refill_at: free slots (1 to ``batch_size``) that make the waiting prompts join the batch; default
            :func:`default_refill_at`. A join costs a prefill forward and a copy of the cache.
        on_batch: called with the rows done whenever some end.
        stop: polled before each forward; True ends decoding there, the rows not started are returned empty.

    Shape:
        prompts: R rows; uniforms: (R, max_new_tokens).
    """
    if uniforms.shape != (len(prompts), max_new_tokens):
        raise ValueError(f"uniforms of shape {tuple(uniforms.shape)}, expected ({len(prompts)}, {max_new_tokens})")
    refill_at = default_refill_at(batch_size) if refill_at is None else refill_at
    if not 1 <= refill_at <= batch_size:
        raise ValueError(f"refill_at must be in [1, batch_size={batch_size}], got {refill_at}")
    if not full_attention_only(model):
        return decode(model, prompts, uniforms, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_p=top_p, eos_ids=eos_ids, pad_id=pad_id, batch_size=batch_size, on_batch=on_batch,
                      stats=stats, token_logps=token_logps, stop=stop)
    stats = stats if stats is not None else DecodeStats()
    device = next(model.parameters()).device
    eos = torch.tensor(list(eos_ids), device=device)
    uniforms = uniforms.to(device)
    cache_arg = cache_argument(model)
    queue = deque(sorted(range(len(prompts)), key=lambda r: (len(prompts[r]), r)))
    tokens: list[list[int]] = [[] for _ in prompts]
    logps: list[list[float]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    batch: _Rows | None = None
    done = 0
    while queue or batch is not None:
        if stop is not None and stop():
            break
        free = batch_size - (0 if batch is None else len(batch))
        if queue and (batch is None or free >= refill_at):
            rows = [queue.popleft() for _ in range(min(free, len(queue)))]
            out, cache, mask, positions = prefill(model, [prompts[r] for r in rows], pad_id, max_new_tokens, device,
                                                  stats, cache_arg)
            group = _Rows(torch.tensor(rows, device=device), torch.zeros(len(rows), dtype=torch.long, device=device),
                          torch.zeros_like(positions[:, 0]), positions, mask, cache)
        else:
            assert batch is not None
            group, batch = batch, None
            length = group.cache.get_seq_length()
            out = model(input_ids=group.tokens.unsqueeze(1), attention_mask=group.mask[:, :length + 1],
                        position_ids=group.positions, use_cache=True, **{cache_arg: group.cache})
            stats.forwards += 1
            group.positions = group.positions + 1
        picked, ended = pick_and_record(out.logits[:, -1], uniforms[group.rows, group.steps], temperature, top_p,
                                        eos, group.rows.tolist(), tokens, logps, finished)
        stats.new_tokens += len(picked)
        group.tokens, group.steps = picked, group.steps + 1
        ended |= group.steps >= max_new_tokens
        if bool(ended.any()):
            done += int(ended.sum())
            if on_batch is not None:
                on_batch(done)
            group.select((~ended).nonzero().squeeze(1))
        if len(group):
            batch = join_rows(batch, group, max_new_tokens)
    if token_logps is not None:
        token_logps[:] = logps
    return list(zip(tokens, finished, strict=True))
