"""Rollouts from an inference server: vLLM's OpenAI-compatible contract, spoken over real HTTP.

For every prompt group the engine sends ``POST /v1/completions`` with the prompt's token ids, ``n`` = samples per
prompt, the group's seed, ``logprobs: 0`` and ``return_tokens_as_token_ids: true``, and ``model`` = the weights
version it must come from; the answer gives each sample's token ids (``"token_id:<id>"``) and the sampler's
log-prob of each. After updates the engine saves the weights under ``weights_dir`` and has the server load
them under a new name (``POST /v1/load_lora_adapter`` for a LoRA adapter in PEFT's format, as vLLM does;
``POST /v1/load_weights`` for every weight, as `alignkit serve` does). The server must read that folder (same
machine or a shared file system).

Anything off stops the run with a :class:`RolloutServerError` (a ``ValueError``: one line, exit 2): a server that
does not answer, an HTTP error, an answer from another weights version than the one asked for, missing,
malformed, out-of-range or non-finite token ids or log-probs. The API key (``api_key_env``) goes to the
configured URL only: redirects are not followed and proxies are not used.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from alignkit.jsonio import to_json
from alignkit.models.generate import Completion, format_prompt, uses_chat_template
from alignkit.models.sampling import Sampling
from alignkit.online.rollout import group_seed
from alignkit.online.rollout_config import RolloutConfig
from alignkit.peft import export_peft_lora, has_adapters

__all__ = ["MAX_RESPONSE_BYTES", "RolloutServerError", "ServerEngine", "parse_choice"]

MAX_RESPONSE_BYTES = 64 << 20  # an answer larger than this is not a completion of a rollout
_TOKEN_ID = "token_id:"
_CONCURRENT_REQUESTS = 8  # prompt groups in flight at once: a batching server (vLLM) batches them


class RolloutServerError(ValueError):
    """The rollout server failed, or answered something the run cannot train on."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: the API key must not follow it to another address."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - the stdlib's signature
        raise urllib.error.HTTPError(req.full_url, code, f"redirected to {newurl}; not followed", headers, fp)


def parse_choice(choice: Any, *, max_tokens: int, vocab_size: int, eos_ids: Sequence[int],
                 where: str) -> tuple[list[int], list[float], bool]:
    """``(token_ids, sampler_logps, finished)`` of one choice of a completions answer.

    Raises:
        RolloutServerError: missing fields, ids that are not ``"token_id:<id>"`` in the vocabulary, log-probs
            that are not finite numbers <= 0, lengths that disagree or pass ``max_tokens``, or a stop that is not
            an EOS token.
    """
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
    values = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list) or not isinstance(values, list):
        raise RolloutServerError(f"{where}: no logprobs.tokens / logprobs.token_logprobs in the answer (the server "
                                 "must honour logprobs and return_tokens_as_token_ids)")
    ids = []
    for token in tokens:
        text = token if isinstance(token, str) else ""
        digits = text.removeprefix(_TOKEN_ID)
        if not text.startswith(_TOKEN_ID) or not digits.isascii() or not digits.isdigit() or int(digits) >= vocab_size:
            raise RolloutServerError(f"{where}: token {str(token)[:40]!r} is not 'token_id:<id>' with an id below "
                                     f"{vocab_size}")
        ids.append(int(digits))
    if not 1 <= len(ids) <= max_tokens or len(values) != len(ids):
        raise RolloutServerError(f"{where}: {len(ids)} tokens and {len(values)} log-probs (expected the same "
                                 f"number, 1 to {max_tokens})")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value > 1e-6:
            raise RolloutServerError(f"{where}: log-prob {value!r} is not a finite number <= 0")
    finish = choice.get("finish_reason")
    if finish not in ("stop", "length"):
        raise RolloutServerError(f"{where}: finish_reason {finish!r} is neither 'stop' nor 'length'")
    finished = ids[-1] in eos_ids
    if finish == "stop" and not finished:
        raise RolloutServerError(f"{where}: stopped without an EOS token (a stop string?); rollouts need samples "
                                 "that end at EOS or at max_tokens")
    return ids, [float(v) for v in values], finished


