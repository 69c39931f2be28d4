"""The trained model of a run: saved as a transformers folder (plus adapter files), loaded back the same way."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from torch import nn
from transformers import AutoTokenizer

from alignkit.cache import atomic_folder
from alignkit.models.load import resolve_model_path
from alignkit.peft import export_with_adapters, has_adapters, load_exported

if TYPE_CHECKING:  # importing transformers' modeling code is slow; only the annotations need it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["load_run_model", "save_model"]


def save_model(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """The trained model: a transformers folder (plus the adapter files when there are adapters)."""
    if has_adapters(policy):
        export_with_adapters(policy, tokenizer, folder)
        return
    with atomic_folder(folder) as tmp:
        policy.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))


def load_run_model(
    path: str | Path, *, tokenizer: str | None = None, device: str = "cpu"
) -> tuple[PreTrainedModel, Any]:
    """The model and tokenizer of a model folder, a run folder (its ``model/``) or a built-in alias.

    A folder with alignkit adapter files is loaded with its adapters (:func:`alignkit.peft.export.load_exported`).
    """
    folder = Path(path)
    if (folder / "model" / "config.json").is_file():
        folder = folder / "model"  # a run folder
    elif not folder.is_dir():
        folder = Path(resolve_model_path(str(path)))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model folder, a run folder with model/, or a built-in alias")
    model = load_exported(folder)
    # PreTrainedModel.to is decorated with functools.wraps, which typeshed types as a `_Wrapped` object that
    # mypy does not bind as a method; it moves the model in place, so call it through nn.Module's signature.
    cast(nn.Module, model).to(device)
    model.requires_grad_(False).eval()
    tok = AutoTokenizer.from_pretrained(tokenizer or folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
