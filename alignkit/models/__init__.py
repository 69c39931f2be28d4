"""Models: load policy, reference and reward models; sequence log-probs; reference policies."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.lazy import lazy_exports

if TYPE_CHECKING:
    from alignkit.models.config import ModelConfig, QuantizationConfig, ReferenceConfig
    from alignkit.models.load import (
        ModelLoadError,
        fetch_model,
        load_causal_lm,
        load_reward_model,
        load_tokenizer,
        resolve_model_path,
    )
    from alignkit.models.logps import concatenated_forward, reward_scores, sequence_logps
    from alignkit.models.quantization import QuantizationError, dequantized, quantization_of, quantize_base
    from alignkit.models.reference import (
        AdaptersOffReference,
        CachedReference,
        FrozenCopyReference,
        Reference,
    )
    from alignkit.models.reference_cache import ReferenceLogpsCache, cache_key
    from alignkit.models.smollm2 import MODEL_ALIASES, ensure_smollm2

__all__ = [
    "MODEL_ALIASES",
    "AdaptersOffReference",
    "CachedReference",
    "FrozenCopyReference",
    "ModelConfig",
    "ModelLoadError",
    "QuantizationConfig",
    "QuantizationError",
    "Reference",
    "ReferenceConfig",
    "ReferenceLogpsCache",
    "cache_key",
    "concatenated_forward",
    "dequantized",
    "ensure_smollm2",
    "fetch_model",
    "load_causal_lm",
    "load_reward_model",
    "load_tokenizer",
    "quantization_of",
    "quantize_base",
    "resolve_model_path",
    "reward_scores",
    "sequence_logps",
]

__getattr__ = lazy_exports(__name__, {
    "config": ("ModelConfig", "QuantizationConfig", "ReferenceConfig"),
    "load": ("ModelLoadError", "fetch_model", "load_causal_lm", "load_reward_model", "load_tokenizer", "resolve_model_path"),
    "logps": ("concatenated_forward", "reward_scores", "sequence_logps"),
    "quantization": ("QuantizationError", "dequantized", "quantization_of", "quantize_base"),
    "reference": ("AdaptersOffReference", "CachedReference", "FrozenCopyReference", "Reference"),
    "reference_cache": ("ReferenceLogpsCache", "cache_key"),
    "smollm2": ("MODEL_ALIASES", "ensure_smollm2"),
})
