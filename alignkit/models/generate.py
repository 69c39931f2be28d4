"""Batched, seeded sampling of completions from a causal LM.

Every completion keeps its token ids so that log-probabilities (KL to a reference, rewards from a
reward model) can be computed on exactly the tokens that were sampled, without re-tokenizing text.

End of sequence: when the model emits its EOS token the EOS id is *kept* as the last entry of
``completion_ids`` (the decision to stop is part of the sampled sequence, so a sample-based KL counts it)
and left out of ``text``. A completion that hit ``max_new_tokens`` has ``finished=False`` and no EOS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from alignkit.models.flops import forward_flops, matmul_parameters
from alignkit.models.reference import eval_mode
from alignkit.models.sampling import Sampling
from alignkit.timing import count_flops, timed

__all__ = [
    "Completion",
    "ProgressFn",
    "Sampling",
    "SupportsGenerate",
    "eos_token_ids",
    "eval_mode",
    "format_prompt",
    "generate_completions",
    "uses_chat_template",
]

# Called after each generation batch with (completions done, completions in total).
ProgressFn = Callable[[int, int], None]


@runtime_checkable
class SupportsGenerate(Protocol):
    """A model with transformers' ``generate`` (a ``GenerationMixin`` model, or a wrapper that forwards it)."""

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """(B, T + new) ids: each prompt row followed by its generated tokens (``return_dict_in_generate`` off)."""
        ...


@dataclass
class Completion:
    """One sampled completion.

    Attributes:
        prompt_index: index of its prompt in the list given to :func:`generate_completions`.
        text: the decoded completion, without the EOS token.
        prompt_ids: the prompt's token ids as the model saw them (chat template applied, no padding).
        completion_ids: the sampled token ids, ending with the EOS id when ``finished``.
        finished: whether the model stopped by emitting EOS (False: cut at ``max_new_tokens``).
    """

    prompt_index: int
    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    finished: bool = False

    @property
    def num_tokens(self) -> int:
        """Completion length in tokens (EOS included)."""
        return len(self.completion_ids)


def uses_chat_template(tokenizer, use_chat_template: bool | None = None) -> bool:
    """Resolve ``use_chat_template``: None means "when the tokenizer has one"."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template is None:
        return has_template
    if use_chat_template and not has_template:
        raise ValueError("use_chat_template=True but the tokenizer has no chat_template")
    return use_chat_template


def format_prompt(tokenizer, prompt: str, use_chat_template: bool) -> list[int]:
    """Token ids of ``prompt``: a single user turn plus the assistant header, or the raw text.

    Args:
        tokenizer: a Hugging Face tokenizer.
        prompt: the user's request.
        use_chat_template: render it as ``[{"role": "user", "content": prompt}]`` with the generation
            prompt appended; otherwise tokenize the text as is (with the tokenizer's special tokens).
    """
    if use_chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        # The template already holds every special token; adding BOS again would shift the prompt.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise ValueError(f"prompt {prompt!r} tokenizes to nothing")
    return list(ids)


def eos_token_ids(model: nn.Module, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the model's generation config EOS."""
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, config_eos):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an EOS token")
    return ids


def _split_completion(row: list[int], eos_ids: list[int]) -> tuple[list[int], bool]:
    """Cut a generated row after its first EOS (padding follows it). Returns (ids, finished)."""
    for pos, token in enumerate(row):
        if token in eos_ids:
            return row[: pos + 1], True
    return row, False


@timed("generation")
@torch.inference_mode()
def generate_completions(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    sampling: Sampling | None = None,
    *,
    progress: ProgressFn | None = None,
    generation_kwargs: dict[str, Any] | None = None,
    **changes: Any,
) -> list[Completion]:
    """Sample ``sampling.samples_per_prompt`` completions for every prompt.

    Prompts are left-padded (here, by hand: the tokenizer's ``padding_side`` is never changed) so that
    all rows of a batch end at the same position and generation starts together. Sampling is plain ancestral
    sampling with ``temperature`` and ``top_p`` only (no top-k, no repetition penalty, whatever the model's
    generation config says), so with ``temperature=1, top_p=1`` the samples follow the model's own
    distribution, as the sample-based KL estimate requires. ``temperature=0`` is greedy decoding.

    Reproducibility: the global torch RNG is seeded with ``seed + batch_number`` inside a forked RNG
    state, so the same seed, prompts and batch size give the same completions (on the same device) and
    the caller's RNG stream is left untouched.

    Args:
        model: a causal LM (``generate`` API).
        tokenizer: its tokenizer; needs a pad or an EOS token.
        prompts: P user requests.
        sampling: the sampling settings (default :class:`Sampling`()).
        progress: optional ``fn(done, total)`` called after each batch.
        generation_kwargs: extra ``generate`` options (e.g. ``{"cache_implementation": "static"}``);
            they cannot override the sampling settings.
        **changes: settings of ``sampling`` to change for this call (``max_new_tokens=8``...).

    Returns:
        P * K completions, prompt-major: the K completions of prompt 0, then of prompt 1, ...

    Raises:
        TypeError: ``model`` has no ``generate`` method.
    """
    if not isinstance(model, SupportsGenerate):
        raise TypeError(f"{type(model).__name__} has no generate(): sampling needs a causal LM with transformers' "
                        "generate API")
    sampling = (sampling or Sampling()).but(**changes)
    max_new_tokens, temperature, top_p = sampling.max_new_tokens, sampling.temperature, sampling.top_p
    batch_size, seed, use_chat_template = sampling.batch_size, sampling.seed, sampling.use_chat_template

    chat = uses_chat_template(tokenizer, use_chat_template)
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    prompt_ids = [format_prompt(tokenizer, p, chat) for p in prompts]
    # One row per completion: prompt i repeated K times, so a batch is any run of rows.
    rows = [i for i in range(len(prompts)) for _ in range(sampling.samples_per_prompt)]
    device = next(model.parameters()).device

    sample_kwargs: dict[str, bool | float] = {"do_sample": False}
    if temperature > 0:
        sample_kwargs = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}

    out: list[Completion] = []
    with eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for batch_number, start in enumerate(range(0, len(rows), batch_size)):
            batch_rows = rows[start : start + batch_size]
            width = max(len(prompt_ids[i]) for i in batch_rows)
            # Left padding: (B, width) ids and mask; real tokens are flush right.
            input_ids = torch.full((len(batch_rows), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch_rows), width), dtype=torch.long)
            for r, i in enumerate(batch_rows):
                ids = prompt_ids[i]
                input_ids[r, width - len(ids) :] = torch.tensor(ids)
                attention_mask[r, width - len(ids) :] = 1
            torch.manual_seed(seed + batch_number)
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=eos_ids,
                repetition_penalty=1.0,
                no_repeat_ngram_size=0,
                **{**(generation_kwargs or {}), **sample_kwargs},
            )
            new_tokens = generated[:, width:].tolist()  # (B, <= max_new_tokens)
            for r, i in enumerate(batch_rows):
                ids, finished = _split_completion(new_tokens[r], eos_ids)
                text_ids = ids[:-1] if finished else ids
                text = tokenizer.decode(text_ids, skip_special_tokens=False)
                out.append(Completion(i, text, list(prompt_ids[i]), ids, finished))
            if progress is not None:
                progress(len(out), len(rows))
    # Each prompt token and each sampled token passes the model once (the KV cache holds the rest).
    tokens = sum(len(c.prompt_ids) + c.num_tokens for c in out)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    count_flops(forward_flops(matmul_parameters(model), tokens), dtype)
    return out
