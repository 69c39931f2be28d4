"""The ``/v1/completions`` answer of `alignkit serve`, in the shape vLLM's OpenAI-compatible server gives it.

A choice carries ``logprobs`` (``tokens``, ``token_logprobs``, ``text_offset``, ``top_logprobs``) when the
request set ``logprobs``; its ``tokens`` are ``"token_id:<id>"`` strings with ``return_tokens_as_token_ids``
(vLLM's spelling, so a client reads the ids back without the tokenizer) and the decoded tokens otherwise.
``return_token_ids`` adds the choice's ``token_ids`` and the answer's ``prompt_token_ids`` is left out (the
client sent them). ``model`` names the weights version that produced every choice.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

__all__ = ["text_completion"]


def _logprobs(choice: dict[str, Any], tokens_as_ids: bool, tokenizer: Any) -> dict[str, Any]:
    ids: list[int] = choice["token_ids"]
    tokens = [f"token_id:{i}" for i in ids] if tokens_as_ids else [tokenizer.decode([i]) for i in ids]
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {"tokens": tokens, "token_logprobs": list(choice["logprobs"]), "text_offset": offsets,
            "top_logprobs": [{token: logp} for token, logp in zip(tokens, choice["logprobs"], strict=True)]}


def text_completion(result: dict[str, Any], request: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """The completion object of one :meth:`~alignkit.commands.serve_model.ChatModel.complete` result.

    Args:
        result: what ``complete`` returned.
        request: the parsed request (:func:`~alignkit.commands.serve_requests.parse_completion_request`).
        tokenizer: decodes tokens when they are not sent as ids.
    """
    choices = []
    for index, choice in enumerate(result["choices"]):
        out: dict[str, Any] = {"index": index, "text": choice["text"], "finish_reason": choice["finish_reason"],
                               "stop_reason": None, "logprobs": None}
        if request["logprobs"]:
            out["logprobs"] = _logprobs(choice, request["tokens_as_ids"], tokenizer)
        if request["token_ids"]:
            out["token_ids"] = list(choice["token_ids"])
        choices.append(out)
    completion_tokens = sum(len(c["token_ids"]) for c in result["choices"])
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": result["model"],
        "choices": choices,
        "usage": {"prompt_tokens": result["prompt_tokens"], "completion_tokens": completion_tokens,
                  "total_tokens": result["prompt_tokens"] + completion_tokens},
    }
