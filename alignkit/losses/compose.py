"""Objectives: one loss, or a weighted sum of several, parsed from a recipe's ``loss`` section.

A recipe writes either one term or a list of them::

    loss: {name: dpo, beta: 0.1}
    loss: [{name: dpo, weight: 1.0, beta: 0.1}, {name: sft, weight: 0.1}]

Each term's parameters are validated by its loss's config class; an :class:`ObjectiveError` carries every
problem with its location in the recipe (``("loss", 1, "beta")``), and its message lists them as
``loss[1].beta: Input should be greater than 0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from alignkit.lazy import lazy_module
from alignkit.losses.base import (
    LOSSES,
    LossConfig,
    LossOutput,
    LossSpec,
    LossState,
    PreferenceStats,
    get_loss,
)
from alignkit.losses.batch_kinds import BatchKind

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = ["Location", "LossTerm", "Objective", "ObjectiveError", "ObjectiveState", "build_objective"]

# Where a value sits in a recipe: keys and list indices from the top, e.g. ("loss", 1, "beta").
Location = tuple[str | int, ...]


def _format_loc(loc: Location) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _parse_loc(path: str) -> Location:
    """``"stage2.loss[1]"`` -> ``("stage2", "loss", 1)``."""
    parts: list[str | int] = []
    for raw in path.replace("]", "").replace("[", ".").split("."):
        if raw:
            parts.append(int(raw) if raw.isdigit() else raw)
    return tuple(parts)


class ObjectiveError(ValueError):
    """A ``loss`` section that does not describe a valid objective.

    Args:
        message: a single problem without a location (programmatic use, e.g. :class:`LossTerm`).
        problems: every problem as ``(location, message)``; used instead of ``message`` when given.

    Attributes:
        problems: every problem as ``(location, message)``, the location a :data:`Location` in the recipe
            (empty when unknown). ``str(err)`` has one ``loss[1].beta: message`` line per problem.
    """

    def __init__(self, message: str = "", *, problems: Sequence[tuple[Location, str]] = ()) -> None:
        self.problems: list[tuple[Location, str]] = list(problems) or [((), message)]
        super().__init__("\n".join(f"{_format_loc(loc)}: {msg}" if loc else msg for loc, msg in self.problems))


@dataclass(frozen=True)
class LossTerm:
    """One weighted loss of an objective.

    Attributes:
        name: the registered loss name.
        weight: its factor in the weighted sum (> 0).
        config: an instance of the loss's config class (``get_loss(name).config``).
    """

    name: str
    weight: float = 1.0
    config: LossConfig | None = None

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            known = ", ".join(LOSSES.names()) or "(none)"
            raise ObjectiveError(f"unknown loss {self.name!r}; registered: {known}")
        spec = get_loss(self.name)
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ObjectiveError(f"weight of loss {self.name!r} must be a finite number > 0, got {self.weight}")
        if self.config is None:
            object.__setattr__(self, "config", spec.config())
        elif not isinstance(self.config, spec.config):
            raise ObjectiveError(
                f"loss {self.name!r} takes a {spec.config.__name__}, got {type(self.config).__name__}"
            )

    @property
    def spec(self) -> LossSpec:
        """The registry entry of this term's loss."""
        return get_loss(self.name)

    @property
    def needs_reference(self) -> bool:
        """Whether this term, with its config, reads reference log-probs."""
        return self.spec.reads_reference(self.config)

    def to_dict(self) -> dict[str, Any]:
        """The term as a recipe entry, with every parameter spelled out (defaults included)."""
        assert self.config is not None
        return {"name": self.name, "weight": self.weight, **self.config.model_dump()}


