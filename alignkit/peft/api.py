"""Put an adapter on a model, switch it off for the reference, count, save and load it.

Typical use in a trainer::

    apply_adapter(policy, recipe.adapter)          # freezes the base, adds trainable adapters
    print(format_parameter_table(parameter_table(policy)))
    ...
    with adapters_disabled(policy), torch.no_grad():
        reference_logps = sequence_logps(policy, batch)   # exactly the base model
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignkit.jsonio import read_json, to_json
from alignkit.peft.bottleneck import inject_bottleneck
from alignkit.peft.config import BottleneckConfig, LoRAConfig, NoAdapter, parse_adapter_config
from alignkit.peft.files import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    atomic_folder,
)
from alignkit.peft.lora import LoRALayer, default_lora_targets, inject_lora
from alignkit.peft.modules import adapter_wrappers

__all__ = [
    "ParameterRow",
    "adapter_config_of",
    "adapter_state_dict",
    "adapter_targets",
    "adapters_disabled",
    "apply_adapter",
    "count_parameters",
    "format_parameter_table",
    "has_adapters",
    "load_adapter",
    "merge_adapter",
    "parameter_table",
    "read_adapter_meta",
    "save_adapter",
    "unmerge_adapter",
    "write_adapter_files",
]

_CONFIG_ATTR = "_alignkit_adapter_config"


def apply_adapter(model: nn.Module, cfg: NoAdapter | BottleneckConfig | LoRAConfig | dict[str, Any]) -> nn.Module:
    """Add the adapter described by ``cfg`` to ``model``, in place, and return the model.

    With an adapter, every base parameter is frozen (``requires_grad=False``) and only the adapter's
    parameters are trainable. With ``kind: none`` the model is returned untouched (full fine-tuning).

    Args:
        model: a transformers causal LM (GPT-2, Llama-style) or any module with matching layers.
        cfg: an adapter config, or the mapping of a recipe's ``adapter:`` section.

    Raises:
        ValueError: the model already has adapters, or no layer matched the targets (the message names
            the patterns and a few module names).
    """
    cfg = parse_adapter_config(cfg)
    if isinstance(cfg, NoAdapter):
        return model
    if has_adapters(model):
        raise ValueError("model already has adapters; apply_adapter works on a base model only")
    for param in model.parameters():
        param.requires_grad_(False)
    if isinstance(cfg, BottleneckConfig):
        inject_bottleneck(model, cfg)
    else:
        if cfg.target_modules is None:  # record the architecture's defaults: a checkpoint names its targets
            cfg = cfg.model_copy(update={"target_modules": default_lora_targets(model)})
        inject_lora(model, cfg)
    for _, wrapper in adapter_wrappers(model):
        for _, param in wrapper.adapter_named_parameters():
            param.requires_grad_(True)
        # New modules start in train mode; follow the adapted layer (an eval model stays deterministic).
        for name, module in wrapper.named_modules():
            if name != "base_layer" and not name.startswith("base_layer."):
                module.training = wrapper.base_layer.training
    setattr(model, _CONFIG_ATTR, cfg)
    return model


def has_adapters(model: nn.Module) -> bool:
    """Whether ``model`` carries alignkit adapter modules."""
    return next(adapter_wrappers(model), None) is not None


def adapter_config_of(model: nn.Module) -> NoAdapter | BottleneckConfig | LoRAConfig:
    """The config the model's adapters were built from (``NoAdapter`` for a plain model)."""
    return getattr(model, _CONFIG_ATTR, None) or NoAdapter()


def adapter_targets(model: nn.Module) -> list[str]:
    """Module paths of the adapted layers, in model order."""
    return [path for path, _ in adapter_wrappers(model)]


