"""The weights versions `alignkit serve` answers with: the model it started with, LoRA adapters loaded from
folders under new names, and full-weight reloads.

The endpoints follow vLLM's contract (``POST /v1/load_lora_adapter`` with ``lora_name`` and ``lora_path``; a
PEFT LoRA folder: ``adapter_config.json`` and ``adapter_model.safetensors``), so that a trainer that pushes its
weights to this server pushes them to vLLM the same way. A full-weight reload (``POST /v1/load_weights`` with
``model_name`` and ``model_path``: a folder of ``*.safetensors``) replaces the served weights, and the names
answered before it stop being served. Every request names the version it wants in ``model`` and every answer
says which one produced it.

Loading is refused unless the server was started with a folder weights may come from (``--allow-weights-from``);
a path outside it (after resolving symbolic links) is answered 400, so a client cannot make the server read an
arbitrary file. Only safetensors are read: nothing is unpickled. Tensors are checked (names, shapes, finite
values) before any weight of the served model changes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from alignkit.commands.serve_requests import RequestError
from alignkit.jsonio import RunFileError, parse_json
from alignkit.peft import (
    LoRAConfig,
    adapter_state_dict,
    adapter_targets,
    adapters_disabled,
    apply_adapter,
    has_adapters,
)

__all__ = ["MAX_ADAPTER_FILE_BYTES", "WeightVersions"]

MAX_ADAPTER_FILE_BYTES = 1 << 16  # adapter_config.json: a few hundred bytes in practice
_PEFT_PREFIX = "base_model.model."


def _not_found(name: str, served: list[str]) -> RequestError:
    return RequestError(f"model {name!r} is not served here; served: {', '.join(served)}", HTTPStatus.NOT_FOUND)


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, every one finite, or a 400 that names the file."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise RequestError(f"{path.name}: not a readable safetensors file ({str(err)[:200]})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RequestError(f"{path.name}: tensor {name} holds NaN or Inf values")
    return tensors


class WeightVersions:
    """The named weights one served model switches between, under the model's lock.

    Args:
        model: the served causal LM (changed in place).
        name: the name of the weights it started with.
        weights_root: the folder load requests may read from (None: loading is refused).
        max_adapters: LoRA versions kept at once; loading one more forgets the oldest.
    """

    def __init__(self, model: nn.Module, name: str, *, weights_root: Path | None = None, max_adapters: int = 4) -> None:
        if max_adapters < 1:
            raise ValueError(f"max_adapters must be >= 1, got {max_adapters}")
        self.model = model
        self.base_name = name
        self.weights_root = weights_root.resolve() if weights_root is not None else None
        self.max_adapters = max_adapters
        self.adapters: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self.current: str | None = None  # the adapter version in the model's LoRA layers

    @property
    def names(self) -> list[str]:
        """Every name a request may ask for: the base weights, then the adapters from oldest to newest."""
        return [self.base_name, *self.adapters]

    def resolve(self, name: str | None) -> str:
        """The version a request's ``model`` asks for (None: the base weights).

        Raises:
            RequestError: 404 for a name not served.
        """
        if name is None or name == self.base_name:
            return self.base_name
        if name not in self.adapters:
            raise _not_found(name, self.names)
        return name

    @contextmanager
    def selected(self, name: str) -> Iterator[nn.Module]:
        """The model with version ``name`` in place (call with the model's lock held)."""
        if name == self.base_name:
            if has_adapters(self.model):
                with adapters_disabled(self.model) as model:
                    yield model
                    return
            yield self.model
            return
        if self.current != name:
            with torch.no_grad():
                own = adapter_state_dict(self.model)
                for key, tensor in self.adapters[name].items():
                    own[key].copy_(tensor)
            self.current = name
        yield self.model

    # -----------------------------------------------------------------------------------------------------
    def _folder(self, path: Any, field: str) -> Path:
        """``path`` as a folder inside the weights root, or a 400 saying why not."""
        if self.weights_root is None:
            raise RequestError("loading weights is off: start the server with --allow-weights-from DIR",
                               HTTPStatus.FORBIDDEN)
        if not isinstance(path, str) or not path or "\x00" in path:
            raise RequestError(f"'{field}' must be a folder path")
        folder = Path(path).resolve()
        if not folder.is_relative_to(self.weights_root):
            raise RequestError(f"'{field}': {path} is outside the folder this server loads weights from")
        if not folder.is_dir():
            raise RequestError(f"'{field}': {path} is not a folder")
        return folder

    def _new_name(self, name: Any, field: str) -> str:
        if not isinstance(name, str) or not name or len(name) > 200 or not name.isprintable():
            raise RequestError(f"'{field}' must be a non-empty printable string of at most 200 characters")
        if name in self.names:
            raise RequestError(f"'{field}': {name!r} is already loaded; load new weights under a new name")
        return name

    def load_lora(self, lora_name: Any, lora_path: Any) -> str:
        """Load a PEFT LoRA folder as version ``lora_name`` (the served model's LoRA layers are made on the first
        load; later adapters must have the same rank and target layers). Returns a message for the client.

        Raises:
            RequestError: bad name or path, a foreign or malformed adapter, mismatched tensors.
        """
        name = self._new_name(lora_name, "lora_name")
        folder = self._folder(lora_path, "lora_path")
        config = self._peft_config(folder / "adapter_config.json")
        tensors = _safetensors(folder / "adapter_model.safetensors")
        own = self._lora_layers(config)
        loaded: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            short = key.removeprefix(_PEFT_PREFIX)
            if short not in own:
                raise RequestError(f"adapter_model.safetensors: tensor {key} matches no LoRA layer of this model")
            if tuple(tensor.shape) != tuple(own[short].shape):
                raise RequestError(f"adapter_model.safetensors: {key} has shape {tuple(tensor.shape)}, this model's "
                                   f"is {tuple(own[short].shape)}")
            loaded[short] = tensor.to(own[short].dtype)
        missing = sorted(own.keys() - loaded.keys())
        if missing:
            raise RequestError(f"adapter_model.safetensors: no tensor for {missing[0]} (and {len(missing) - 1} more)")
        self.adapters[name] = loaded
        while len(self.adapters) > self.max_adapters:
            oldest, _ = self.adapters.popitem(last=False)
            if self.current == oldest:
                self.current = None
        return f"Success: LoRA adapter '{name}' added successfully."

    def _peft_config(self, path: Path) -> LoRAConfig:
        """The LoRA settings of a PEFT ``adapter_config.json`` (plain LoRA only), or a 400."""
        if not path.is_file() or path.stat().st_size > MAX_ADAPTER_FILE_BYTES:
            raise RequestError(f"{path.name}: missing, or over {MAX_ADAPTER_FILE_BYTES} bytes")
        try:
            data = parse_json(path.read_bytes(), path.name)
        except RunFileError as err:  # garbage, NaN, nesting too deep, not UTF-8
            raise RequestError(str(err)[:200]) from None
        if not isinstance(data, dict) or data.get("peft_type") != "LORA":
            raise RequestError(f"{path.name}: peft_type must be LORA")
        if data.get("use_dora") or data.get("use_rslora") or data.get("bias", "none") != "none":
            raise RequestError(f"{path.name}: only plain LoRA is served (no DoRA, rsLoRA or bias)")
        r, alpha, targets = data.get("r"), data.get("lora_alpha"), data.get("target_modules")
        if not (isinstance(r, int) and not isinstance(r, bool) and r > 0):
            raise RequestError(f"{path.name}: r must be a positive integer")
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha > 0):
            raise RequestError(f"{path.name}: lora_alpha must be a positive number")
        if not (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
            raise RequestError(f"{path.name}: target_modules must be a non-empty list of module paths")
        return LoRAConfig(r=r, alpha=float(alpha), target_modules=sorted(targets))

    def _lora_layers(self, config: LoRAConfig) -> dict[str, torch.Tensor]:
        """The served model's LoRA tensors by name, made on the first adapter; a 400 when ``config`` differs."""
        if not has_adapters(self.model):
            apply_adapter(self.model, config)
            self.model.eval()
        targets = adapter_targets(self.model)
        assert config.target_modules is not None
        if sorted(targets) != config.target_modules:
            raise RequestError(f"adapter_config.json: target_modules {config.target_modules[:3]}... differ from this "
                               f"server's LoRA layers {sorted(targets)[:3]}... (one set of layers per server)")
        own = adapter_state_dict(self.model)
        rank = next(t.shape[0] for k, t in own.items() if k.endswith("lora_A.weight"))
        if rank != config.r:
            raise RequestError(f"adapter_config.json: r={config.r}, this server's LoRA layers have r={rank}")
        return own

    def load_full(self, model_name: Any, model_path: Any) -> str:
        """Replace the served weights with the safetensors of a folder, served as ``model_name`` from now on
        (every name served before is dropped). Returns a message for the client.

        Raises:
            RequestError: bad name or path, unknown or missing tensors, a shape that differs, LoRA layers present.
        """
        name = self._new_name(model_name, "model_name")
        folder = self._folder(model_path, "model_path")
        if has_adapters(self.model):
            raise RequestError("this server holds LoRA adapters: reload full weights on a server without them")
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise RequestError(f"'model_path': {model_path} holds no .safetensors file")
        saved: dict[str, torch.Tensor] = {}
        for file in files:
            saved.update(_safetensors(file))
        params = dict(self.model.named_parameters())  # tied weights once
        state = self.model.state_dict()
        for key, tensor in saved.items():
            if key not in state:
                raise RequestError(f"{key}: no such weight in the served model")
            if tuple(tensor.shape) != tuple(state[key].shape):
                raise RequestError(f"{key} has shape {tuple(tensor.shape)}, the served model's is "
                                   f"{tuple(state[key].shape)}")
        missing = sorted(params.keys() - saved.keys())
        if missing:
            raise RequestError(f"'model_path': no tensor for {missing[0]} (and {len(missing) - 1} more)")
        with torch.no_grad():
            for key, tensor in saved.items():
                state[key].copy_(tensor)
        self.base_name = name
        return f"Success: weights '{name}' loaded."
