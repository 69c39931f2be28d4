"""Parameter-efficient fine-tuning: bottleneck MLP adapters and LoRA, with an adapter-off reference.

Everything a trainer needs is importable from here; see :mod:`alignkit.peft.config` for the options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.lazy import lazy_exports

if TYPE_CHECKING:
    from alignkit.peft.api import (
        ParameterRow,
        adapter_config_of,
        adapter_state_dict,
        adapter_targets,
        adapters_disabled,
        apply_adapter,
        count_parameters,
        format_parameter_table,
        has_adapters,
        load_adapter,
        merge_adapter,
        parameter_table,
        save_adapter,
        unmerge_adapter,
    )
    from alignkit.peft.config import (
        AdapterConfig,
        BottleneckConfig,
        LoRAConfig,
        NoAdapter,
        parse_adapter_config,
    )
    from alignkit.peft.export import export_merged, export_peft_lora, export_with_adapters, load_exported

__all__ = [
    "AdapterConfig",
    "BottleneckConfig",
    "LoRAConfig",
    "NoAdapter",
    "ParameterRow",
    "adapter_config_of",
    "adapter_state_dict",
    "adapter_targets",
    "adapters_disabled",
    "apply_adapter",
    "count_parameters",
    "export_merged",
    "export_peft_lora",
    "export_with_adapters",
    "format_parameter_table",
    "has_adapters",
    "load_adapter",
    "load_exported",
    "merge_adapter",
    "parameter_table",
    "parse_adapter_config",
    "save_adapter",
    "unmerge_adapter",
]

__getattr__ = lazy_exports(__name__, {
    "api": ("ParameterRow", "adapter_config_of", "adapter_state_dict", "adapter_targets", "adapters_disabled", "apply_adapter", "count_parameters", "format_parameter_table", "has_adapters", "load_adapter", "merge_adapter", "parameter_table", "save_adapter", "unmerge_adapter"),
    "config": ("AdapterConfig", "BottleneckConfig", "LoRAConfig", "NoAdapter", "parse_adapter_config"),
    "export": ("export_merged", "export_peft_lora", "export_with_adapters", "load_exported"),
})
