"""The bottleneck MLP adapter: down-projection, activation, up-projection, on each block's MLP.

Works on GPT-2 MLPs (``c_fc``/``c_proj`` Conv1D, weights stored (in, out)) and Llama-style gated MLPs
(``gate_proj``/``up_proj``/``down_proj`` nn.Linear). See :class:`alignkit.peft.config.BottleneckConfig`
for the placements and initialisations, and why.

Naming: in the adapter, ``down`` is the input side (hidden -> m) and ``up`` the output side
(m -> hidden), the adapter literature's convention. In a Llama MLP ``up_proj`` is an *input* side: under
``init="from_mlp"`` our ``gate``/``down``/``up`` copy ``gate_proj``/``up_proj``/``down_proj``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from alignkit.peft.config import BottleneckConfig
from alignkit.peft.modules import AdapterWrapper, dense_weight, matches_any, set_module

__all__ = ["Bottleneck", "BottleneckMLP", "MLPWeights", "describe_mlp", "inject_bottleneck"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass
class MLPWeights:
    """A transformer MLP seen as ``w_out @ act([w_gate x] * (w_in x + b_in)) + b_out`` (gate optional).

    Attributes:
        w_in: (I, d) input projection (GPT-2 ``c_fc``, Llama ``up_proj``), nn.Linear layout.
        b_in: (I,) or None.
        w_gate: (I, d) gate projection (Llama ``gate_proj``), None for ungated MLPs.
        b_gate: (I,) or None.
        w_out: (d, I) output projection (GPT-2 ``c_proj``, Llama ``down_proj``).
        b_out: (d,) or None.
        act: the MLP's activation module.
    """

    w_in: torch.Tensor
    b_in: torch.Tensor | None
    w_gate: torch.Tensor | None
    b_gate: torch.Tensor | None
    w_out: torch.Tensor
    b_out: torch.Tensor | None
    act: nn.Module

    @property
    def hidden_size(self) -> int:
        return self.w_in.shape[1]

    @property
    def intermediate_size(self) -> int:
        return self.w_in.shape[0]


def describe_mlp(mlp: nn.Module) -> MLPWeights | None:
    """The weights of a GPT-2 or Llama-style MLP (views, no copies), or None for anything else.

    Quantized weights (a quantized frozen base) are dequantized copies.
    """
    c_fc, c_proj, act = getattr(mlp, "c_fc", None), getattr(mlp, "c_proj", None), getattr(mlp, "act", None)
    if isinstance(c_fc, Conv1D) and isinstance(c_proj, Conv1D) and isinstance(act, nn.Module):
        return MLPWeights(c_fc.weight.T, c_fc.bias, None, None, c_proj.weight.T, c_proj.bias, act)
    gate, up, down = (getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
    act_fn = getattr(mlp, "act_fn", None)
    if (
        isinstance(gate, nn.Linear)
        and isinstance(up, nn.Linear)
        and isinstance(down, nn.Linear)
        and isinstance(act_fn, nn.Module)
    ):
        return MLPWeights(dense_weight(up.weight), up.bias, dense_weight(gate.weight), gate.bias,
                          dense_weight(down.weight), down.bias, act_fn)
    return None


class Bottleneck(nn.Module):
    """``up(dropout(act(down(x)))) * scale``, or ``up(dropout(act(gate(x)) * down(x))) * scale`` when gated.

    Args:
        hidden_size: d, the model width (input and output of the adapter).
        size: m, the bottleneck width.
        activation: the nonlinearity module.
        dropout: dropout probability on the (B, T, m) hidden layer.
        scaling: a fixed multiplier, or "learned" for a trained scalar starting at 1.
        gated: add a gate projection (the Llama MLP form).
        device, dtype: where and in what precision to create the weights.
    """

    def __init__(
        self,
        hidden_size: int,
        size: int,
        activation: nn.Module,
        dropout: float = 0.0,
        scaling: float | str = 1.0,
        gated: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.size = size
        self.down = nn.Linear(hidden_size, size, device=device, dtype=dtype)
        self.gate = nn.Linear(hidden_size, size, device=device, dtype=dtype) if gated else None
        self.act = activation
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(size, hidden_size, device=device, dtype=dtype)
        # Zero output side: the adapter outputs exactly 0 until trained.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        if scaling == "learned":
            self.scale: nn.Parameter | float = nn.Parameter(torch.ones((), device=device, dtype=dtype))
        else:
            self.scale = float(scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, T, d)."""
        if self.gate is not None:
            h = self.act(self.gate(x)) * self.down(x)  # (B, T, m)
        else:
            h = self.act(self.down(x))  # (B, T, m)
        return self.up(self.dropout(h)) * self.scale

    @torch.no_grad()
    def init_from_mlp(self, mlp: MLPWeights, copy_output: bool) -> None:
        """Copy the MLP's ``m`` most important neurons (see BottleneckConfig); ``up`` too if ``copy_output``.

        Importance of hidden neuron j: ``|w_in[j]| * |w_out[:, j]|`` (times ``|w_gate[j]|`` when gated).
        Neurons keep their original order; when m exceeds the MLP's width the extra neurons keep their
        random input weights and get zero output weights, so they change nothing until trained.
        """
        score = mlp.w_in.float().norm(dim=1) * mlp.w_out.float().norm(dim=0)  # (I,)
        if mlp.w_gate is not None:
            score = score * mlp.w_gate.float().norm(dim=1)
        k = min(self.size, mlp.intermediate_size)
        keep = score.topk(k).indices.sort().values  # (k,)
        self.down.weight[:k] = mlp.w_in[keep]
        self.down.bias[:k] = mlp.b_in[keep] if mlp.b_in is not None else 0.0
        if self.gate is not None and mlp.w_gate is not None:
            self.gate.weight[:k] = mlp.w_gate[keep]
            self.gate.bias[:k] = mlp.b_gate[keep] if mlp.b_gate is not None else 0.0
        self.up.weight.zero_()
        self.up.bias.zero_()
        if copy_output:
            self.up.weight[:, :k] = mlp.w_out[:, keep]
            if mlp.b_out is not None:
                self.up.bias.copy_(mlp.b_out)


