"""The recipe section ``adapter:``: which parameter-efficient module to train, and how.

Three kinds, told apart by ``kind``::

    adapter: {kind: none}                                   # full fine-tuning (the default)
    adapter: {kind: bottleneck, placement: parallel, reduction_factor: 16}
    adapter: {kind: lora, r: 8, alpha: 16, target_modules: [c_attn]}

Every field is documented once, here; the modules in :mod:`alignkit.peft.bottleneck` and
:mod:`alignkit.peft.lora` read these models and nothing else.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, model_validator

from alignkit.config_base import StrictConfig

__all__ = [
    "AdapterConfig",
    "BottleneckConfig",
    "LoRAConfig",
    "NoAdapter",
    "parse_adapter_config",
]


class _StrictConfig(StrictConfig):
    """Strict (unknown fields are errors, numbers finite) and immutable."""

    model_config = ConfigDict(frozen=True)


class NoAdapter(_StrictConfig):
    """No adapter: every parameter of the model is trained and the reference is a separate copy."""

    kind: Literal["none"] = Field("none", description="No adapter: full fine-tuning.")


class _SavedAdapter(_StrictConfig):
    """What an adapter run's ``model/`` folder keeps (both adapter kinds)."""

    save_base: bool = Field(
        False,
        description="Also copy the base model's weights into the run's model/ folder. By default model/ holds "
        "the adapter and refers to a base loaded from a local folder by its path and the SHA-256 of its weight "
        "files (eval, serve and load_run_model load it from there and check the hash); a base with no local "
        "folder (built from a config, or a Hub id) is always copied.",
    )


