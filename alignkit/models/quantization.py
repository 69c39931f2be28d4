"""A weight-only quantized frozen base (``model.quantization``), for adapters trained on top of it.

Two maintained libraries do the quantizing; alignkit only chooses the layers and checks the settings:

- torchao (CPU and GPU): ``Int8WeightOnlyConfig`` (one scale per output row) for 8 bits and
  ``IntxWeightOnlyConfig(int4, PerGroup)`` for 4 bits. The layer stays an ``nn.Linear`` whose weight is a
  torchao tensor; its matmul dequantizes, so gradients reach the input (and an adapter before it). torchao's
  packed int4 kernels need CUDA (or the ``mslk`` package), so its CPU int4 keeps one value per byte: int4
  accuracy at int8 memory.
- bitsandbytes (CUDA only): ``Linear8bitLt`` (LLM.int8) or ``Linear4bit`` (NF4/FP4, QLoRA's). The weights are
  quantized when the layer moves to the GPU. This path is not tested without a GPU.

The blocks' ``nn.Linear`` layers are quantized; the output head (and a reward model's score head) is not.
Quantization happens on the CPU before the model moves to its device, so a GPU never holds the full-precision
weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from alignkit.models.config import QuantizationConfig

__all__ = [
    "FrozenQuantizedLinear",
    "QuantizationError",
    "dequantized",
    "device_problem",
    "is_quantized_weight",
    "quantization_of",
    "quantize_base",
    "quantized_layers",
    "quiet_torchao_import",
]

_CONFIG_ATTR = "_alignkit_quantization"
# Output heads keep the model's dtype: every logit goes through them, and many are tied to the embedding.
_HEAD_NAMES = {"lm_head", "score", "v_head"}


class QuantizationError(ValueError):
    """Settings under ``model.quantization`` that cannot work here; the message names the field."""


def device_problem(cfg: QuantizationConfig, device: torch.device | str) -> str | None:
    """Why ``cfg`` cannot run on ``device`` (bitsandbytes needs CUDA), or None."""
    if cfg.backend == "bitsandbytes" and torch.device(device).type != "cuda":
        return (f"model.quantization.backend: bitsandbytes quantizes on CUDA GPUs only, and this run's device is "
                f"{torch.device(device).type!r}; use backend torchao (weight-only int8/int4, runs on CPU)")
    return None


def is_quantized_weight(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is a quantized tensor (a torchao subclass or bitsandbytes' integer storage)."""
    return type(weight) not in (torch.Tensor, nn.Parameter) or not weight.is_floating_point()


def quantization_of(model: nn.Module) -> QuantizationConfig | None:
    """The settings ``model``'s base was quantized with (None for a full-precision model)."""
    return getattr(model, _CONFIG_ATTR, None)


