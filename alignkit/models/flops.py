"""Model FLOPs, by one stated convention, for the throughput figures of a run's time table.

N is the number of parameters that multiply every token: all of the model's but its input embedding tables
(token and position lookups cost no matmul), with an output head tied to the token embedding counted once,
since it multiplies every position. A forward pass costs 2·N FLOPs per token. Training costs 4·N + 2·N_trainable
per token: the forward, the gradient with respect to activations (2·N), and the gradient of the trained
weights (2·N_trainable); with every weight trained that is the usual 6·N. Attention scores (about
2·layers·context·width per token) and a reference model's forwards are left out, so the figures are a floor.
Tokens are the non-padding ones: padding is work the model did not need.
"""

from __future__ import annotations

from torch import nn

__all__ = ["forward_flops", "matmul_parameters", "matmul_weight_bytes", "training_flops", "trainable_parameters"]


def _matmul_weights(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter but the input embedding tables; a tied output head once."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    weights = [p for p in model.parameters() if id(p) not in tables]
    get_output = getattr(model, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, nn.Parameter) and id(weight) in tables:
        weights.append(weight)
    return weights


def matmul_parameters(model: nn.Module) -> int:
    """N: every parameter but the input embedding tables; a tied output head counts once."""
    return sum(p.numel() for p in _matmul_weights(model))


def matmul_weight_bytes(model: nn.Module) -> int:
    """Bytes a forward pass reads from the weights of N (an embedding lookup reads only the rows it needs):
    the memory traffic that bounds a decoding step from below."""
    return sum(p.numel() * p.element_size() for p in _matmul_weights(model))


def trainable_parameters(model: nn.Module) -> int:
    """N_trainable: parameters with ``requires_grad``, tables included (their gradient is a scatter, but
    a tied head's is a full matmul; the difference is small against 4·N)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_flops(n: int, tokens: int) -> float:
    """2·N per token."""
    return 2.0 * n * tokens


def training_flops(n: int, n_trainable: int, tokens: int) -> float:
    """(4·N + 2·N_trainable) per token: forward, activation gradients, trained weights' gradients."""
    return (4.0 * n + 2.0 * n_trainable) * tokens
