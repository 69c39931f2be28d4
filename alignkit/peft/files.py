"""The file names of an alignkit adapter checkpoint (folders are written with ``atomic_folder``)."""

from __future__ import annotations

from alignkit.cache import atomic_folder

__all__ = ["ADAPTER_CONFIG_FILE", "ADAPTER_WEIGHTS_FILE", "FORMAT_NAME", "FORMAT_VERSION", "atomic_folder"]

# Distinct from the PEFT library's adapter_config.json / adapter_model.safetensors on purpose: an alignkit
# checkpoint can sit beside a transformers model in one folder and is never mistaken for a PEFT one.
ADAPTER_CONFIG_FILE = "alignkit_adapter.json"
ADAPTER_WEIGHTS_FILE = "alignkit_adapter.safetensors"
FORMAT_NAME = "alignkit-adapter"
FORMAT_VERSION = 1
