"""Export an adapted model: merged into a plain transformers folder, with its adapters, or as PEFT LoRA.

Which one to use:

- LoRA, to share or serve: :func:`export_merged` folds ``B A`` into the weights and writes a normal
  transformers folder; ``AutoModelForCausalLM.from_pretrained(folder)`` loads it, no alignkit needed.
- LoRA, for the PEFT ecosystem: :func:`export_peft_lora` writes PEFT's ``adapter_config.json`` and
  ``adapter_model.safetensors``; ``peft.PeftModel.from_pretrained(base, folder)`` loads it.
- Bottleneck adapters add nonlinear modules that no weight of the original architecture can express, so
  they cannot be merged. :func:`export_with_adapters` writes the base model as a transformers folder plus
  the alignkit adapter files beside it; :func:`load_exported` reloads the adapted model. Loading that
  folder with plain transformers gives the *base* model, without the adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import nn

from alignkit.jsonio import to_json
from alignkit.peft.api import adapter_config_of, has_adapters, load_adapter, write_adapter_files
from alignkit.peft.config import LoRAConfig
from alignkit.peft.files import ADAPTER_CONFIG_FILE, atomic_folder
from alignkit.peft.lora import LoRALayer
from alignkit.peft.modules import AdapterWrapper, adapter_wrappers, set_module

if TYPE_CHECKING:  # importing transformers' modeling code is slow; only the annotations need it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["export_merged", "export_peft_lora", "export_with_adapters", "load_exported", "merged_state_dict"]


@contextmanager
def _base_modules(model: nn.Module, merge_lora: bool) -> Iterator[nn.Module]:
    """Temporarily put each original module back in place of its wrapper.

    With ``merge_lora`` a LoRA layer's base module holds a new weight ``W + scaling * B A`` meanwhile;
    when that weight was tied to another module (GPT-2's ``lm_head`` and input embedding), the merged
    model has the two untied and ``config.tie_word_embeddings`` is off while it is saved, so the input
    embedding keeps its values and a reload does not tie them again. On exit the original weight
    parameters themselves are put back (not a subtraction), so the model is restored bit for bit.
    """
    swapped: list[tuple[str, AdapterWrapper, torch.Tensor | None]] = []
    config = getattr(model, "config", None)
    tied_before = getattr(config, "tie_word_embeddings", None)
    try:
        with torch.no_grad():
            for path, wrapper in list(adapter_wrappers(model)):
                original = None
                if isinstance(wrapper, LoRALayer):
                    if merge_lora and not wrapper.merged:
                        original = wrapper.base_layer.weight
                        if _is_tied(model, original) and config is not None:
                            config.tie_word_embeddings = False
                        wrapper.base_layer.weight = wrapper.merged_weight()
                    elif not merge_lora and wrapper.merged:
                        raise RuntimeError(
                            "LoRA is merged into the base weights; call unmerge_adapter(model) first"
                        )
                set_module(model, path, wrapper.base_layer)
                swapped.append((path, wrapper, original))
        yield model
    finally:
        for path, wrapper, original in reversed(swapped):
            if original is not None:
                wrapper.base_layer.weight = original
            set_module(model, path, wrapper)
        if config is not None and tied_before is not None:
            config.tie_word_embeddings = tied_before


def _is_tied(model: nn.Module, weight: torch.Tensor) -> bool:
    """Whether another module of ``model`` holds the same weight tensor (a tied embedding)."""
    holders = {id(m) for m in model.modules() for p in m.parameters(recurse=False) if p is weight}
    return len(holders) > 1


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``module`` (a model, or a part of one such as its decoder body) under the plain
    architecture's names, LoRA folded into the weights (copies; ``module`` is left as it was).

    Raises:
        ValueError: ``module`` holds bottleneck adapters, which no weight of the architecture can hold.
    """
    if any(not isinstance(w, LoRALayer) for _, w in adapter_wrappers(module)):
        raise ValueError("bottleneck adapters cannot be merged into the weights")
    with _base_modules(module, merge_lora=True):
        return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _save_transformers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, folder: Path) -> None:
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def export_merged(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, folder: str | Path) -> Path:
    """Write a normal transformers folder with LoRA merged into the weights (atomically).

    The model itself is left as it was (adapters in place, unmerged). A model without adapters is
    simply saved.

    Args:
        model: a transformers ``PreTrainedModel``, with LoRA adapters or none.
        tokenizer: saved beside the model when not None.
        folder: destination; replaced if it exists.

    Raises:
        ValueError: the model has bottleneck adapters (use :func:`export_with_adapters`).
    """
    if any(not isinstance(w, LoRALayer) for _, w in adapter_wrappers(model)):
        raise ValueError(
            "bottleneck adapters cannot be merged into the weights; use export_with_adapters(model, "
            "tokenizer, folder) and reload with load_exported(folder)"
        )
    with atomic_folder(folder) as tmp, _base_modules(model, merge_lora=True):
        _save_transformers(model, tokenizer, tmp)
    return Path(folder)