class ServerEngine:
    """Rollouts from an OpenAI-compatible completions server that loads the policy's weights by name.

    Args:
        cfg: ``online.rollout`` (engine server).
        tokenizer: the policy's tokenizer (prompts are sent as its token ids; texts are decoded with it).
        sampling: the rollout sampling settings (``samples_per_prompt``, ``max_new_tokens``, ``temperature``).
        seed: the run's seed (each group's request seed is :func:`~alignkit.online.rollout.group_seed`).
        weights_dir: where the weights are saved for the server to load.
        stage: part of every version's name (WARP's runs load their own versions).
        vocab_size: token ids must be below it.
        eos_ids: ids that end a completion.
    """

    def __init__(self, cfg: RolloutConfig, tokenizer, sampling: Sampling, *, seed: int, weights_dir: Path, stage: str,
                 vocab_size: int, eos_ids: Sequence[int]) -> None:
        assert cfg.url is not None  # RolloutConfig requires it with engine: server
        self.cfg, self.tokenizer, self.sampling, self.seed = cfg, tokenizer, sampling, seed
        self.base_url = cfg.url.rstrip("/").removesuffix("/v1")
        self.weights_dir, self.stage = Path(weights_dir), stage
        self.vocab_size, self.eos_ids = vocab_size, list(eos_ids)
        self.chat = uses_chat_template(tokenizer, sampling.use_chat_template)
        self.synced: int | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self._headers = {"Content-Type": "application/json"}
        if cfg.api_key_env is not None:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise RolloutServerError(f"online.rollout.api_key_env: ${cfg.api_key_env} is not set")
            self._headers["Authorization"] = f"Bearer {key}"

    def version(self, weights_step: int) -> str:
        """The server-side name of the weights after ``weights_step`` updates."""
        return f"{self.cfg.model_name}-{self.stage}-step{weights_step}"

    # -----------------------------------------------------------------------------------------------------
    def _post(self, route: str, body: dict[str, Any]) -> Any:
        """POST ``body`` to the server; its JSON answer, or a :class:`RolloutServerError` that says why not."""
        url = f"{self.base_url}/v1/{route}"
        request = urllib.request.Request(url, data=to_json(body, indent=None).encode(), headers=self._headers,
                                         method="POST")
        try:
            with self._opener.open(request, timeout=self.cfg.timeout_s) as answer:
                data = answer.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as err:
            detail = err.read(2000).decode("utf-8", "replace") if err.fp is not None else ""
            raise RolloutServerError(f"rollout server {url} answered {err.code}: {_message(detail) or err.reason}") \
                from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise RolloutServerError(f"rollout server {url} did not answer: {reason} (is it running? "
                                     f"online.rollout.timeout_s={self.cfg.timeout_s:g})") from None
        if len(data) > MAX_RESPONSE_BYTES:
            raise RolloutServerError(f"rollout server {url}: answer over {MAX_RESPONSE_BYTES} bytes")
        try:
            return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as err:
            raise RolloutServerError(f"rollout server {url}: the answer is not JSON ({str(err)[:100]})") from None

    def sample(self, prompts: Sequence[str], indices: Sequence[int], *, step: int,
               weights_step: int) -> list[Completion]:
        version = self.version(weights_step)
        prompt_ids = [format_prompt(self.tokenizer, p, self.chat) for p in prompts]
        with ThreadPoolExecutor(max_workers=_CONCURRENT_REQUESTS) as pool:
            groups = list(pool.map(lambda i: self._group(i, prompt_ids[i], group_seed(self.seed, step, indices[i]),
                                                         version), range(len(prompts))))
        return [c for group in groups for c in group]

    def _group(self, prompt_index: int, prompt_ids: list[int], seed: int, version: str) -> list[Completion]:
        """The samples of one prompt, checked."""
        s, k = self.sampling, self.sampling.samples_per_prompt
        answer = self._post("completions", {
            "model": version, "prompt": prompt_ids, "n": k, "max_tokens": s.max_new_tokens,
            "temperature": s.temperature, "top_p": s.top_p, "seed": seed, "logprobs": 0,
            "return_tokens_as_token_ids": True})
        where = f"rollout server {self.base_url}"
        if not isinstance(answer, dict) or answer.get("model") != version:
            got = answer.get("model") if isinstance(answer, dict) else None
            raise RolloutServerError(f"{where} answered with weights version {got!r}, not {version!r}: these samples "
                                     "come from another policy")
        choices = answer.get("choices")
        if not isinstance(choices, list) or len(choices) != k:
            raise RolloutServerError(f"{where}: {len(choices) if isinstance(choices, list) else 'no'} choices for "
                                     f"n={k}")
        out = []
        for j, choice in enumerate(choices):
            ids, logps, finished = parse_choice(choice, max_tokens=s.max_new_tokens, vocab_size=self.vocab_size,
                                                eos_ids=self.eos_ids, where=f"{where} (choice {j})")
            text = self.tokenizer.decode(ids[:-1] if finished else ids, skip_special_tokens=False)
            out.append(Completion(prompt_index, text, list(prompt_ids), ids, finished, logps))
        return out

    # -----------------------------------------------------------------------------------------------------
    def sync(self, policy: nn.Module, weights_step: int) -> None:
        """Save the policy's weights and have the server load them as :meth:`version` ``(weights_step)``."""
        folder = self.weights_dir / f"step{weights_step}"
        version = self.version(weights_step)
        if self._mode(policy) == "lora":
            export_peft_lora(policy, folder, base_model_name=str(getattr(policy.config, "_name_or_path", "") or "base"))
            self._post("load_lora_adapter", {"lora_name": version, "lora_path": str(folder.resolve())})
        else:
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            tensors = {name: p.detach().contiguous().cpu() for name, p in policy.named_parameters()}
            save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
            self._post("load_weights", {"model_name": version, "model_path": str(folder.resolve())})
        for old in self.weights_dir.glob("step*"):  # the server holds them now; keep the last two on disk
            if old.name not in (folder.name, f"step{weights_step - 1}"):
                shutil.rmtree(old, ignore_errors=True)
        self.synced = weights_step

    def _mode(self, policy: nn.Module) -> str:
        lora = has_adapters(policy)
        mode = self.cfg.weights or ("lora" if lora else "full")
        if mode == "lora" and not lora:
            raise RolloutServerError("online.rollout.weights is 'lora' but the policy has no LoRA adapter "
                                     "(set adapter.kind: lora, or weights: full)")
        if mode == "full" and lora:
            raise RolloutServerError("online.rollout.weights is 'full' but the policy trains a LoRA adapter; use "
                                     "weights: lora")
        return mode


def _message(detail: str) -> str:
    """The ``error.message`` of a JSON error body, else the body's first line."""
    try:
        data = json.loads(detail)
        message = data.get("error", {}).get("message") if isinstance(data.get("error"), dict) else data.get("message")
        if isinstance(message, str):
            return message[:300]
    except (ValueError, AttributeError):
        pass
    return detail.strip().splitlines()[0][:300] if detail.strip() else ""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
