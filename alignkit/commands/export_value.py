"""`alignkit export RUN --model value`: the value model a PPO run trained, as a transformers folder.

The value model is not part of the policy (``model/`` holds only the policy): its trained tensors are in the run's
last checkpoint (``online/checkpoints/<latest>/value.safetensors``). Both kinds are exported the same way, as an
``AutoModelForTokenClassification`` with one label, LoRA folded into the weights:

- ``policy_head``: the trained policy's decoder under the value head;
- ``separate`` (started from the policy): the value model's own decoder (the policy's weights where it did not
  train, its own where it did) under its head.

Its logit at position t is the value V of the state after the tokens up to t, the value PPO read for the
completion token at t + 1 (:mod:`alignkit.online.tokens`). A value model started from a reward model
(``value_init: <folder>``) is not exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from alignkit.jsonio import RunFileError
from alignkit.models.logps import lm_head_parts
from alignkit.online.tokens import ValueHead, ValueModel, hidden_size, value_model_from_policy
from alignkit.online.trainer import VALUE_FILE
from alignkit.peft.export import merged_state_dict
from alignkit.train.checkpoint import latest_checkpoint
from alignkit.workflow.model_io import load_run_model

__all__ = ["VALUE_HOW_TO_LOAD", "trained_value_model", "write_value_model"]

VALUE_HOW_TO_LOAD = ("AutoModelForTokenClassification.from_pretrained(folder)(input_ids).logits[..., 0]: the value "
                     "at each position (of the state after that token)")


def _value_tensors(run: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    checkpoint = latest_checkpoint(run / "online" / "checkpoints")
    path = checkpoint / VALUE_FILE if checkpoint is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"{run}: no value model to export (a PPO run keeps it in "
                                f"online/checkpoints/<latest>/{VALUE_FILE}; other algorithms train none)")
    try:
        return path, load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise RunFileError(f"{path}: not a value model's tensors: {str(err).splitlines()[0][:200]}") from None


def trained_value_model(run: str | Path) -> tuple[ValueModel, Any]:
    """The value model of the PPO run folder ``run`` as it ended training (on the CPU, eval mode), and the
    run's tokenizer.

    Raises:
        FileNotFoundError: the run kept no value model.
        RunFileError: its tensors do not fit the value model the run's policy implies (named, one line).
    """
    run = Path(run)
    path, tensors = _value_tensors(run)
    policy, tokenizer = load_run_model(run)
    parts = lm_head_parts(policy)
    if parts is None:
        raise ValueError(f"{run}: the value model of a {type(policy).__name__} cannot be exported (no known "
                         "decoder body)")
    if set(tensors) == {"linear.weight", "linear.bias"}:  # policy_head: a head on the policy's own decoder
        value = ValueModel(parts.body, ValueHead(hidden_size(policy)))
        tensors = {f"head.{name}": tensor for name, tensor in tensors.items()}
    elif any(name.startswith("head.linear.") for name in tensors):  # separate, started from the policy
        value = value_model_from_policy(policy)
    else:
        raise RunFileError(f"{path}: a value model started from a reward model (value_init: <folder>) is not "
                           "exported; only policy_head and separate value models started from the policy are")
    params = dict(value.named_parameters())
    for name, tensor in tensors.items():
        if name not in params or params[name].shape != tensor.shape:
            raise RunFileError(f"{path}: tensor {name!r} {tuple(tensor.shape)} does not fit the run's value model")
        with torch.no_grad():
            params[name].copy_(tensor)
    return value.eval(), tokenizer


def write_value_model(value: ValueModel, tokenizer: Any, folder: Path) -> None:
    """Save ``value`` into ``folder`` as a one-label ``AutoModelForTokenClassification`` (and the tokenizer).

    Raises:
        ValueError: the value model has bottleneck adapters (no weight of the architecture holds them).
    """
    from transformers import AutoModelForTokenClassification

    body_config: Any = value.body.config
    config = type(body_config).from_dict(body_config.to_dict())
    config.num_labels, config.architectures = 1, None
    model = AutoModelForTokenClassification.from_config(config)
    model.base_model.load_state_dict(merged_state_dict(value.body), strict=True)
    head = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if len(head) != 1 or head[0].bias is None:
        raise ValueError(f"{type(model).__name__}: no single one-label linear head to hold the value head")
    assert isinstance(value.head, ValueHead)
    with torch.no_grad():
        head[0].weight.copy_(value.head.linear.weight)
        head[0].bias.copy_(value.head.linear.bias)
    model.to(torch.float32).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