def quantized_layers(model: nn.Module) -> list[str]:
    """Paths of the linear layers whose weight is quantized, in model order."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and is_quantized_weight(module.weight)]


def _targets(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not head and name.rpartition(".")[2] not in _HEAD_NAMES]


def quantize_base(model: nn.Module, cfg: QuantizationConfig) -> list[str]:
    """Quantize the weights of ``model``'s block linear layers in place, and freeze every base parameter.

    Call it on the CPU, before the model moves to its device (bitsandbytes quantizes during that move).

    Returns:
        The paths of the quantized layers.

    Raises:
        QuantizationError: the library is not installed, the model has no ``nn.Linear`` layer to quantize
            (GPT-2 keeps its block layers in ``Conv1D``), or ``group_size`` does not divide a layer's input width.
    """
    targets = _targets(model)
    if not targets:
        raise QuantizationError(
            f"model.quantization: {type(model).__name__} has no nn.Linear layer besides its output head to "
            "quantize (GPT-2 keeps its block layers in Conv1D); use a Llama-style model (llama, mistral, qwen2)")
    model.requires_grad_(False)  # the base is frozen: only an adapter trains on a quantized base
    if cfg.backend == "torchao":
        _quantize_torchao(model, cfg, targets)
    else:
        _replace_with_bitsandbytes(model, cfg, targets)
    setattr(model, _CONFIG_ATTR, cfg)
    return [name for name, _ in targets]


class _FrozenQuantizedMatmul(torch.autograd.Function):
    """``F.linear`` with a frozen quantized weight that saves no dequantized copy for backward.

    torchao's weight-only linear dequantizes and calls ``F.linear``, which autograd records: every layer's
    full-precision weight would stay alive from forward to backward, more memory than the bf16 base. Here
    backward dequantizes again, one layer at a time (QLoRA's trade of compute for memory).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.weight, ctx.x_dtype = weight, x.dtype
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        dense = ctx.weight.dequantize()  # (out, in); the base is frozen: no weight or bias gradient
        return (grad_out @ dense.to(grad_out.dtype)).to(ctx.x_dtype), None, None


class FrozenQuantizedLinear(nn.Linear):
    """An ``nn.Linear`` whose weight is a frozen torchao tensor (see :class:`_FrozenQuantizedMatmul`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _FrozenQuantizedMatmul.apply(x, self.weight, self.bias)
        return out


@contextmanager
def quiet_torchao_import() -> Iterator[None]:
    """Silence what importing torchao logs: a warning for each optional CUDA kernel library a CPU-only build
    cannot load, and torch's notes on its enums. transformers imports torchao inside every
    ``from_pretrained`` once it is installed, so without this each model load prints them."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _import_torchao() -> Any:
    with quiet_torchao_import():
        try:
            import torchao.quantization as torchao_quantization
        except ImportError as err:
            raise QuantizationError("model.quantization.backend: torchao is not installed; "
                                    "pip install 'alignkit[quant]'") from err
    return torchao_quantization


def _quantize_torchao(model: nn.Module, cfg: QuantizationConfig, targets: list[tuple[str, nn.Linear]]) -> None:
    tq = _import_torchao()
    if cfg.bits == 8:
        config = tq.Int8WeightOnlyConfig()
    else:
        for name, layer in targets:
            if layer.in_features % cfg.group_size:
                raise QuantizationError(
                    f"model.quantization.group_size: {cfg.group_size} does not divide the input width "
                    f"{layer.in_features} of {name}; use a divisor of it (e.g. 32)")
        int4 = getattr(torch, "int4")  # noqa: B009 - a torch dtype that torch's type stubs do not declare
        config = tq.IntxWeightOnlyConfig(weight_dtype=int4, granularity=tq.PerGroup(cfg.group_size))
    chosen = {id(layer) for _, layer in targets}
    tq.quantize_(model, config, filter_fn=lambda module, _fqn: id(module) in chosen)
    for _, layer in targets:
        # Same parameters, same module object (so no reference to it goes stale); only forward changes.
        layer.__class__ = FrozenQuantizedLinear


def _replace_with_bitsandbytes(model: nn.Module, cfg: QuantizationConfig,
                               targets: list[tuple[str, nn.Linear]]) -> None:
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise QuantizationError("model.quantization.backend: bitsandbytes is not installed; "
                                "pip install 'alignkit[quant-cuda]' (CUDA only)") from err
    for name, layer in targets:
        weight, bias = layer.weight.data, layer.bias
        new: nn.Module
        if cfg.bits == 4:
            new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=bias is not None,
                                    compute_dtype=weight.dtype, quant_type=cfg.quant_type)
            new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=cfg.quant_type)
        else:
            new = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=bias is not None,
                                      has_fp16_weights=False, threshold=6.0)
            new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        if bias is not None:
            new.bias = nn.Parameter(bias.data, requires_grad=False)
        parent_path, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, child, new)


def _dense(weight: torch.Tensor) -> torch.Tensor:
    dequantize = getattr(weight, "dequantize", None)
    if type(weight) in (torch.Tensor, nn.Parameter) or not callable(dequantize):
        raise QuantizationError(f"cannot dequantize a {type(weight).__name__} weight (only torchao weights can be "
                                "written back as full-precision values)")
    return dequantize()


@contextmanager
def dequantized(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, every quantized linear weight is replaced by its dequantized full-precision values.

    For writing a model out as an ordinary transformers folder: the values are exactly what the quantized
    layer multiplies by (the base an adapter was trained on). The quantized weights come back on exit.
    Needs the memory of the full-precision weights meanwhile.
    """
    swapped: list[tuple[nn.Linear, torch.Tensor]] = []
    try:
        for _, module in model.named_modules():
            if isinstance(module, nn.Linear) and is_quantized_weight(module.weight):
                original = module.weight
                module.weight = nn.Parameter(_dense(original.detach()), requires_grad=False)
                swapped.append((module, original))
        yield model
    finally:
        for module, original in swapped:
            module.weight = original
