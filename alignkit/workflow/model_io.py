"""The trained model of a run: its ``model/`` folder, saved and loaded back, with a manifest of what it holds.

``alignkit_model.json`` says what the folder contains, because a folder of a quantized run is not what
``from_pretrained`` alone would make of it:

- ``full_model``: a transformers folder (full fine-tuning).
- ``base_and_adapter``: the base model as a transformers folder plus the alignkit adapter files.
- ``adapter_only``: the adapter files and the tokenizer; the base is the quantized model named in the
  manifest (``base_model.name_or_path``, quantized as ``quantization`` says), which is not copied: it is
  what a QLoRA user already has, and a copy would be the full-precision size.
- ``dequantized_base_and_adapter``: a quantized base built from ``model.from_config`` has no name to reload it
  by, so its dequantized weights (exactly the values the adapter was trained on) are saved as a transformers
  folder, plus the adapter files; it reloads in full precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from torch import nn
from transformers import AutoTokenizer

from alignkit.cache import atomic_folder
from alignkit.jsonio import RunFileError, read_json, to_json
from alignkit.models.config import ModelConfig, QuantizationConfig
from alignkit.models.load import load_causal_lm, resolve_model_path, unreadable_weight_files
from alignkit.models.quantization import dequantized, quantization_of
from alignkit.peft import adapter_config_of, export_with_adapters, has_adapters, load_adapter, load_exported
from alignkit.peft.api import write_adapter_files

if TYPE_CHECKING:  # importing transformers' modeling code is slow; only the annotations need it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["MANIFEST_FILE", "Contents", "load_run_model", "read_manifest", "refuse_pickled_weights", "save_model"]

MANIFEST_FILE = "alignkit_model.json"
MANIFEST_FORMAT = "alignkit-model"
Contents = Literal["full_model", "base_and_adapter", "adapter_only", "dequantized_base_and_adapter"]

_HOW_TO_LOAD: dict[str, str] = {
    "full_model": "AutoModelForCausalLM.from_pretrained(folder), or `alignkit eval`/`serve` on it.",
    "base_and_adapter": "alignkit.peft.load_exported(folder); plain from_pretrained(folder) gives the base alone.",
    "adapter_only": "alignkit.workflow.model_io.load_run_model(folder): loads base_model.name_or_path, quantizes "
    "it as `quantization` says, then applies the adapter. No base weights are in this folder.",
    "dequantized_base_and_adapter": "alignkit.peft.load_exported(folder): the dequantized base (full precision, "
    "the values the quantized layers multiplied by) with the adapter; quantize again to save memory.",
}


def _contents(policy: nn.Module) -> Contents:
    if not has_adapters(policy):
        return "full_model"
    if quantization_of(policy) is None:
        return "base_and_adapter"
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
        },
        "quantization": None if quant is None else {**quant.model_dump(mode="json"), "label": quant.describe()},
        "how_to_load": _HOW_TO_LOAD[contents],
    }


def save_model(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> Contents:
    """Write the trained model into ``folder`` (atomically) with its manifest; return what it holds.

    Raises:
        DiskFullError: the device ran out of space (a previous ``folder`` is kept as it was).
    """
    contents = _contents(policy)
    params = policy.parameters() if contents != "adapter_only" else (p for p in policy.parameters() if p.requires_grad)
    needed = sum(p.numel() * p.element_size() for p in params)
    with atomic_folder(folder, needed_bytes=needed) as tmp:
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
        (tmp / MANIFEST_FILE).write_text(to_json(_manifest(policy, contents)) + "\n")
    return contents


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The parsed manifest of a model folder; None for a folder without one (saved before manifests)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = read_json(path, what="a model folder's manifest")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise RunFileError(f"{path}: format {str(manifest.get('format'))[:100]!r}, expected {MANIFEST_FORMAT!r}")
    contents, base, quant = manifest.get("contents"), manifest.get("base_model"), manifest.get("quantization")
    if not isinstance(contents, str):
        raise RunFileError(f"{path}: 'contents' must be a string")
    if contents == "adapter_only" and not (
            isinstance(base, dict) and isinstance(base.get("name_or_path"), str)
            and isinstance(base.get("dtype"), (str, type(None))) and isinstance(quant, dict)):
        raise RunFileError(f"{path}: an adapter_only manifest needs base_model {{name_or_path, dtype}} and "
                           "quantization objects")
    return cast(dict[str, Any], manifest)


def refuse_pickled_weights(folder: Path) -> None:
    """A folder whose weights are pickles only (``pytorch_model.bin``, ``*.pt``) is refused: unpickling can run
    code, so alignkit loads safetensors only (``use_safetensors=True``)."""
    if (folder / "config.json").is_file() and not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in (*folder.glob("*.bin"), *folder.glob("*.pt"), *folder.glob("*.pth")))
        if pickles:
            raise RunFileError(f"{folder}: its weights are pickle files ({', '.join(pickles[:3])}), which alignkit "
                               "never loads because unpickling can run code; save the model as safetensors "
                               "(save_pretrained(folder, safe_serialization=True))")


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / MANIFEST_FILE).is_file()


def _load_adapter_only(folder: Path, manifest: dict[str, Any], device: str) -> PreTrainedModel:
    base = manifest["base_model"]
    cfg = ModelConfig(name_or_path=base["name_or_path"], dtype=base.get("dtype") or "float32",
                      quantization=QuantizationConfig.model_validate(
                          {k: v for k, v in manifest["quantization"].items() if k != "label"}))
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
    refuse_pickled_weights(folder)
    try:
        if manifest is not None and manifest["contents"] == "adapter_only":
            model = _load_adapter_only(folder, manifest, device)
        else:
            model = load_exported(folder)
    except Exception:
        # A truncated or crafted weight file surfaces as the reader's own error, which names no file.
        if bad := unreadable_weight_files(folder):
            raise RunFileError(bad[0]) from None
        raise
    # PreTrainedModel.to is decorated with functools.wraps, which typeshed types as a `_Wrapped` object that
    # mypy does not bind as a method; it moves the model in place, so call it through nn.Module's signature.
    cast(nn.Module, model).to(device)
    model.requires_grad_(False).eval()
    tok = AutoTokenizer.from_pretrained(tokenizer or folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