class Objective:
    """A weighted sum of loss terms, called like a single loss.

    Args:
        terms: one or more :class:`LossTerm`; they must all read the same model ``inputs``.

    Raises:
        ObjectiveError: when there are no terms or their inputs disagree.
    """

    def __init__(self, terms: Sequence[LossTerm]) -> None:
        self.terms = list(terms)
        if not self.terms:
            raise ObjectiveError("an objective needs at least one term")
        kinds = {t.spec.inputs for t in self.terms}
        if len(kinds) > 1:
            detail = ", ".join(f"{t.name} reads {t.spec.inputs.name!r}" for t in self.terms)
            raise ObjectiveError(f"terms read different model outputs ({detail}); they cannot be summed")
        # Metric prefixes: the loss name, made unique by position when a name repeats.
        names = [t.name for t in self.terms]
        self.prefixes = [n if names.count(n) == 1 else f"{n}{i}" for i, n in enumerate(names)]

    @property
    def needs_reference(self) -> bool:
        """Whether any term reads reference log-probs (the trainer then runs the reference model)."""
        return any(t.needs_reference for t in self.terms)

    @property
    def inputs(self) -> BatchKind:
        """The batch kind every term reads (what the model must produce)."""
        return self.terms[0].spec.inputs

    @property
    def needs_mismatched(self) -> bool:
        """Whether any term reads the log-probs of mismatched prompt–completion pairs (unpaired data)."""
        return any(t.spec.needs_mismatched for t in self.terms)

    def new_state(self) -> ObjectiveState | None:
        """Fresh running values of the terms that keep some (see :class:`LossState`); None when none does."""
        state = ObjectiveState(self)
        return state if state.terms else None

    def label_balance_warnings(self, n_desirable: int, n_undesirable: int) -> list[str]:
        """Every term's warnings about its settings for unpaired data with these label counts."""
        return [w for t in self.terms if t.config is not None
                for w in t.config.label_balance_warnings(n_desirable, n_undesirable)]

    @property
    def name(self) -> str:
        """A short label such as ``dpo`` or ``dpo+0.1*sft``."""
        parts = [t.name if t.weight == 1 else f"{t.weight:g}*{t.name}" for t in self.terms]
        return "+".join(parts)

    def describe(self) -> str:
        """A one-line summary naming parameters that differ from their defaults, e.g.
        ``dpo(beta=0.2) + 0.1*sft`` (for logs and reports; :meth:`to_section` has everything)."""
        parts = []
        for t in self.terms:
            assert t.config is not None
            changed = t.config.model_dump(exclude_defaults=True)
            text = t.name + (f"({', '.join(f'{k}={v!r}' for k, v in changed.items())})" if changed else "")
            parts.append(text if t.weight == 1 else f"{t.weight:g}*{text}")
        return " + ".join(parts)

    def to_section(self) -> dict[str, Any] | list[dict[str, Any]]:
        """The objective as a recipe ``loss`` section, defaults spelled out (for run metadata)."""
        entries = [t.to_dict() for t in self.terms]
        return entries[0] if len(entries) == 1 else entries

    def __call__(self, stats: PreferenceStats, state: ObjectiveState | None = None) -> LossOutput:
        """Per-example weighted sum of the terms' losses.

        Args:
            stats: the batch statistics (any dtype; each loss computes in fp32).
            state: the running values of stateful terms (:meth:`new_state`); fresh ones when None.

        Returns:
            (B,) weighted losses; rewards of the first term; metrics of a single term as they are,
            of several terms prefixed ``<name>/`` and joined by each term's (B,) ``<name>/loss``.
        """
        outputs = [t.spec(stats, t.config, state.of(i) if state is not None else None)
                   for i, t in enumerate(self.terms)]
        losses = sum(t.weight * o.losses for t, o in zip(self.terms, outputs, strict=True))
        assert isinstance(losses, torch.Tensor)
        first = outputs[0]
        if len(outputs) == 1:
            return LossOutput(losses, first.chosen_rewards, first.rejected_rewards, dict(first.metrics))
        metrics: dict[str, torch.Tensor] = {}
        for prefix, out in zip(self.prefixes, outputs, strict=True):
            metrics[f"{prefix}/loss"] = out.losses.detach()
            metrics.update({f"{prefix}/{k}": v for k, v in out.metrics.items()})
        return LossOutput(losses, first.chosen_rewards, first.rejected_rewards, metrics)

    def __repr__(self) -> str:
        return f"Objective({self.name})"


