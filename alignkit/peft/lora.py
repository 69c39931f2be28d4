"""LoRA on ``nn.Linear`` and GPT-2 ``Conv1D`` layers: ``W x + (alpha / r) * B A dropout(x)``.

``lora_A`` (in -> r) and ``lora_B`` (r -> out) are ``nn.Linear`` modules, so their weights are
``(r, in)`` and ``(out, r)`` whatever the base layer is: the layout the PEFT library saves. Only merging
needs to know that ``Conv1D`` stores its weight transposed, ``(in, out)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from alignkit.peft.config import LoRAConfig
from alignkit.peft.modules import AdapterWrapper, dense_weight, linear_shape, matches_any, set_module

__all__ = ["LoRALayer", "default_lora_targets", "inject_lora"]

# Default target layers by `config.model_type`: the attention input projections, as in the LoRA paper.
_DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
}


class LoRALayer(AdapterWrapper):
    """A linear layer plus a trainable low-rank update.

    Args:
        base_layer: the ``nn.Linear`` or ``Conv1D`` to adapt (kept as ``base_layer``; its weight changes
            only between :meth:`merge` and :meth:`unmerge`).
        r: rank.
        alpha: the update is scaled by ``alpha / r``.
        dropout: dropout on the input of the low-rank path.

    Raises:
        TypeError: ``base_layer`` is neither an ``nn.Linear`` nor a ``Conv1D``.
    """

    kind = "lora"
    base_layer: nn.Linear | Conv1D  # checked by linear_shape() in __init__

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__(base_layer)
        n_in, n_out = linear_shape(base_layer)
        weight = self.base_layer.weight
        # A quantized base stores integers (bitsandbytes) or reports its original dtype (torchao); LoRA
        # trains in that dtype, or in the layer's compute dtype, never in an integer one.
        dtype = weight.dtype if weight.is_floating_point() else getattr(base_layer, "compute_dtype", None)
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        self.lora_dropout = nn.Dropout(dropout)
        self.lora_A = nn.Linear(n_in, r, bias=False, device=weight.device, dtype=dtype)
        self.lora_B = nn.Linear(r, n_out, bias=False, device=weight.device, dtype=dtype)
        # A as nn.Linear's default init, B zero: the update B A is exactly 0 at step 0.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def fan_in_fan_out(self) -> bool:
        """True when the base weight is stored (in, out), as in GPT-2's Conv1D."""
        return isinstance(self.base_layer, Conv1D)

    def adapter_forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        """(..., in) -> (..., out). Extra arguments go to the base layer, as when the adapter is off."""
        out = self.base_layer(x, *args, **kwargs)
        # The adapter's own dtype: on a quantized base it may differ from the activations' (a no-op otherwise).
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))) * self.scaling
        return out + update.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B @ A`` in the base weight's own layout ((in, out) for Conv1D).

        Computed in float32 and cast to the adapter's dtype (the base dtype, unless the base is quantized).
        """
        delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling  # (out, in)
        if self.fan_in_fan_out:
            delta = delta.T
        return delta.to(self.lora_A.weight.dtype)

    def merged_weight(self) -> nn.Parameter:
        """A new parameter holding ``W + scaling * B A`` (the base weight itself is not touched).

        A new tensor, not an in-place update: the base weight may be tied to another module (GPT-2's
        ``lm_head`` shares the input embedding), which must keep its own values. A quantized base weight is
        dequantized first: the merged weight is full precision.
        """
        weight = self.base_layer.weight
        return nn.Parameter(dense_weight(weight.detach()) + self.delta_weight(), requires_grad=weight.requires_grad)

    @torch.no_grad()
    def merge(self) -> None:
        """Put the merged weight in place; the forward then runs the base layer alone.

        The original weight is kept (not recomputed by subtraction), so :meth:`unmerge` restores it bit for
        bit and re-ties it where it was tied.
        """
        if self.merged:
            raise RuntimeError("LoRA layer is already merged")
        self._original_weight = self.base_layer.weight
        self.base_layer.weight = self.merged_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the original weight back (exactly, tied where it was tied)."""
        if not self.merged:
            raise RuntimeError("LoRA layer is not merged")
        self.base_layer.weight = self._original_weight
        del self._original_weight
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}"


def default_lora_targets(model: nn.Module) -> list[str]:
    """The default target patterns for ``model``'s architecture.

    Known ``config.model_type`` values first; otherwise guessed from the layer names present.

    Raises:
        ValueError: no default is known; set ``adapter.target_modules``.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in _DEFAULT_TARGETS:
        return list(_DEFAULT_TARGETS[model_type])
    leaf_names = {name.rpartition(".")[2] for name, _ in model.named_modules()}
    if {"q_proj", "v_proj"} <= leaf_names:
        return ["q_proj", "v_proj"]
    if "c_attn" in leaf_names:
        return ["c_attn"]
    raise ValueError(
        f"no default LoRA targets for model_type={model_type!r}; set adapter.target_modules "
        "(e.g. ['q_proj', 'v_proj'])"
    )


def inject_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap every ``nn.Linear``/``Conv1D`` whose path matches the target patterns in a :class:`LoRALayer`.

    Returns:
        The module paths that were adapted.

    Raises:
        ValueError: no linear layer matched; the message names the patterns and some layer names.
    """
    patterns = cfg.target_modules if cfg.target_modules is not None else default_lora_targets(model)
    linear = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D) and name
    ]
    chosen = [(name, module) for name, module in linear if matches_any(patterns, name)]
    if not chosen:
        sample = [name for name, _ in linear[:8]]
        raise ValueError(
            f"adapter.target_modules={patterns} matched no nn.Linear or Conv1D layer; "
            f"linear layers are named like: {sample}"
        )
    for name, module in chosen:
        set_module(model, name, LoRALayer(module, cfg.r, cfg.alpha, cfg.dropout))
    return [name for name, _ in chosen]
