"""Batched, seeded sampling of completions from a causal LM.

Every completion keeps its token ids so that log-probabilities (KL to a reference, rewards from a
reward model) can be computed on exactly the tokens that were sampled, without re-tokenizing text.

End of sequence: when the model emits its EOS token the EOS id is *kept* as the last entry of
``completion_ids`` (the decision to stop is part of the sampled sequence, so a sample-based KL counts it)
and left out of ``text``. A completion that hit ``max_new_tokens`` has ``finished=False`` and no EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import PretrainedConfig

from alignkit.models.continuous import decode_continuous
from alignkit.models.decode import DecodeStats, decode, row_uniforms
from alignkit.models.flops import forward_flops, matmul_parameters, matmul_weight_bytes
from alignkit.models.reference import eval_mode
from alignkit.models.sampling import Sampling
from alignkit.progress import ProgressFn
from alignkit.timing import count_flops, count_weight_reads, timed

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
        sampler_logps: the sampler's log-prob of each completion token (the distribution it was drawn from),
            or None when not recorded.
    """

    prompt_index: int
    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    finished: bool = False
    sampler_logps: list[float] | None = None

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


@timed("generation")
@torch.inference_mode()
def generate_completions(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    sampling: Sampling | None = None,
    *,
    progress: ProgressFn | None = None,
    uniforms: torch.Tensor | None = None,
    **changes: Any,
) -> list[Completion]:
    """Sample ``sampling.samples_per_prompt`` completions for every prompt.

    Sampling is plain ancestral sampling with ``temperature`` and ``top_p`` only (no top-k, no repetition
    penalty, whatever the model's generation config says), so with ``temperature=1, top_p=1`` the samples
    follow the model's own distribution, as the sample-based KL estimate requires. ``temperature=0`` is greedy.
    The loop is :func:`alignkit.models.continuous.decode_continuous` (``sampling.continuous_batching``, the
    default: a finished row is replaced by a waiting prompt) or :func:`alignkit.models.decode.decode` (one batch
    after the other): rows sorted by prompt length, finished rows dropped, a preallocated key/value cache.

    Reproducibility: completion r (prompt-major: prompt r // K, sample r % K) draws its tokens from its own
    stream, seeded by (``seed``, r). The same seed and prompts give the same completions whatever the batch
    size (up to float rounding of a different batch shape, see the decode module), and the caller's RNG is
    never touched.

    Args:
        model: a transformers causal LM.
        tokenizer: its tokenizer; needs a pad or an EOS token.
        prompts: P user requests.
        sampling: the sampling settings (default :class:`Sampling`()).
        progress: optional ``fn(done, total)`` called as completions finish.
        uniforms: (P * K, max_new_tokens) draws to use instead of the per-row streams (online rollouts give
            each prompt group its own stream).
        **changes: settings of ``sampling`` to change for this call (``max_new_tokens=8``...).

    Returns:
        P * K completions, prompt-major: the K completions of prompt 0, then of prompt 1, ...

    Raises:
        TypeError: ``model`` is not a transformers model (it has no ``config``).
    """
    if not isinstance(getattr(model, "config", None), PretrainedConfig):
        raise TypeError(f"{type(model).__name__} is not a transformers causal LM (no config): sampling needs one")
    sampling = (sampling or Sampling()).but(**changes)
    max_new_tokens = sampling.max_new_tokens

    chat = uses_chat_template(tokenizer, sampling.use_chat_template)
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    prompt_ids = [format_prompt(tokenizer, p, chat) for p in prompts]
    # One row per completion: prompt i repeated K times.
    rows = [i for i in range(len(prompts)) for _ in range(sampling.samples_per_prompt)]
    if uniforms is None:
        uniforms = torch.stack([row_uniforms(sampling.seed, r, max_new_tokens) for r in range(len(rows))]) \
            if rows else torch.zeros((0, max_new_tokens), dtype=torch.float64)
    stats = DecodeStats()
    sampler_logps: list[list[float]] = []
    with eval_mode(model):
        loop = decode_continuous if sampling.continuous_batching else decode
        decoded = loop(model, [prompt_ids[i] for i in rows], uniforms, max_new_tokens=max_new_tokens,
                       temperature=sampling.temperature, top_p=sampling.top_p, eos_ids=eos_ids, pad_id=pad_id,
                       batch_size=sampling.batch_size, stats=stats, token_logps=sampler_logps,
                       on_batch=None if progress is None else lambda done: progress(done, len(rows)))
    out: list[Completion] = []
    for i, (ids, finished), logps in zip(rows, decoded, sampler_logps, strict=True):
        text = tokenizer.decode(ids[:-1] if finished else ids, skip_special_tokens=False)
        out.append(Completion(i, text, list(prompt_ids[i]), ids, finished, logps))
    # Each prompt token and each sampled token passes the model once (the KV cache holds the rest); each
    # forward reads every weight once.
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    count_flops(forward_flops(matmul_parameters(model), stats.prompt_tokens + stats.new_tokens), dtype)
    count_weight_reads(stats.forwards * matmul_weight_bytes(model), stats.new_tokens)
    return out