class BottleneckMLP(AdapterWrapper):
    """A block's MLP with a bottleneck adapter after it, beside it, or instead of it.

    Args:
        mlp: the original MLP (kept as ``base_layer``, never modified).
        adapter: the :class:`Bottleneck`.
        placement: "sequential", "parallel" or "replace".
    """

    kind = "bottleneck"

    def __init__(self, mlp: nn.Module, adapter: Bottleneck, placement: str) -> None:
        super().__init__(mlp)
        self.adapter = adapter
        self.placement = placement

    def adapter_forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        """(B, T, d) -> (B, T, d). Extra arguments go to the original MLP, as when the adapter is off."""
        if self.placement == "sequential":
            h = self.base_layer(x, *args, **kwargs)
            return h + self.adapter(h)
        if self.placement == "parallel":
            return self.base_layer(x, *args, **kwargs) + self.adapter(x)
        return self.adapter(x)  # replace: the original MLP does not run

    def extra_repr(self) -> str:
        return f"placement={self.placement}"


def _mlp_paths(model: nn.Module, cfg: BottleneckConfig) -> list[str]:
    if cfg.target == "auto":
        return [name for name, _ in model.named_modules() if name.rpartition(".")[2] == "mlp"]
    return [name for name, _ in model.named_modules() if name and matches_any(cfg.target, name)]


def inject_bottleneck(model: nn.Module, cfg: BottleneckConfig) -> list[str]:
    """Wrap every targeted MLP of ``model`` in a :class:`BottleneckMLP`, in place.

    Returns:
        The module paths that were adapted.

    Raises:
        ValueError: no module matched, or a matched module is not a GPT-2 / Llama-style MLP.
    """
    paths = _mlp_paths(model, cfg)
    if not paths:
        sample = [n for n, _ in model.named_modules() if n][:8]
        raise ValueError(
            f"adapter.target={cfg.target!r} matched no MLP module; module names look like: {sample}"
        )
    for path in paths:
        mlp = model.get_submodule(path)
        weights = describe_mlp(mlp)
        if weights is None:
            raise ValueError(
                f"adapter.target matched {path!r} ({type(mlp).__name__}), which is not a GPT-2 MLP "
                "(c_fc/c_proj Conv1D) nor a Llama-style MLP (gate_proj/up_proj/down_proj nn.Linear)"
            )
        from_mlp = cfg.init == "from_mlp"
        act = copy.deepcopy(weights.act) if from_mlp else _ACTIVATIONS[cfg.activation or "relu"]()
        adapter = Bottleneck(
            hidden_size=weights.hidden_size,
            size=cfg.size_for(weights.hidden_size),
            activation=act,
            dropout=cfg.dropout,
            scaling=cfg.scaling,
            gated=from_mlp and weights.w_gate is not None,
            device=weights.w_in.device,
            dtype=weights.w_in.dtype,
        )
        if from_mlp:
            adapter.init_from_mlp(weights, copy_output=cfg.placement == "replace")
        set_module(model, path, BottleneckMLP(mlp, adapter, cfg.placement))
    return paths