class BottleneckConfig(_SavedAdapter):
    """A bottleneck MLP adapter on every transformer block's MLP (GPT-2 Conv1D or Llama-style gated MLPs).

    The adapter is ``up(dropout(act(down(x)))) * scaling`` with ``down: hidden -> m`` and ``up: m -> hidden``
    (for ``init="from_mlp"`` on a gated Llama MLP it also has a ``gate: hidden -> m`` and computes
    ``up(dropout(act(gate(x)) * down(x)))``, the MLP's own form). Placements:

    - ``sequential``: ``h = mlp(x); out = h + adapter(h)`` (Houlsby et al. 2019: after the MLP, with its
      own residual connection).
    - ``parallel``: ``out = mlp(x) + adapter(x)`` (He et al. 2022: beside the MLP, reading its input).
    - ``replace``: ``out = adapter(x)``. The block's MLP no longer runs while the adapter is on: the
      adapter *is* the block's MLP, a narrower one. The original MLP weights are kept, frozen and
      untouched, so that switching the adapter off gives back the base model exactly (the reference
      costs no extra memory); they are not part of an adapter checkpoint. Only ``init="from_mlp"`` makes
      sense here: a zero-initialised replacement would delete every MLP at step 0.

    Initialisations:

    - ``identity``: ``down`` random (small), ``up`` zero, so the adapter outputs 0 and the model is
      unchanged at step 0. The default for ``sequential`` and ``parallel``.
    - ``from_mlp``: the adapter copies the ``m`` most important hidden neurons of the block's MLP,
      importance = product of the neuron's input-weight and output-weight norms. Selecting neurons
      (rather than an SVD of each projection) is deliberate: the activation is element-wise, so a subset
      of neurons is an exact sub-network of the MLP while SVD factors mix neurons across the
      nonlinearity and approximate nothing in particular. With ``m`` >= the MLP's width the copy is the
      MLP itself. Under ``replace`` both sides are copied, so the adapter starts as a pruned MLP and
      training recovers what the pruning lost. Under ``parallel`` only the input side (``down``/``gate``)
      is copied and ``up`` stays zero: the model is unchanged at step 0, but the adapter starts reading
      features the MLP already found useful instead of random ones, which is what makes from-scratch
      adapters slow to learn. It is refused under ``sequential``, whose adapter reads the MLP's output,
      not the input the copied weights were trained on. The adapter uses the MLP's own activation.

    Size: exactly one of ``bottleneck_size`` and ``reduction_factor`` (``m = hidden_size //
    reduction_factor``); neither means ``reduction_factor`` 16, or 2 for ``replace``.
    """

    kind: Literal["bottleneck"] = Field("bottleneck", description="A bottleneck MLP adapter.")
    placement: Literal["sequential", "parallel", "replace"] = Field(
        "sequential",
        description="sequential: after the MLP, on its output; parallel: beside the MLP, on its input; "
        "replace: instead of the MLP (the original is kept frozen for the reference).",
    )
    bottleneck_size: int | None = Field(
        None, gt=0, description="Width m of the adapter's hidden layer. Exclusive with reduction_factor."
    )
    reduction_factor: float | None = Field(
        None,
        gt=0,
        description="m = hidden_size // reduction_factor. Exclusive with bottleneck_size. "
        "Default 16 (2 for placement=replace) when neither is set.",
    )
    activation: Literal["relu", "gelu", "silu", "tanh"] | None = Field(
        None,
        description="Nonlinearity of the adapter. Default relu; with init=from_mlp the MLP's own "
        "activation is used and this must stay unset.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's hidden layer.")
    scaling: float | Literal["learned"] = Field(
        1.0, description="Multiplier of the adapter output; 'learned' = a trained scalar starting at 1."
    )
    init: Literal["identity", "from_mlp"] | None = Field(
        None,
        description="identity: zero up-projection, the model is unchanged at step 0; from_mlp: copy the "
        "MLP's most important neurons. Default identity, or from_mlp for placement=replace.",
    )
    target: Literal["auto"] | list[str] = Field(
        "auto",
        description="'auto': every module named 'mlp' (GPT-2 c_fc/c_proj or Llama gate/up/down_proj); "
        "or name patterns (see LoRAConfig.target_modules) of the MLP modules to adapt.",
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        placement = data.get("placement", "sequential")
        if data.get("init") is None:
            data["init"] = "from_mlp" if placement == "replace" else "identity"
        init = data["init"]
        if data.get("bottleneck_size") is not None and data.get("reduction_factor") is not None:
            raise ValueError("set exactly one of bottleneck_size and reduction_factor, not both")
        if data.get("bottleneck_size") is None and data.get("reduction_factor") is None:
            data["reduction_factor"] = 2.0 if placement == "replace" else 16.0
        if placement == "replace" and init == "identity":
            raise ValueError(
                "placement=replace needs init=from_mlp: a zero-initialised replacement removes every MLP "
                "at step 0"
            )
        if placement == "sequential" and init == "from_mlp":
            raise ValueError(
                "init=from_mlp is for placement=parallel or replace: a sequential adapter reads the MLP's "
                "output, not the input the copied MLP weights expect"
            )
        if init == "from_mlp" and data.get("activation") is not None:
            raise ValueError("activation must be unset with init=from_mlp (the MLP's own activation is used)")
        if init == "identity" and data.get("activation") is None:
            data["activation"] = "relu"
        return data

    def size_for(self, hidden_size: int) -> int:
        """The adapter width m for a model of this hidden size (at least 1)."""
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        assert self.reduction_factor is not None  # set by the validator
        return max(1, int(hidden_size // self.reduction_factor))


class LoRAConfig(_SavedAdapter):
    """Low-rank adaptation (Hu et al. 2021): ``W x + (alpha / r) * B A x`` with ``A: in -> r``, ``B: r -> out``.

    ``B`` starts at zero, so the model is unchanged at step 0. Works on ``nn.Linear`` and on GPT-2's
    ``Conv1D`` (whose weight is stored transposed, ``(in, out)``; merging accounts for it).

    Target patterns match module paths such as ``transformer.h.0.attn.c_attn``. A plain name (``c_attn``,
    ``q_proj``) matches every module whose path ends with it; any other pattern must match the whole
    path, either as a glob (``*.h.1*.c_attn``) or as a regular expression (``.*\\.(q|v)_proj``). Only
    ``nn.Linear`` and ``Conv1D`` modules are adapted.
    """

    kind: Literal["lora"] = Field("lora", description="Low-rank adaptation of linear layers.")
    r: int = Field(8, gt=0, description="Rank of the update B A.")
    alpha: float = Field(16.0, gt=0, description="The update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the input of the low-rank path.")
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="Name patterns of the layers to adapt. Default per architecture: GPT-2 ['c_attn'], "
        "Llama-style ['q_proj', 'v_proj'].",
    )

    @property
    def scaling(self) -> float:
        """alpha / r, the factor on the low-rank update."""
        return self.alpha / self.r


AdapterConfig = Annotated[NoAdapter | BottleneckConfig | LoRAConfig, Field(discriminator="kind")]

_ADAPTER = TypeAdapter(AdapterConfig)


def parse_adapter_config(data: Any) -> NoAdapter | BottleneckConfig | LoRAConfig:
    """Validate a mapping (e.g. a recipe's ``adapter:`` section) into one of the adapter configs.

    Raises:
        pydantic.ValidationError: naming the offending field.
    """
    if isinstance(data, NoAdapter | BottleneckConfig | LoRAConfig):
        return data
    return _ADAPTER.validate_python(data)