def export_with_adapters(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, folder: str | Path
) -> Path:
    """Write the base model as a transformers folder plus the alignkit adapter files (atomically).

    Works for every adapter kind; reload the adapted model with :func:`load_exported`.

    Raises:
        ValueError: the model has no adapters (use :func:`export_merged` or ``save_pretrained``).
        RuntimeError: LoRA is merged; unmerge first so that the base weights are the originals.
    """
    if not has_adapters(model):
        raise ValueError("the model has no adapters; save it with export_merged() or save_pretrained()")
    with atomic_folder(folder) as tmp:
        with _base_modules(model, merge_lora=False):
            _save_transformers(model, tokenizer, tmp)
        write_adapter_files(model, tmp)
    return Path(folder)


def load_exported(folder: str | Path, **from_pretrained_kwargs: Any) -> PreTrainedModel:
    """Load a folder written by :func:`export_with_adapters` (or :func:`export_merged`) as a causal LM.

    Args:
        folder: the exported folder.
        **from_pretrained_kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``dtype``).
    """
    from transformers import AutoModelForCausalLM

    # safetensors only: a pickled pytorch_model.bin is never unpickled (it can run code).
    model = AutoModelForCausalLM.from_pretrained(folder, **{"use_safetensors": True, **from_pretrained_kwargs})
    if (Path(folder) / ADAPTER_CONFIG_FILE).exists():
        load_adapter(model, folder)
    return model


def export_peft_lora(model: nn.Module, folder: str | Path, base_model_name: str) -> Path:
    """Write the LoRA adapter in the PEFT library's format (atomically).

    Files: ``adapter_config.json`` (``peft_type: LORA``) and ``adapter_model.safetensors`` with keys
    ``base_model.model.<module path>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r). GPT-2
    Conv1D targets set ``fan_in_fan_out: true``, PEFT's flag for weights stored (in, out).

    Args:
        model: a model with alignkit LoRA adapters.
        folder: destination; replaced if it exists.
        base_model_name: recorded as ``base_model_name_or_path`` (a Hub id or a local path).

    Raises:
        ValueError: the model has no LoRA adapters, or other adapters too.
    """
    wrappers = list(adapter_wrappers(model))
    cfg = adapter_config_of(model)
    if not wrappers or not isinstance(cfg, LoRAConfig) or not all(isinstance(w, LoRALayer) for _, w in wrappers):
        raise ValueError("export_peft_lora needs a model with LoRA adapters (adapter kind 'lora')")
    tensors: dict[str, torch.Tensor] = {}
    for path, layer in wrappers:
        assert isinstance(layer, LoRALayer)
        tensors[f"base_model.model.{path}.lora_A.weight"] = layer.lora_A.weight.detach().contiguous().cpu()
        tensors[f"base_model.model.{path}.lora_B.weight"] = layer.lora_B.weight.detach().contiguous().cpu()
    # PEFT keeps one fan_in_fan_out flag per adapter; it corrects it per layer type when loading.
    fan_in_fan_out = all(layer.fan_in_fan_out for _, layer in wrappers)
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": [path for path, _ in wrappers],
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    with atomic_folder(folder) as tmp:
        (tmp / "adapter_config.json").write_text(to_json(peft_config) + "\n")
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    return Path(folder)
