"""What every adapter shares: a wrapper around the original module, module paths, name patterns.

An adapter never edits the module it adapts. It wraps it: the original sits, untouched, at
``<path>.base_layer`` and the wrapper decides per call whether the adapter takes part. Switching the
adapter off therefore runs exactly the original module, so the reference model is the base model bit
for bit.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = [
    "AdapterWrapper",
    "adapter_wrappers",
    "dense_weight",
    "linear_shape",
    "linear_weight_out_in",
    "matches_any",
    "set_module",
]


class AdapterWrapper(nn.Module):
    """Base of the adapter modules: holds the original module as ``base_layer`` and an on/off switch.

    Subclasses implement :meth:`adapter_forward`; while ``adapter_enabled`` is False (or the adapter is
    merged into the base weights) the wrapper returns ``base_layer(x)`` unchanged.
    """

    kind: str = "adapter"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter_enabled = True
        self.merged = False

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if not self.adapter_enabled or self.merged:
            return self.base_layer(x, *args, **kwargs)
        return self.adapter_forward(x, *args, **kwargs)

    def adapter_forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        raise NotImplementedError

    def adapter_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The adapter's own parameters (everything except ``base_layer``), names relative to the wrapper."""
        for name, param in self.named_parameters():
            if not name.startswith("base_layer."):
                yield name, param


def adapter_wrappers(model: nn.Module) -> Iterator[tuple[str, AdapterWrapper]]:
    """Every adapter wrapper in ``model`` with its module path."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterWrapper):
            yield name, module


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the sub-module at dotted ``path`` (``transformer.h.0.mlp``) with ``module``."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def linear_shape(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (weight stored (in, out))."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):
        n_in, n_out = layer.weight.shape
        return n_in, n_out
    raise TypeError(f"expected nn.Linear or Conv1D, got {type(layer).__name__}")


def linear_weight_out_in(layer: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features), the ``nn.Linear`` convention (a view, no copy)."""
    if isinstance(layer, nn.Linear):
        return layer.weight
    if isinstance(layer, Conv1D):
        return layer.weight.T
    raise TypeError(f"expected nn.Linear or Conv1D, got {type(layer).__name__}")


def dense_weight(weight: torch.Tensor) -> torch.Tensor:
    """The values of a layer's weight as a plain floating tensor (the weight itself unless it is quantized).

    A quantized frozen base (``model.quantization``) holds tensor subclasses whose ``dequantize()`` gives the
    values the layer multiplies by; integer storage without it (bitsandbytes) cannot be read back here.

    Raises:
        TypeError: a quantized weight that cannot be dequantized.
    """
    if type(weight) in (torch.Tensor, nn.Parameter) and weight.is_floating_point():
        return weight
    dequantize = getattr(weight, "dequantize", None)
    if type(weight) not in (torch.Tensor, nn.Parameter) and callable(dequantize):
        return dequantize()
    raise TypeError(f"cannot read the values of a {type(weight).__name__} weight ({weight.dtype}): bottleneck "
                    "adapters and LoRA merging need a full-precision or torchao-quantized base (on a bitsandbytes "
                    "base, train LoRA and export the adapter alone)")


def _pattern_matches(pattern: str, path: str) -> bool:
    if path == pattern or path.endswith("." + pattern):
        return True
    if fnmatch.fnmatchcase(path, pattern):
        return True
    try:
        return re.fullmatch(pattern, path) is not None
    except re.error:  # a glob such as "h.[0-1" need not be a valid regex
        return False


def matches_any(patterns: list[str], path: str) -> bool:
    """Whether a module path matches one of the patterns.

    A plain name matches a path that ends with it (``c_attn`` ~ ``transformer.h.0.attn.c_attn``); any
    pattern also matches when it matches the whole path as a glob or as a regular expression.
    """
    return any(_pattern_matches(p, path) for p in patterns)
