"""The recipe's `train:` and `sft:` sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from alignkit.config_base import SEED_MAX, StrictConfig

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedConfig",
    "EarlyStoppingConfig",
    "MeshConfig",
    "MixedPrecisionConfig",
    "OptimizerConfig",
    "SFTConfig",
    "TrainConfig",
]


class _Strict(StrictConfig):
    """Strict and finite (see :class:`alignkit.config_base.StrictConfig`)."""


class EarlyStoppingConfig(_Strict):
    """Stop when an evaluation metric has not improved for `patience` evaluations."""

    metric: str = Field("eval/loss", description="Metric name as logged, e.g. eval/loss or eval/rewards/accuracies.")
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher is better.")
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")


class OptimizerConfig(_Strict):
    """The optimizer of a stage (shared by preference, SFT and online training)."""

    optimizer: Literal["adamw", "rmsprop"] = Field("adamw", description="AdamW, or RMSprop as in the DPO paper.")
    lr: float = Field(5e-6, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay (AdamW) or L2 (RMSprop).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1).")

    @field_validator("betas")
    @classmethod
    def _betas_below_one(cls, betas: tuple[float, float]) -> tuple[float, float]:
        # Adam divides by 1 - beta**t: a beta of 1 or more never forgets, or diverges.
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"each AdamW beta must be in [0, 1), got {list(betas)}")
        return betas


class TrainConfig(OptimizerConfig):
    """Optimisation of one training stage.

    `batch_size` is the number of examples (pairs) per optimizer step over all processes; each process runs
    `batch_size / (grad_accum * world_size)` examples per forward pass.
    """

    batch_size: int = Field(8, ge=1, description="Examples per optimizer step, over all processes.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step (per process).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; default: `epochs` passes over the data.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data when max_steps is not set.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up from 0 to `lr`.")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "linear", description="Decay after warm-up: constant, linear to 0, or cosine to 0."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm; null disables.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast where a bf16 matmul measured faster than fp32 on this machine "
        "(measured once and cached; a GPU with bf16 units, a CPU with AMX-BF16 or AVX512-BF16; ALIGNKIT_HARDWARE="
        "native-bf16|no-bf16 states the facts instead), else fp32; bf16: autocast on any device (slower than fp32 "
        "on a CPU without those); fp32: no autocast. Weights, optimizer states, losses and log-prob sums stay fp32; "
        "the run prints and reports the choice and why."
    )
    device: str = Field("auto", description="auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...")
    log_every: int = Field(1, ge=1, description="Write metrics every N optimizer steps.")
    eval_every: int | None = Field(None, ge=1, description="Evaluate on held-out pairs every N steps (and at the end).")
    eval_batch_size: int | None = Field(None, ge=1, description="Pairs per evaluation forward; default batch_size / grad_accum.")
    max_eval_examples: int | None = Field(None, ge=1, description="Cap on held-out pairs per evaluation.")
    save_every: int | None = Field(None, ge=1, description="Write a resumable checkpoint every N steps (and at the end).")
    keep_checkpoints: int = Field(1, ge=1, description="Resumable checkpoints kept besides the best one.")
    early_stopping: EarlyStoppingConfig | None = Field(None, description="Stop early on an eval metric.")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Seed of this stage; default: the recipe's seed.")

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        return self


class SFTConfig(TrainConfig):
    """An SFT stage on the chosen responses before preference training (as in the DPO paper)."""

    enabled: bool = Field(False, description="Run the SFT stage before preference training.")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate.")


DType = Literal["float32", "bfloat16", "float16"]


class MixedPrecisionConfig(_Strict):
    """FSDP2's mixed precision: the dtype parameters are gathered in for compute, and gradients reduced in."""

    param_dtype: DType | None = Field(None, description="Dtype of the gathered parameters in forward and backward; "
                                      "null: the stored dtype.")
    reduce_dtype: DType | None = Field(None, description="Dtype of the gradient reduce-scatter; null: param_dtype.")


class MeshConfig(_Strict):
    """A 2-D device mesh for HSDP: parameters sharded within a group of `shard` processes (one machine,
    say) and replicated across `replicate` such groups. `replicate * shard` must equal the number of processes."""

    replicate: int = Field(1, ge=1, description="Replica groups (gradients all-reduced across them).")
    shard: int = Field(ge=1, description="Processes each parameter is sharded over.")


# How long a collective waits for the other processes by default (torch's own is 30 minutes on CPU).
DEFAULT_TIMEOUT_S = 600.0


class DistributedConfig(_Strict):
    """How several processes (torchrun, or `alignkit run --nproc N`) share the training of every stage.

    In one process none of this changes anything.
    """

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: every process holds the whole model and optimizer, gradients are summed once "
        "per optimizer step; fsdp: FSDP2, each decoder block and the root sharded, so parameters, gradients and "
        "optimizer states are split over the processes."
    )
    reshard_after_forward: bool = Field(
        True, description="fsdp: free each block's gathered parameters after its forward and gather them again "
        "for backward (less memory, one more all-gather per block)."
    )
    mixed_precision: MixedPrecisionConfig | None = Field(
        None, description="fsdp: compute and reduce dtypes (bfloat16 on GPUs); null: follow train.precision "
        "(bf16: weights gathered in bfloat16, gradients reduced in float32; else the stored dtype)."
    )
    cpu_offload: bool = Field(
        False, description="fsdp on CUDA: keep sharded parameters, gradients and optimizer states in CPU memory."
    )
    mesh: MeshConfig | None = Field(None, description="fsdp: a 2-D (replicate x shard) mesh (HSDP); null: "
                                    "one dimension, sharded over every process.")
    timeout_s: float = Field(
        DEFAULT_TIMEOUT_S, gt=0, le=86400, description="How long a process waits at a collective for the others before the run "
        "stops with an error naming the process that stopped answering (frozen, stopped or killed). Raise it when "
        "one process legitimately works alone for longer (saving a large checkpoint)."
    )

    @model_validator(mode="after")
    def _fsdp_only(self) -> DistributedConfig:
        if self.strategy != "fsdp":
            for name in ("mixed_precision", "mesh"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies to strategy fsdp only (strategy is {self.strategy!r})")
            if self.cpu_offload:
                raise ValueError(f"cpu_offload applies to strategy fsdp only (strategy is {self.strategy!r})")
        return self
