"""alignkit: align language models from preference data.

The extension points a user's code needs are importable from here (docs/extending.md shows each one):
``register_loss`` (objectives), ``register_source`` and ``register_prepared_source`` (data sources),
``register_prompt_source`` (prompts of online recipes), ``register_reward`` (reward functions, with
``RewardExample`` for rewards that read each prompt's reference answer) and ``register_judge`` (pairwise judges), with the types they
receive and return, and ``StrictConfig``, the base of a plugin source's config (``register_source(kind,
config=...)``) that a recipe then names. The names are loaded on first use, so ``import alignkit`` stays light (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.lazy import lazy_exports

if TYPE_CHECKING:
    from alignkit.config_base import StrictConfig
    from alignkit.data import (
        DropReport,
        PreferenceExample,
        PrepareContext,
        PreparedData,
        load_examples,
        register_prepared_source,
        register_source,
    )
    from alignkit.data.prompt_sources import list_prompt_sources, load_prompt_split, register_prompt_source
    from alignkit.data.prompts import PromptSplit
    from alignkit.eval.judges import Judge, Verdict, build_judge, register_judge
    from alignkit.losses import LossConfig, LossOutput, PreferenceStats, get_loss, list_losses, register_loss
    from alignkit.models.rewards import RewardExample, get_reward, list_rewards, register_reward

__all__ = [
    "DropReport",
    "Judge",
    "LossConfig",
    "LossOutput",
    "PreferenceExample",
    "PreferenceStats",
    "PrepareContext",
    "PreparedData",
    "PromptSplit",
    "RewardExample",
    "StrictConfig",
    "Verdict",
    "build_judge",
    "get_loss",
    "get_reward",
    "list_losses",
    "list_prompt_sources",
    "list_rewards",
    "load_examples",
    "load_prompt_split",
    "register_judge",
    "register_loss",
    "register_prepared_source",
    "register_prompt_source",
    "register_reward",
    "register_source",
]
__version__ = "0.1.0"

# Each name is read from its package, whose import registers the built-ins (losses, sources, judges).
__getattr__ = lazy_exports(__name__, {
    "config_base": ("StrictConfig",),
    "data": ("DropReport", "PrepareContext", "PreferenceExample", "PreparedData", "load_examples",
             "register_prepared_source", "register_source"),
    "data.prompt_sources": ("list_prompt_sources", "load_prompt_split", "register_prompt_source"),
    "data.prompts": ("PromptSplit",),
    "eval.judges": ("Judge", "Verdict", "build_judge", "register_judge"),
    "losses": ("LossConfig", "LossOutput", "PreferenceStats", "get_loss", "list_losses", "register_loss"),
    "models.rewards": ("RewardExample", "get_reward", "list_rewards", "register_reward"),
})
