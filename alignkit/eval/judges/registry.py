"""The judge registry: ``eval.judge.kind`` -> a function that builds the judge from its config section.

A judge module registers its builder with ``@register_judge("kind")``; :func:`build_judge` looks the kind
up. A new judge needs its module (a :class:`~alignkit.eval.judges.base.Judge` and a builder), its import in
``alignkit/eval/judges/__init__.py``, and its config class in :mod:`alignkit.eval.config` added to the
``JudgeConfig`` union (a test checks the registry and the union name the same kinds).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignkit.eval.judges.base import Judge
from alignkit.registry import Registry

__all__ = ["JUDGES", "JudgeBuilder", "build_judge", "register_judge"]

# builder(section, cache_dir=..., device=...) -> the judge, or None for a section that asks for none.
JudgeBuilder = Callable[..., Judge | None]
JUDGES: Registry[JudgeBuilder] = Registry("judge")


def register_judge(kind: str) -> Callable[[JudgeBuilder], JudgeBuilder]:
    """Decorator: register ``fn(cfg, *, cache_dir, device)`` as the builder of ``eval.judge.kind == kind``."""

    def wrap(fn: JudgeBuilder) -> JudgeBuilder:
        return JUDGES.add(kind, fn)

    return wrap


def build_judge(cfg: Any, *, cache_dir: str | Path | None = None, device: str = "cpu") -> Judge | None:
    """The judge an ``eval.judge`` section describes (None for ``kind: none``).

    Args:
        cfg: the section (its ``kind`` picks the builder).
        cache_dir: where a judge that caches verdicts keeps them; default ``<alignkit cache>/judge_verdicts``.
        device: where a local judge or reward model runs.
    """
    return JUDGES.get(cfg.kind)(cfg, cache_dir=cache_dir, device=device)


@register_judge("none")
def _no_judge(cfg: Any, **_: Any) -> None:
    return None
