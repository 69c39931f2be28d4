"""Where an online run's rollouts come from (``online.rollout``) and how far they may lag the trained weights
(``online.async``)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from alignkit.config_base import StrictConfig

__all__ = ["AsyncConfig", "RolloutConfig"]


class RolloutConfig(StrictConfig):
    """The engine that samples the rollouts: this process's decoding loop, or an inference server over HTTP."""

    engine: Literal["local", "server"] = Field(
        "local", description="local: the run's own decoding loop; server: an OpenAI-compatible completions server "
        "(vLLM, or `alignkit serve --allow-weights-from DIR`) that returns token ids and sampler log-probs and "
        "receives the weights after every update (docs/online.md).")
    url: str | None = Field(None, description="server only: the server's base URL, e.g. http://127.0.0.1:8000 "
                            "(a trailing /v1 may be given).")
    timeout_s: float = Field(300.0, gt=0, description="server only: seconds one HTTP request (a prompt's samples, "
                             "a weight load) may take before the run stops with an error.")
    api_key_env: str | None = Field(
        None, description="server only: environment variable holding the server's API key, sent as a bearer token "
        "to this URL only (redirects are not followed).")
    weights: Literal["lora", "full"] | None = Field(
        None, description="server only: how new weights reach the server after every update. lora: the LoRA "
        "adapter saved in PEFT's format and loaded under a new name (POST /v1/load_lora_adapter, as vLLM with "
        "--enable-lora); full: every weight saved as safetensors and reloaded (POST /v1/load_weights, alignkit "
        "serve). null: lora when the recipe trains a LoRA adapter, else full.")
    model_name: str = Field("policy", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$",
                            description="server only: prefix of the weights versions' names (<model_name>-<stage>-"
                            "step<N>); each answer must name the version asked for.")

    max_logp_mismatch: float | None = Field(
        None, gt=0, description="Stop before the update when a rollout sampled from the current weights has a mean "
        "|log pi_trainer - log pi_sampler| per token above this (samples of other weights than the version named); "
        "null: off. fp32 on this CPU: ~3e-7; a bf16 sampler: ~1e-2.")

    @model_validator(mode="after")
    def _url_for_a_server(self) -> RolloutConfig:
        if self.engine == "local":
            if self.url is not None:
                raise ValueError("online.rollout.url is set but engine is 'local'; set engine: server or remove url")
            return self
        if self.url is None:
            raise ValueError("online.rollout.url is required with engine: server")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"online.rollout.url: {self.url!r} is not an http(s) URL of a server")
        return self


class AsyncConfig(StrictConfig):
    """Sampling the next rollout while the current one trains."""

    max_staleness: int = Field(
        0, ge=0, le=1, description="0: every rollout comes from the current weights (sample, then train); 1: the "
        "next step's rollout is sampled while this step trains, so it comes from the weights one update old; the "
        "online.rollout_correction (required then: tis, mis or seq_mask) reweighs it against the sampler's "
        "log-probs, and rollout_staleness and the sampler mismatch are logged.")
