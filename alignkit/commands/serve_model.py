"""The model behind `alignkit serve`: a causal LM answering one chat request at a time.

:class:`ChatModel` renders the conversation (the tokenizer's chat template, else "role: content" lines),
keeps the prompt within the model's context, samples with the request's settings through the project's one
decoding loop (:func:`alignkit.models.decode.decode`: a seed fixes the request's own stream of uniforms, so
the global RNG is never touched), and stops early when the client is gone (:class:`GenerationCancelled`).
:meth:`ChatModel.complete` answers a plain completion (token ids in, ``n`` samples with their token ids and
log-probs out) from a named weights version (:mod:`alignkit.commands.serve_weights`); the ``n`` samples of a
seed draw from the same stream as an online rollout's prompt group (:func:`alignkit.online.rollout.group_uniforms`).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignkit.commands.serve_requests import DEFAULT_MAX_TOKENS, RequestError
from alignkit.commands.serve_weights import WeightVersions
from alignkit.models.decode import decode, row_uniforms
from alignkit.models.generate import SupportsGenerate, eos_token_ids
from alignkit.online.rollout import group_uniforms

__all__ = ["ChatModel", "GenerationCancelled"]


class GenerationCancelled(Exception):
    """The client went away: generation stopped (or never started) after ``generated`` tokens."""

    def __init__(self, generated: int) -> None:
        super().__init__(f"cancelled after {generated} generated tokens")
        self.generated = generated


def _plain_chat(messages: list[dict[str, str]]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant:"


class ChatModel:
    """A causal LM answering chat requests, one at a time.

    Args:
        model: the causal LM.
        tokenizer: its tokenizer (chat template used when it has one, else "role: content" lines).
        name: the model id reported by ``/v1/models`` and in answers.
        max_tokens: the most tokens one request may generate; capped below the model's context (when
            its config names one), so that a prompt token always fits.
        weights_root: the folder weight-loading requests may read from (None: loading is refused).
        max_adapters: LoRA versions kept at once.

    Attributes:
        max_tokens: the effective maximum.
        max_positions: the model's context in tokens, or None when its config does not say.

    Raises:
        ValueError: ``max_tokens`` is below 1.
        TypeError: ``model`` has no ``generate`` method.
    """

    def __init__(self, model: nn.Module, tokenizer, name: str, *, max_tokens: int = 1024,
                 weights_root: Path | None = None, max_adapters: int = 4) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if not isinstance(model, SupportsGenerate):
            raise TypeError(f"{type(model).__name__} has no generate(): serving needs a causal LM with "
                            "transformers' generate API")
        self.model = model
        self.tokenizer = tokenizer
        self.weights = WeightVersions(model, name, weights_root=weights_root, max_adapters=max_adapters)
        self.eos_ids = eos_token_ids(model, tokenizer)
        config = getattr(model, "config", None)
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_tokens = min(max_tokens, self.max_positions - 1) if self.max_positions else max_tokens
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The name of the base (or last fully reloaded) weights: what chat answers report."""
        return self.weights.base_name

    @property
    def vocab_size(self) -> int:
        """Token ids of a prompt must be below this."""
        return int(self.model.get_output_embeddings().weight.shape[0])  # type: ignore[operator]

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation followed by the assistant's turn.

        Raises:
            RequestError: the chat template refuses the conversation (e.g. roles out of order).
        """
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as err:  # noqa: BLE001 - jinja's TemplateError and whatever the template raises
                raise RequestError(f"the model's chat template refuses these messages: {err}") from None
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(_plain_chat(messages))["input_ids"])

    @torch.inference_mode()
    def chat(self, messages: list[dict[str, str]], *, max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 1.0,
             top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
             cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
        """One completion: ``{"text", "finish_reason", "prompt_tokens", "completion_tokens"}``.

        Args:
            messages: ``{"role", "content"}`` dicts.
            max_tokens: the most tokens generated, at most :attr:`max_tokens`.
            temperature: 0 (or below :data:`~alignkit.models.sampling.GREEDY_BELOW_TEMPERATURE`) for greedy
                decoding.
            top_p: nucleus mass.
            seed: sampling seed (the global RNG state is restored afterwards).
            stop: strings that end the answer (cut from the text).
            cancelled: polled while waiting for the model and between generated tokens; True stops.

        Raises:
            RequestError: ``max_tokens`` above the maximum, or messages the chat template refuses.
            GenerationCancelled: ``cancelled()`` turned True.
        """
        ids = self._prompt_in_context(messages, max_tokens)
        gone = False

        def stop_when_gone() -> bool:  # polled by the decoding loop after each new token
            nonlocal gone
            gone = gone or bool(cancelled is not None and cancelled())
            return gone

        with self._turn(cancelled), self.weights.selected(self.name) as model:
            [(new, _)] = self._decode(model, ids, 1, max_tokens, row_uniforms(self._seed(seed), 0, max_tokens)[None],
                                      temperature, top_p, stop_when_gone, [])
        if gone:
            raise GenerationCancelled(len(new))
        return self._answer(new, stop, prompt_tokens=len(ids))

    def _prompt_in_context(self, messages: list[dict[str, str]], max_tokens: int) -> list[int]:
        """The prompt's ids, cut from the left so that ``max_tokens`` more fit the model's context."""
        if not 1 <= max_tokens <= self.max_tokens:
            raise RequestError(f"'max_tokens' must be between 1 and {self.max_tokens} (this server's maximum"
                               + (f"; the model's context is {self.max_positions} tokens" if self.max_positions else "")
                               + ")")
        ids = self.prompt_ids(messages)
        if self.max_positions:
            ids = ids[-(self.max_positions - max_tokens):]  # keep the end: the latest turn and the reply slot
        return ids

    @contextmanager
    def _turn(self, cancelled: Callable[[], bool] | None) -> Iterator[None]:
        """Hold the model; while waiting for it, poll ``cancelled`` so that a client gone leaves the queue."""
        if cancelled is None:
            self._lock.acquire()
        else:
            while not self._lock.acquire(timeout=0.05):
                if cancelled():
                    raise GenerationCancelled(0)
        try:
            yield
        finally:
            self._lock.release()

    @staticmethod
    def _seed(seed: int | None) -> int:
        """Without a seed a request draws a fresh one, so two unseeded requests sample independently."""
        return secrets.randbits(63) if seed is None else seed

    def _decode(self, model: nn.Module, ids: list[int], n: int, max_tokens: int, uniforms: torch.Tensor,
                temperature: float, top_p: float, stop: Callable[[], bool],
                logps: list[list[float]]) -> list[tuple[list[int], bool]]:
        """``n`` samples after the prompt ``ids``, by the decoding loop every completion uses; ``logps`` is filled
        with each sampled token's log-prob."""
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        return decode(model, [ids] * n, uniforms, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                      eos_ids=self.eos_ids, pad_id=pad_id, batch_size=n, stop=stop, token_logps=logps)

    @torch.inference_mode()
    def complete(self, prompt: str | list[int], *, model: str | None = None, n: int = 1,
                 max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None, cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
        """``n`` samples of one prompt from the weights version ``model``.

        Row r draws its uniforms from row r of :func:`~alignkit.online.rollout.group_uniforms` of ``seed``, so a
        trainer that sends a prompt group's seed gets the samples its own decoding loop would draw.

        Args:
            prompt: text (tokenized as is, with the tokenizer's special tokens) or token ids.
            model: the weights version (None: the base weights).
            n: samples.
            max_tokens: tokens sampled per completion at most; the prompt is never cut: it must fit the context.
            temperature, top_p, seed: as for :meth:`chat`.
            cancelled: polled while waiting for the model and between tokens; True stops.

        Returns:
            ``{"model": the version that answered, "prompt_tokens": int, "choices": [{"token_ids", "logprobs",
            "text", "finish_reason"}]}``; token ids end with the EOS id when the sample stopped there.

        Raises:
            RequestError: an unknown version, or a prompt that leaves no room for ``max_tokens``.
            GenerationCancelled: ``cancelled()`` turned True.
        """
        ids = list(self.tokenizer(prompt)["input_ids"]) if isinstance(prompt, str) else list(prompt)
        if not 1 <= max_tokens <= self.max_tokens:
            raise RequestError(f"'max_tokens' must be between 1 and {self.max_tokens} (this server's maximum)")
        if self.max_positions and len(ids) + max_tokens > self.max_positions:
            raise RequestError(f"the prompt's {len(ids)} tokens and 'max_tokens' {max_tokens} exceed the model's "
                               f"context of {self.max_positions} tokens")
        gone = False

        def stop_when_gone() -> bool:
            nonlocal gone
            gone = gone or bool(cancelled is not None and cancelled())
            return gone

        logps: list[list[float]] = []
        with self._turn(cancelled):
            version = self.weights.resolve(model)
            with self.weights.selected(version) as served:
                rows = self._decode(served, ids, n, max_tokens, group_uniforms(self._seed(seed), n, max_tokens),
                                    temperature, top_p, stop_when_gone, logps)
        if gone:
            raise GenerationCancelled(max(len(new) for new, _ in rows))
        choices = [{"token_ids": new, "logprobs": row_logps, "finish_reason": "stop" if finished else "length",
                    "text": self.tokenizer.decode(new[:-1] if finished else new, skip_special_tokens=True)}
                   for (new, finished), row_logps in zip(rows, logps, strict=True)]
        return {"model": version, "prompt_tokens": len(ids), "choices": choices}

    def load_lora(self, lora_name: Any, lora_path: Any) -> str:
        """:meth:`WeightVersions.load_lora` between requests."""
        with self._turn(None):
            return self.weights.load_lora(lora_name, lora_path)

    def load_full(self, model_name: Any, model_path: Any) -> str:
        """:meth:`WeightVersions.load_full` between requests."""
        with self._turn(None):
            return self.weights.load_full(model_name, model_path)

    def _answer(self, new: list[int], stop: list[str] | None, *, prompt_tokens: int) -> dict[str, Any]:
        """The reply text, cut at the first end-of-sequence token and at the first stop string."""
        finish = "length"
        for pos, token in enumerate(new):
            if token in self.eos_ids:
                new, finish = new[:pos], "stop"
                break
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for s in stop or []:
            if s and s in text:
                text, finish = text[: text.index(s)], "stop"
        return {"text": text, "finish_reason": finish, "prompt_tokens": prompt_tokens, "completion_tokens": len(new)}
