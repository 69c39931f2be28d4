"""The trained model of a run: its ``model/`` folder, saved and loaded back, with a manifest of what it holds.

``alignkit_model.json`` says what the folder contains, because a folder of a quantized run is not what
``from_pretrained`` alone would make of it:

- ``full_model``: a transformers folder (full fine-tuning).
- ``base_and_adapter``: the base model as a transformers folder plus the alignkit adapter files (a base with
  no local folder to refer to, or ``adapter.save_base: true``).
- ``adapter_only``: the adapter files and the tokenizer; the base is the model named in the manifest
  (``base_model.name_or_path``, a local folder whose weight files hash to ``base_model.weights_sha256``, and
  quantized as ``quantization`` says, if it does), which is not copied: the user already has it, and a copy
  would be the full base again in every run (514 MB next to a 19 MB adapter for the demo). Loading checks
  that the folder is there and its hash unchanged. ``adapter.save_base: true`` copies the base instead.
- ``dequantized_base_and_adapter``: a quantized base built from ``model.from_config`` has no name to reload it
  by, so its dequantized weights (exactly the values the adapter was trained on) are saved as a transformers
  folder, plus the adapter files; it reloads in full precision.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from torch import nn
from transformers import AutoTokenizer

from alignkit.cache import atomic_folder
from alignkit.models.config import ModelConfig, QuantizationConfig
from alignkit.models.load import ModelLoadError, load_causal_lm, resolve_model_path
from alignkit.models.quantization import dequantized, quantization_of
from alignkit.peft import adapter_config_of, export_with_adapters, has_adapters, load_adapter, load_exported
from alignkit.peft.api import write_adapter_files

if TYPE_CHECKING:  # importing transformers' modeling code is slow; only the annotations need it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["MANIFEST_FILE", "Contents", "base_weight_files", "load_run_model", "read_manifest", "save_model",
           "weights_sha256"]

MANIFEST_FILE = "alignkit_model.json"
MANIFEST_FORMAT = "alignkit-model"
Contents = Literal["full_model", "base_and_adapter", "adapter_only", "dequantized_base_and_adapter"]

_HOW_TO_LOAD: dict[str, str] = {
    "full_model": "AutoModelForCausalLM.from_pretrained(folder), or `alignkit eval`/`serve` on it.",
    "base_and_adapter": "alignkit.peft.load_exported(folder); plain from_pretrained(folder) gives the base alone.",
    "adapter_only": "alignkit.workflow.model_io.load_run_model(folder): loads base_model.name_or_path (after "
    "checking its weight files against base_model.weights_sha256), quantizes it as `quantization` says (if "
    "set), then applies the adapter. No base weights are in this folder.",
    "dequantized_base_and_adapter": "alignkit.peft.load_exported(folder): the dequantized base (full precision, "
    "the values the quantized layers multiplied by) with the adapter; quantize again to save memory.",
}


# The files from_pretrained reads weights from; their bytes are what a referenced base is checked against.
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")


def base_weight_files(folder: Path) -> list[Path]:
    """The weight files of a transformers model folder (sorted; [] for anything else)."""
    if not folder.is_dir():
        return []
    return sorted({f for pattern in _WEIGHT_PATTERNS for f in folder.glob(pattern) if f.is_file()})


def weights_sha256(folder: Path) -> str:
    """SHA-256 over the names and bytes of ``folder``'s weight files, in name order."""
    digest = hashlib.sha256()
    for file in base_weight_files(folder):
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _base_folder(policy: nn.Module) -> Path | None:
    """The local folder the policy's base weights were loaded from, or None (a Hub id, a built model)."""
    name = getattr(getattr(policy, "config", None), "_name_or_path", "") or ""
    folder = Path(name) if name else None
    return folder.resolve() if folder is not None and base_weight_files(folder) else None


def _contents(policy: nn.Module, copy_base: bool) -> Contents:
    if not has_adapters(policy):
        return "full_model"
    if quantization_of(policy) is None:
        return "adapter_only" if not copy_base and _base_folder(policy) is not None else "base_and_adapter"
    name = getattr(getattr(policy, "config", None), "_name_or_path", "")
    return "adapter_only" if name else "dequantized_base_and_adapter"


def _dtype_name(dtype: object) -> str | None:
    name = str(dtype).removeprefix("torch.")
    return name if name in ("float32", "bfloat16", "float16") else None