class ObjectiveState:
    """The running values of an objective's stateful terms (:class:`LossState`), one per such term.

    The trainer holds one for a run: it passes it with every batch, sums :meth:`totals` over a step's
    training micro-batches (and processes), then calls :meth:`update`; a checkpoint keeps :meth:`to_json`.
    """

    def __init__(self, objective: Objective) -> None:
        self._objective = objective
        self.terms: dict[int, LossState] = {
            i: t.spec.state() for i, t in enumerate(objective.terms) if t.spec.state is not None
        }
        self._sizes: list[int] = []

    def of(self, index: int) -> LossState | None:
        """The state of term ``index`` (None for a term without one)."""
        return self.terms.get(index)

    def totals(self, stats: PreferenceStats) -> torch.Tensor:
        """(n,) detached sums of one training batch for every stateful term, concatenated."""
        stats = stats.to_fp32()
        parts = [state.totals(stats, self._objective.terms[i].config).detach().reshape(-1)
                 for i, state in self.terms.items()]
        self._sizes = [p.numel() for p in parts]
        return torch.cat(parts)

    def update(self, totals: torch.Tensor) -> None:
        """Give each term its part of one optimizer step's summed :meth:`totals`."""
        for state, part in zip(self.terms.values(), totals.detach().cpu().split(self._sizes), strict=True):
            state.update(part)

    def to_json(self) -> dict[str, dict[str, float]]:
        """Every term's state by its metric prefix (the loss name, or name + position when repeated)."""
        return {self._objective.prefixes[i]: state.to_json() for i, state in self.terms.items()}

    def load_json(self, data: dict[str, dict[str, float]]) -> None:
        """Restore :meth:`to_json`; a term missing from ``data`` keeps its fresh state."""
        for i, state in self.terms.items():
            saved = data.get(self._objective.prefixes[i])
            if saved is not None:
                state.load_json(saved)


def _build_term(entry: Any, loc: Location) -> tuple[LossTerm | None, list[tuple[Location, str]]]:
    """One term of the section at ``loc``, or None and every problem found in it."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping):
        return None, [(loc, f"expected a mapping such as {{name: dpo, beta: 0.1}}, got {type(entry).__name__}")]
    bad_keys = [k for k in entry if not isinstance(k, str)]
    if bad_keys:
        return None, [(loc, f"parameter names must be text, got {', '.join(map(repr, bad_keys))} (a list index "
                       "on a single loss? a list of losses is written loss: [{name: ...}, ...])")]
    params = dict(entry)
    name = params.pop("name", None)
    known = ", ".join(LOSSES.names()) or "(none)"
    if not isinstance(name, str) or not name:
        return None, [((*loc, "name"), f"required, one of: {known}")]
    if name not in LOSSES:
        return None, [((*loc, "name"), f"unknown loss {name!r}; registered: {known}")]
    spec = get_loss(name)
    problems: list[tuple[Location, str]] = []
    weight = params.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
        math.isfinite(weight) and weight > 0
    ):
        problems.append(((*loc, "weight"), f"must be a finite number > 0, got {weight!r}"))
    try:
        config = spec.config(**params)
    except ValidationError as err:
        fields = ", ".join(spec.config.model_fields) or "(none)"
        for e in err.errors():
            where = (*loc, *e["loc"])
            if e["type"] == "extra_forbidden":
                problems.append((where, f"unknown parameter of loss {name!r}; its parameters: {fields}"))
            else:
                problems.append((where, e["msg"].removeprefix("Value error, ")))
        return None, problems
    if problems:
        return None, problems
    return LossTerm(name, float(weight), config), []


def build_objective(section: Any, path: str = "loss") -> Objective:
    """Parse a recipe's ``loss`` section into an :class:`Objective`.

    Args:
        section: a loss name (``"dpo"``), a mapping ``{name, weight?, **params}``, or a list of them.
        path: where the section sits in the recipe (``"loss"``, ``"stage2.loss"``): the start of every
            problem's location.

    Returns:
        The validated objective.

    Raises:
        ObjectiveError: with every problem of every term and its location, e.g.
            ``(("loss", 1, "beta"), "Input should be greater than 0")`` or
            ``(("loss", "name"), "unknown loss 'dpoo'; registered: ...")``.
    """
    if isinstance(section, Objective):
        return section
    base = _parse_loc(path)
    if isinstance(section, (str, Mapping)):
        entries = [(section, base)]
    elif isinstance(section, Sequence) and not isinstance(section, (bytes, bytearray)):
        if not section:
            raise ObjectiveError(problems=[(base, "an empty list; give at least one loss")])
        entries = [(entry, (*base, i)) for i, entry in enumerate(section)]
    else:
        raise ObjectiveError(problems=[(base, "expected a loss name, a mapping {name: ..., ...} or a list of them, "
                                              f"got {type(section).__name__}")])
    terms: list[LossTerm] = []
    problems: list[tuple[Location, str]] = []
    for entry, loc in entries:
        term, found = _build_term(entry, loc)
        problems += found
        if term is not None:
            terms.append(term)
    if problems:
        raise ObjectiveError(problems=problems)
    try:
        return Objective(terms)
    except ObjectiveError as err:  # the terms together: locate at the section
        raise ObjectiveError(problems=[(loc or base, msg) for loc, msg in err.problems]) from None