def _require_adapters(model: nn.Module, action: str) -> None:
    if not has_adapters(model):
        raise ValueError(f"cannot {action}: the model has no adapters (apply_adapter first)")


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base model: every adapter is bypassed inside the ``with`` block.

    Each wrapper then calls its original module directly, so outputs equal the base model's bit for bit
    (no zero scaling that could leave dropout or rounding in). Train/eval mode is not changed: compute
    reference log-probs in eval mode if the base model has dropout.

    Raises:
        ValueError: the model has no adapters (the reference would silently be the policy itself).
        RuntimeError: LoRA weights are merged into the base; call :func:`unmerge_adapter` first.
    """
    _require_adapters(model, "disable adapters")
    wrappers = [w for _, w in adapter_wrappers(model)]
    if any(w.merged for w in wrappers):
        raise RuntimeError("adapters are merged into the base weights; call unmerge_adapter(model) first")
    previous = [w.adapter_enabled for w in wrappers]
    for wrapper in wrappers:
        wrapper.adapter_enabled = False
    try:
        yield model
    finally:
        for wrapper, enabled in zip(wrappers, previous, strict=True):
            wrapper.adapter_enabled = enabled


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold LoRA updates into the base weights (faster inference; the forward no longer runs A and B).

    Bottleneck adapters are nonlinear modules of their own and cannot be folded into any weight: for them
    this raises; export them with :func:`alignkit.peft.export.export_with_adapters` instead.
    """
    _require_adapters(model, "merge")
    wrappers = [w for _, w in adapter_wrappers(model)]
    lora = [w for w in wrappers if isinstance(w, LoRALayer)]
    if len(lora) != len(wrappers):
        raise ValueError(
            "only LoRA adapters can be merged into the weights; a bottleneck adapter adds a nonlinear "
            "module, so export it with export_with_adapters() and reload with load_exported()"
        )
    for wrapper in lora:
        wrapper.merge()
    return model


