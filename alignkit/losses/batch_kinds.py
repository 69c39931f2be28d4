"""Batch kinds: what a batch holds and what a loss reads from the model, one registered object per kind.

A loss declares the kind it reads (``register_loss(..., inputs=KWAY)``) and a data source the kinds its
items feed (``register_source(..., feeds=PAIR_KINDS)``); recipe validation compares the two objects. All
that differs between kinds is asked of the kind:

- the model it trains (:attr:`BatchKind.reward_model`: a scalar score head, or a causal LM's log-probs);
- the sources that feed it, directly or by splitting another kind's items (:meth:`BatchKind.fed_by`);
- how its items are collated (:meth:`BatchKind.collate`) and how a collated batch becomes the
  :class:`~alignkit.losses.stats.PreferenceStats` the loss reads (:meth:`BatchKind.stats`): the data and
  training layers sit above this one, so they attach their function to the kind
  (``@KWAY.collates``, ``@KWAY.computes_stats``) and everything else calls the kind;
- the statistics of a made-up batch (:meth:`BatchKind.made_up_stats`: the metric names a stage logs).

Adding a kind is one :class:`BatchKind` here, its collate function (``data/``), its statistics
(``train/forward.py``) and the :class:`PreferenceStats` fields it fills.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from alignkit.lazy import lazy_module
from alignkit.losses.stats import PreferenceStats
from alignkit.registry import Registry, RegistryError

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = ["BATCH_KINDS", "KWAY", "LOGPS", "PAIR_KINDS", "SCORES", "UNPAIRED", "BatchKind", "batch_kind"]

F = TypeVar("F", bound=Callable[..., Any])
# (needs_reference, needs_mismatched, paired) -> the statistics of a tiny batch (B=2) of this kind.
MadeUpStats = Callable[[bool, bool, bool], PreferenceStats]


@dataclass(eq=False, repr=False)
class BatchKind:
    """One kind of batch, compared by identity (never by its name).

    Attributes:
        name: the word recipes, ``alignkit losses`` and docs/losses.md show.
        items: what its data items are, in words ("pairs", "K-way comparisons"), for error messages.
        description: one line for the docs.
        reward_model: the model scores whole sequences (a reward model) instead of giving log-probs.
        made_up: the statistics of a made-up batch (see :meth:`made_up_stats`).
        split_from: a kind whose items become items of this one by splitting (a preference pair into a
            desirable and an undesirable example), or None.
        labelled: items carry a desirable / undesirable label (a run reports their counts).
        sft_first: an SFT stage may run before training on this kind (its data are preference pairs).
    """

    name: str
    items: str
    description: str
    reward_model: bool
    made_up: MadeUpStats = field(repr=False)
    split_from: BatchKind | None = None
    labelled: bool = False
    sft_first: bool = True
    _collate: Callable[..., dict[str, Any]] | None = field(default=None, repr=False)
    _stats: Callable[..., PreferenceStats] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"BatchKind({self.name!r})"

    def fed_by(self, feeds: Collection[BatchKind]) -> bool:
        """Whether a source whose items feed ``feeds`` can feed this kind (directly, or split)."""
        return self in feeds or (self.split_from is not None and self.split_from in feeds)

    def collates(self, fn: F) -> F:
        """Decorator: ``fn(items, pad_token_id, pad_to_multiple_of=8) -> batch`` collates this kind."""
        self._collate = _attach(self, self._collate, fn, "a collate function")
        return fn

    def computes_stats(self, fn: F) -> F:
        """Decorator: ``fn(model, batch, objective, reference, logps, pool) -> PreferenceStats`` is how the
        trainer turns a collated batch of this kind into what the loss reads."""
        self._stats = _attach(self, self._stats, fn, "a statistics function")
        return fn

    def collate(self, items: Any, pad_token_id: int, **kwargs: Any) -> dict[str, Any]:
        """Batch tensors of ``items`` (the function registered with :meth:`collates`)."""
        if self._collate is None:
            raise RegistryError(f"batch kind {self.name!r} has no collate function (import alignkit.data)")
        return self._collate(items, pad_token_id, **kwargs)

    def stats(self, model: Any, batch: dict[str, Any], objective: Any, reference: Any, *, logps: Any,
              pool: Any) -> PreferenceStats:
        """The statistics of one collated batch (the function registered with :meth:`computes_stats`)."""
        if self._stats is None:
            raise RegistryError(f"batch kind {self.name!r} has no statistics function (import alignkit.train)")
        return self._stats(model, batch, objective, reference, logps, pool)

    def made_up_stats(self, *, needs_reference: bool, needs_mismatched: bool, paired: bool = True) -> PreferenceStats:
        """Statistics of a tiny batch (B=2) with the fields a real batch of this kind has, for an objective
        with these needs; ``paired`` False is an SFT batch (chosen responses only)."""
        return self.made_up(needs_reference, needs_mismatched, paired)


def _attach(kind: BatchKind, current: F | None, fn: F, what: str) -> F:
    # Re-running a module (a reload) attaches the same function again; anything else would silently replace it.
    if current is not None and (current.__module__, current.__qualname__) != (fn.__module__, fn.__qualname__):
        raise RegistryError(f"batch kind {kind.name!r} already has {what} ({current.__qualname__})")
    return fn


BATCH_KINDS: Registry[BatchKind] = Registry("batch kind")


def batch_kind(kind: BatchKind | str) -> BatchKind:
    """The registered kind itself, or the one of that name (``RegistryError`` naming the known kinds)."""
    return kind if isinstance(kind, BatchKind) else BATCH_KINDS.get(kind)


def _register(kind: BatchKind) -> BatchKind:
    return BATCH_KINDS.add(kind.name, kind)


def _logps_stats(needs_reference: bool, needs_mismatched: bool, paired: bool) -> PreferenceStats:
    logps, lengths = torch.tensor([-5.0, -7.0]), torch.full((2,), 3.0)
    if not paired:
        return PreferenceStats(policy_chosen_logps=logps, chosen_lengths=lengths)
    stats = PreferenceStats(policy_chosen_logps=logps, policy_rejected_logps=logps - 1.0,
                            chosen_lengths=lengths, rejected_lengths=lengths + 1.0)
    if needs_reference:
        stats.reference_chosen_logps, stats.reference_rejected_logps = logps - 0.5, logps - 0.75
    return stats


def _scores_stats(needs_reference: bool, needs_mismatched: bool, paired: bool) -> PreferenceStats:
    return PreferenceStats(chosen_scores=torch.tensor([0.5, -1.5]), rejected_scores=torch.tensor([1.0, -1.0]))


def _kway_stats(needs_reference: bool, needs_mismatched: bool, paired: bool) -> PreferenceStats:
    scores = torch.tensor([[0.5, -0.5, 0.1], [0.2, 0.3, -1.0]])  # (B, K)
    return PreferenceStats(scores=scores, best_index=torch.tensor([0, 1]))


def _unpaired_stats(needs_reference: bool, needs_mismatched: bool, paired: bool) -> PreferenceStats:
    logps = torch.tensor([-5.0, -7.0])
    stats = PreferenceStats(policy_logps=logps, lengths=torch.full((2,), 3.0), labels=torch.tensor([True, False]))
    if needs_mismatched:
        stats.policy_mismatched_logps = logps - 2.0
    if needs_reference:
        stats.reference_logps = logps - 0.5
        stats.reference_mismatched_logps = logps - 2.5 if needs_mismatched else None
    return stats


LOGPS = _register(BatchKind(
    "logps", "pairs", "a prompt with a chosen and a rejected response; the loss reads the policy's summed "
    "log-probs of both (a causal LM)", reward_model=False, made_up=_logps_stats))
SCORES = _register(BatchKind(
    "scores", "pairs", "a prompt with a chosen and a rejected response; the loss reads one scalar score of "
    "each (a reward model)", reward_model=True, made_up=_scores_stats))
KWAY = _register(BatchKind(
    "kway", "K-way comparisons", "a prompt with K candidate responses and the index of the best; the loss "
    "reads K scores (a K-way reward model)", reward_model=True, made_up=_kway_stats))
UNPAIRED = _register(BatchKind(
    "unpaired", "unpaired examples (one labelled response each)", "a prompt with one response labelled "
    "desirable or not; the loss reads the policy's summed log-prob of it (KTO, BCO)", reward_model=False,
    made_up=_unpaired_stats, split_from=LOGPS, labelled=True, sft_first=False))

PAIR_KINDS: tuple[BatchKind, ...] = (LOGPS, SCORES)
"""What a source of preference pairs feeds: a policy's log-probs or a reward model's scores of both responses
(and, split, :data:`UNPAIRED`)."""
