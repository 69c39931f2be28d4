"""Dropout off for preference training (``model.disable_dropout``, on by default).

With dropout, the policy in train mode and the reference in eval mode score the same pair differently by
noise: DPO's first loss is not log 2 and the implicit rewards are noisy. The DPO reference implementation
(eric-mitchell/direct-preference-optimization) and TRL switch it off the same way.
"""

from __future__ import annotations

from torch import nn

__all__ = ["disable_dropout"]

_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout of ``model`` to 0, in place; returns how many were non-zero.

    Covers ``nn.Dropout`` modules (GPT-2's ``attn_dropout``, ``resid_dropout``, ...) and the float
    ``*dropout*`` attributes some attention modules read instead (Llama's ``attention_dropout``). The model's
    config is left as it was, so a saved model keeps its original settings. Apply it before an adapter is
    added: an adapter's own dropout is the recipe's ``adapter.dropout``.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, _DROPOUT_MODULES):
            changed += module.p > 0
            module.p = 0.0
            continue
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float):
                changed += value > 0
                setattr(module, name, 0.0)
    return changed
