"""`alignkit export RUN --format peft|merged|hf`: a run's trained model as a folder other tools load.

- ``peft``: the LoRA adapter in the PEFT library's format (``peft.PeftModel.from_pretrained(base, folder)``),
  with the tokenizer; the base is the model the run started from, named in the adapter's config.
- ``merged``: a plain transformers folder (safetensors) with LoRA folded into the weights; a full
  fine-tune (or a reward model) is its weights. ``from_pretrained(folder)`` loads it, no alignkit needed.
  Bottleneck adapters add modules no weight of the architecture can hold: use ``hf``.
- ``hf``: the transformers folder of the base with the alignkit adapter files beside it (what the run's
  ``model/`` holds); ``alignkit.peft.load_exported(folder)`` loads the adapted model, plain
  ``from_pretrained`` the base. Without an adapter it is the same as ``merged``.

``--model value`` exports a PPO run's value model instead (``merged`` only: a one-label token classifier, see
:mod:`alignkit.commands.export_value`).

Every export holds ``alignkit_export.json``: its format, what it holds, the run it came from and how to
load it. An existing destination is replaced only with ``overwrite``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from alignkit.cache import atomic_folder
from alignkit.jsonio import read_json, to_json
from alignkit.peft import (
    adapter_config_of,
    export_merged,
    export_peft_lora,
    export_with_adapters,
    load_adapter,
)
from alignkit.peft.files import ADAPTER_CONFIG_FILE
from alignkit.workflow.model_io import load_run_model, read_manifest

if TYPE_CHECKING:  # importing transformers' modeling code is slow; only the annotations need it
    from transformers import PreTrainedModel

__all__ = ["EXPORT_FORMATS", "EXPORT_MANIFEST", "ExportFormat", "ExportedModel", "export_run"]

ExportFormat = Literal["peft", "merged", "hf"]
ExportedModel = Literal["policy", "value"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("peft", "merged", "hf")
EXPORT_MANIFEST = "alignkit_export.json"

_HOW_TO_LOAD = {
    "peft": "peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), folder)",
    "merged": "AutoModelForCausalLM.from_pretrained(folder) (AutoModelForSequenceClassification for a reward model)",
    "hf": "alignkit.peft.load_exported(folder) for the adapted model; from_pretrained(folder) gives the base alone",
}


def _model_folder(run: Path) -> Path:
    """The model folder of a run folder (its ``model/``) or ``run`` itself when it is one."""
    for folder in (run / "model", run):
        if (folder / "config.json").is_file() or (folder / "alignkit_model.json").is_file():
            return folder
    raise FileNotFoundError(f"{run}: not a run folder with model/ nor a model folder")


def _is_reward_model(folder: Path) -> bool:
    config = folder / "config.json"
    architectures = read_json(config, what="a model config").get("architectures") or [] if config.is_file() else []
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def _load(folder: Path) -> tuple[PreTrainedModel, Any]:
    """The trained model (adapters applied) and its tokenizer, on the CPU."""
    if not _is_reward_model(folder):
        return load_run_model(folder)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    if (folder / ADAPTER_CONFIG_FILE).is_file():
        load_adapter(model, folder)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def _base_name(folder: Path, model: PreTrainedModel) -> str | None:
    manifest = read_manifest(folder) or {}
    name = (manifest.get("base_model") or {}).get("name_or_path") or getattr(model.config, "_name_or_path", "")
    return name or None


def _export_value(run: Path, fmt: ExportFormat, dest: Path) -> Path:
    """The value model of the PPO run ``run`` into ``dest`` (see :mod:`alignkit.commands.export_value`)."""
    from alignkit.commands.export_value import VALUE_HOW_TO_LOAD, trained_value_model, write_value_model

    if fmt != "merged":
        raise ValueError(f"--model value: only --format merged (a transformers token classifier), not {fmt}")
    value, tokenizer = trained_value_model(run)
    with atomic_folder(dest) as tmp:
        write_value_model(value, tokenizer, tmp)
        manifest = {"format": fmt, "format_version": 1, "source": str(run.resolve()), "model": "value_model",
                    "how_to_load": VALUE_HOW_TO_LOAD, "files": sorted(p.name for p in tmp.iterdir())}
        (tmp / EXPORT_MANIFEST).write_text(to_json(manifest) + "\n")
    return dest


def export_run(run: str | Path, fmt: ExportFormat, out: str | Path | None = None, *,
               overwrite: bool = False, model: ExportedModel = "policy") -> Path:
    """Export the trained model of ``run`` (a run folder or a model folder) as ``fmt`` into ``out``.

    Args:
        run: a folder written by ``alignkit run`` / ``online`` (its ``model/`` is exported), or a model folder.
        fmt: ``peft``, ``merged`` or ``hf`` (see the module docstring).
        out: the destination; default ``<run>/export-<fmt>`` (``<run>/export-value`` for the value model).
        overwrite: replace ``out`` if it exists.
        model: ``policy`` (the trained model) or ``value`` (a PPO run's value model; ``merged`` only).

    Returns:
        The folder written.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is false (nothing is changed).
        ValueError: the format cannot hold this model (PEFT without LoRA, merged bottleneck adapters, PEFT
            for a base with no name to reload it by).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    run = Path(run)
    folder = _model_folder(run)
    dest = Path(out) if out is not None else run / f"export-{fmt if model == 'policy' else 'value'}"
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists; pass --overwrite to replace it (or --out another folder)")
    if dest.resolve() == folder.resolve() or folder.resolve() in dest.resolve().parents:
        raise ValueError(f"--out {dest}: inside the model folder {folder} it exports")
    if model == "value":
        return _export_value(run, fmt, dest)
    policy, tokenizer = _load(folder)
    adapter = adapter_config_of(policy).kind
    base = _base_name(folder, policy)
    if fmt == "peft" and adapter != "lora":
        what, use = ("no adapter (full fine-tuning)", "merged or hf") if adapter == "none" else (f"a {adapter} adapter", "hf")
        raise ValueError(f"--format peft needs a LoRA run; {folder} holds {what}: use --format {use}")
    if fmt == "peft" and base is None:
        raise ValueError(f"--format peft: {folder}'s base model has no name or path to reload it by "
                         "(model.from_config); use --format merged or hf")
    if fmt == "merged" and adapter == "bottleneck":
        raise ValueError("--format merged: bottleneck adapters cannot be folded into the weights; use --format hf")
    with atomic_folder(dest) as tmp:
        if fmt == "peft":
            assert base is not None
            export_peft_lora(policy, tmp, base)
            tokenizer.save_pretrained(str(tmp))
        elif fmt == "merged" or adapter == "none":
            export_merged(policy, tokenizer, tmp)
        else:
            export_with_adapters(policy, tokenizer, tmp)
        manifest = {
            "format": fmt,
            "format_version": 1,
            "source": str(folder.resolve()),
            "model": "reward_model" if _is_reward_model(folder) else "policy",
            "adapter": adapter,
            "base_model": base,
            "how_to_load": _HOW_TO_LOAD["merged" if fmt == "hf" and adapter == "none" else fmt],
            "files": sorted(p.name for p in tmp.iterdir()),
        }
        (tmp / EXPORT_MANIFEST).write_text(to_json(manifest) + "\n")
    return dest