def _manifest(policy: nn.Module, contents: Contents) -> dict[str, Any]:
    config = getattr(policy, "config", None)
    quant = quantization_of(policy)
    name = getattr(config, "_name_or_path", "") or None
    if name is not None and Path(name).is_dir():
        name = str(Path(name).resolve())
    folder = _base_folder(policy) if contents == "adapter_only" else None
    return {
        "format": MANIFEST_FORMAT,
        "format_version": 1,
        "contents": contents,
        "adapter": None if contents == "full_model" else adapter_config_of(policy).kind,
        "base_model": {
            "name_or_path": name,
            "model_type": getattr(config, "model_type", None),
            "dtype": _dtype_name(getattr(config, "dtype", None)),
            "weights_in_folder": contents != "adapter_only",
            "weights_sha256": weights_sha256(folder) if folder is not None else None,
        },
        "quantization": None if quant is None else {**quant.model_dump(mode="json"), "label": quant.describe()},
        "how_to_load": _HOW_TO_LOAD[contents],
    }


def save_model(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path, *,
               copy_base: bool = False) -> Contents:
    """Write the trained model into ``folder`` (atomically) with its manifest; return what it holds.

    An adapter on a base loaded from a local folder is saved alone, with a reference to the base (its path
    and hash), unless ``copy_base`` (``adapter.save_base``).
    """
    contents = _contents(policy, copy_base)
    with atomic_folder(folder) as tmp:
        if contents == "full_model":
            policy.save_pretrained(str(tmp))
        elif contents == "base_and_adapter":
            export_with_adapters(policy, None, tmp)
        elif contents == "adapter_only":
            write_adapter_files(policy, tmp)
        else:
            with dequantized(policy):
                export_with_adapters(policy, None, tmp)
        tokenizer.save_pretrained(str(tmp))
        (tmp / MANIFEST_FILE).write_text(json.dumps(_manifest(policy, contents), indent=2) + "\n")
    return contents


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The parsed manifest of a model folder; None for a folder without one (saved before manifests)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return cast(dict[str, Any], manifest)


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / MANIFEST_FILE).is_file()


def _check_base(folder: Path, base: dict[str, Any]) -> None:
    """The base an adapter-only folder refers to is there, with the weights it was trained on."""
    name, expected = str(base.get("name_or_path")), base.get("weights_sha256")
    if expected is None:  # a quantized base named by a Hub id: nothing to check here
        return
    hint = (f"put the base model back at {name}, or edit base_model.name_or_path in {folder / MANIFEST_FILE} "
            "to a copy of it (runs keep the base itself with adapter.save_base: true)")
    if not base_weight_files(Path(name)):
        raise ModelLoadError(f"{folder} holds an adapter of the base model at {name}, which holds no model "
                             f"weights now: {hint}")
    if weights_sha256(Path(name)) != expected:
        raise ModelLoadError(f"{folder} holds an adapter of the base model at {name}, whose weight files have "
                             f"changed since (SHA-256 {expected[:12]}... expected): {hint}")


def _load_adapter_only(folder: Path, manifest: dict[str, Any], device: str) -> PreTrainedModel:
    base = manifest["base_model"]
    _check_base(folder, base)
    quant = manifest.get("quantization")
    cfg = ModelConfig(name_or_path=base["name_or_path"], dtype=base.get("dtype") or "float32",
                      quantization=None if quant is None else QuantizationConfig.model_validate(
                          {k: v for k, v in quant.items() if k != "label"}))
    model = load_causal_lm(cfg, device)
    load_adapter(model, folder)
    return model


def load_run_model(
    path: str | Path, *, tokenizer: str | None = None, device: str = "cpu"
) -> tuple[PreTrainedModel, Any]:
    """The model and tokenizer of a model folder, a run folder (its ``model/``) or a built-in alias.

    A folder with alignkit adapter files is loaded with its adapters (:func:`alignkit.peft.export.load_exported`);
    an ``adapter_only`` folder loads and quantizes the base its manifest names first.
    """
    folder = Path(path)
    if _is_model_folder(folder / "model"):
        folder = folder / "model"  # a run folder
    elif not folder.is_dir():
        folder = Path(resolve_model_path(str(path)))
    if not _is_model_folder(folder):
        raise FileNotFoundError(f"{path}: not a model folder, a run folder with model/, or a built-in alias")
    manifest = read_manifest(folder)
    if manifest is not None and manifest["contents"] == "adapter_only":
        model = _load_adapter_only(folder, manifest, device)
    else:
        model = load_exported(folder)
    # PreTrainedModel.to is decorated with functools.wraps, which typeshed types as a `_Wrapped` object that
    # mypy does not bind as a method; it moves the model in place, so call it through nn.Module's signature.
    cast(nn.Module, model).to(device)
    model.requires_grad_(False).eval()
    tok = AutoTokenizer.from_pretrained(tokenizer or folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