def unmerge_adapter(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_adapter`: the original base weights are put back exactly (tied where they were)."""
    _require_adapters(model, "unmerge")
    for _, wrapper in adapter_wrappers(model):
        if isinstance(wrapper, LoRALayer):
            wrapper.unmerge()
    return model


@dataclass(frozen=True)
class ParameterRow:
    """One line of the parameter table: a group of parameters and how many of them train."""

    name: str
    trainable: int
    total: int


def _unique_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    # named_parameters already yields a tied weight (GPT-2 wte / lm_head) once.
    return list(model.named_parameters())


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    params = _unique_parameters(model)
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    return trainable, sum(p.numel() for _, p in params)


def parameter_table(model: nn.Module) -> list[ParameterRow]:
    """Rows ``base model``, one per adapter kind (if any), and ``total``.

    Example (GPT-2 small, LoRA r=8 on c_attn)::

        ParameterRow("base model", 0, 124439808)
        ParameterRow("lora adapter (12 layers)", 294912, 294912)
        ParameterRow("total", 294912, 124734720)
    """
    adapter_ids: dict[int, str] = {}
    layers: dict[str, int] = {}
    for _, wrapper in adapter_wrappers(model):
        layers[wrapper.kind] = layers.get(wrapper.kind, 0) + 1
        for _, param in wrapper.adapter_named_parameters():
            adapter_ids[id(param)] = wrapper.kind
    groups: dict[str, list[int]] = {"base model": [0, 0]}
    for kind, n in layers.items():
        groups[f"{kind} adapter ({n} layers)"] = [0, 0]
    labels = {kind: f"{kind} adapter ({n} layers)" for kind, n in layers.items()}
    for _, param in _unique_parameters(model):
        label = labels[adapter_ids[id(param)]] if id(param) in adapter_ids else "base model"
        groups[label][0] += param.numel() if param.requires_grad else 0
        groups[label][1] += param.numel()
    rows = [ParameterRow(name, t, n) for name, (t, n) in groups.items()]
    trainable, total = count_parameters(model)
    return [*rows, ParameterRow("total", trainable, total)]


def format_parameter_table(rows: list[ParameterRow]) -> str:
    """A markdown table of :func:`parameter_table` rows, with the trainable share in percent."""
    lines = ["| parameters | trainable | total | trainable % |", "|---|---:|---:|---:|"]
    for row in rows:
        share = 100.0 * row.trainable / row.total if row.total else 0.0
        lines.append(f"| {row.name} | {row.trainable:,} | {row.total:,} | {share:.3f} |")
    return "\n".join(lines)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's parameters only, keyed by their full names in ``model`` (detached, not copied)."""
    out: dict[str, torch.Tensor] = {}
    for path, wrapper in adapter_wrappers(model):
        for name, param in wrapper.adapter_named_parameters():
            out[f"{path}.{name}"] = param.detach()
    return out


def _describe_base(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "model_type": getattr(config, "model_type", None),
        "name_or_path": getattr(config, "_name_or_path", None) or None,
    }


def write_adapter_files(model: nn.Module, folder: Path) -> None:
    """Write the adapter config JSON and weights into an existing ``folder`` (not atomic by itself)."""
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "adapter": adapter_config_of(model).model_dump(mode="json"),
        "targets": adapter_targets(model),
        "base_model": _describe_base(model),
    }
    (folder / ADAPTER_CONFIG_FILE).write_text(to_json(meta) + "\n")
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    save_file(tensors, str(folder / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})


def save_adapter(model: nn.Module, folder: str | Path) -> Path:
    """Save only the adapter (weights as safetensors, config as JSON) into ``folder``, atomically.

    The folder holds ``alignkit_adapter.json`` and ``alignkit_adapter.safetensors``; base weights are
    not saved (a few MB instead of the whole model). Load with :func:`load_adapter` onto a fresh base.

    Returns:
        The folder.
    """
    _require_adapters(model, "save an adapter")
    with atomic_folder(folder) as tmp:
        write_adapter_files(model, tmp)
    return Path(folder)


def read_adapter_meta(folder: str | Path) -> dict[str, Any]:
    """The parsed ``alignkit_adapter.json`` of a folder, checked for format."""
    path = Path(folder) / ADAPTER_CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no alignkit adapter here (expected {ADAPTER_CONFIG_FILE})")
    meta = read_json(path, what="an adapter's settings")
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {meta.get('format')!r} v{meta.get('format_version')!r}, "
            f"expected {FORMAT_NAME!r} v{FORMAT_VERSION}"
        )
    return meta


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Apply the saved adapter to a fresh base ``model`` and load its weights, in place.

    Raises:
        FileNotFoundError / ValueError: missing or foreign files, adapted layers that differ from the
            saved ones, or weights with missing, extra or differently shaped tensors (all named). The
            model may then already carry the (unloaded) adapter: start again from a fresh base.
    """
    folder = Path(folder)
    meta = read_adapter_meta(folder)
    cfg = parse_adapter_config(meta["adapter"])
    apply_adapter(model, cfg)
    if adapter_targets(model) != meta["targets"]:
        raise ValueError(
            f"{folder / ADAPTER_CONFIG_FILE}: saved for layers {meta['targets'][:4]}..., but this model's "
            f"matching layers are {adapter_targets(model)[:4]}... (a different base architecture?)"
        )
    saved = load_file(str(folder / ADAPTER_WEIGHTS_FILE))
    own = adapter_state_dict(model)
    missing, extra = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    if missing or extra:
        raise ValueError(f"{folder / ADAPTER_WEIGHTS_FILE}: missing tensors {missing[:4]}, unexpected {extra[:4]}")
    with torch.no_grad():
        for name, tensor in own.items():
            if tensor.shape != saved[name].shape:
                raise ValueError(
                    f"{folder / ADAPTER_WEIGHTS_FILE}: {name} has shape {tuple(saved[name].shape)}, "
                    f"the model expects {tuple(tensor.shape)}"
                )
            tensor.copy_(saved[name])
    return model
