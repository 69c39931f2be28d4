"""The recipe's ``logging:`` section: which experiment trackers mirror ``metrics.jsonl``.

TensorBoard is on by default (``tensorboard`` is a dependency); Weights & Biases and trackio are optional
extras (``pip install 'alignkit[wandb]'``, ``'alignkit[trackio]'``) and log offline / locally unless told
otherwise, so a run never needs an account or a network to be tracked.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field, field_validator

from alignkit.config_base import StrictConfig

__all__ = ["LoggingConfig", "TrackioConfig", "WandbConfig", "missing_tracker_packages"]


class WandbConfig(StrictConfig):
    """A Weights & Biases run per alignkit run (offline by default: ``wandb sync`` uploads it later)."""

    project: str = Field("alignkit", min_length=1, description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (user or team); None: the account's default.")
    name: str | None = Field(None, description="Run name; None: the recipe's name.")
    mode: Literal["offline", "online"] = Field(
        "offline", description="offline writes <run>/wandb/ only (upload later with `wandb sync`); online "
        "streams to the W&B server (needs an account and the network).")
    tags: list[str] = Field(default_factory=list, description="Tags of the W&B run.")


class TrackioConfig(StrictConfig):
    """A trackio run per alignkit run, in trackio's local database unless ``space_id`` names a Space."""

    project: str = Field("alignkit", min_length=1, description="trackio project.")
    name: str | None = Field(None, description="Run name; None: the recipe's name.")
    space_id: str | None = Field(
        None, description="Hugging Face Space to sync to; None: local only (trackio's folder, $TRACKIO_DIR or "
        "~/.cache/huggingface/trackio; view with `trackio show`).")


def _section(value: Any) -> Any:
    """``true`` turns a tracker on with its defaults, ``false`` off (None)."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


class LoggingConfig(StrictConfig):
    """Experiment trackers fed the same scalars as ``metrics.jsonl`` (as ``<stage>/<name>``), with the
    recipe logged once as the run's hyperparameters; only the main process logs."""

    tensorboard: bool = Field(True, description="TensorBoard events in <run>/tensorboard/.")
    wandb: WandbConfig | None = Field(
        None, description="Weights & Biases (pip install 'alignkit[wandb]'); true for the defaults.")
    trackio: TrackioConfig | None = Field(
        None, description="trackio (pip install 'alignkit[trackio]'); true for the defaults.")

    _sections = field_validator("wandb", "trackio", mode="before")(_section)


# The package each tracker imports and the extra that installs it.
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "alignkit[wandb]"),
             "trackio": ("trackio", "alignkit[trackio]")}


def missing_tracker_packages(cfg: LoggingConfig) -> list[tuple[str, str]]:
    """``(field, message)`` for each tracker turned on whose package is not installed."""
    wanted = {"tensorboard": cfg.tensorboard, "wandb": cfg.wandb is not None, "trackio": cfg.trackio is not None}
    out = []
    for field, on in wanted.items():
        module, extra = _PACKAGES[field]
        if on and importlib.util.find_spec(module) is None:
            off = "false" if field == "tensorboard" else "null"
            out.append((field, f"needs the {module} package, which is not installed: pip install '{extra}' "
                               f"(or set logging.{field}: {off})"))
    return out
