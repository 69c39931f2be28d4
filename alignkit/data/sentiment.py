"""Preference pairs from a reward: the controlled-sentiment protocol of the DPO paper, offline.

Prompts are written here: short, neutral requests (no sentiment built into the prompt) made by combining
task templates with everyday subjects. For each prompt the reference model samples K completions, a
reward function (VADER sentiment by default) scores them, and the best and worst become the chosen and
rejected responses. A fixed, hash-based split keeps evaluation prompts out of training.

Generation is the slow part, so the sampled completions are cached (one JSON line per prompt, written
atomically) under a key of the model's weights, the tokenizer, the prompts, the sampling settings and
the seed; a rerun only re-scores them (microseconds a text) and rebuilds the pairs, so the reward and
``min_reward_gap`` may change without generating again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from torch import nn

from alignkit.cache import cache_dir as default_cache_dir
from alignkit.data.config import DataConfig, SentimentSource
from alignkit.data.sources import PrepareContext, register_prepared_source
from alignkit.data.tokenize import tokenize_pairs
from alignkit.data.types import DataError, DropReport, PreferenceExample, PreparedData
from alignkit.models.generate import ProgressFn, Sampling, generate_completions, uses_chat_template
from alignkit.models.rewards import RewardFn, resolve_reward

__all__ = [
    "SENTIMENT_PROMPTS",
    "SENTIMENT_SUBJECTS",
    "SENTIMENT_TEMPLATES",
    "SMALL_GAP",
    "RewardPairs",
    "build_reward_pairs",
    "is_eval_prompt",
    "make_sentiment_pairs",
    "prepare_sentiment_data",
    "model_fingerprint",
    "sentiment_prompts",
]

log = logging.getLogger(__name__)

SENTIMENT_TEMPLATES: tuple[str, ...] = (
    "Write one line about {x}.",
    "Describe {x} in two lines.",
    "What do you think of {x}?",
    "Give a short review of {x}.",
    "Tell me about {x}.",
    "Write a short diary entry about {x}.",
    "Describe your morning with {x}.",
    "Write a text message to your brother about {x}.",
    "How would you describe {x} to a child?",
    "Write the opening line of a story about {x}.",
    "Write a quick thought about {x}.",
    "Write a short social media post about {x}.",
    "Explain what you noticed about {x} today.",
    "Write a haiku about {x}.",
    "Summarize your experience with {x} in one line.",
    "What comes to mind when you think of {x}?",
    "Write a postcard message mentioning {x}.",
    "Describe {x} as if you were a tour guide.",
    "Write a short note about {x} for your neighbor.",
    "Tell a short anecdote involving {x}.",
    "Compare {x} to last year in two lines.",
    "Describe the sound and look of {x}.",
    "Write a one-line caption for a photo of {x}.",
    "Continue this line: Yesterday, {x}",
    "Write a short product description for {x}.",
    "Describe a typical day involving {x}.",
    "Write a short letter to a cousin that mentions {x}.",
    "Give your opinion on {x}.",
    "Write a weather-style report about {x}.",
    "In a few words, how was {x}?",
    "Write a short poem about {x}.",
    "Describe {x} from the point of view of a cat.",
    "Write a brief news headline about {x}.",
    "Tell me what happened with {x} this week.",
    "Write a short reply to someone asking about {x}.",
    "Describe the first time you saw {x}.",
)

# Everyday things with no sentiment of their own (VADER scores every prompt 0); the model sets the tone.
SENTIMENT_SUBJECTS: tuple[str, ...] = (
    "the local library",
    "a train ride to work",
    "the kitchen table",
    "a new phone",
    "the neighborhood park",
    "a cup of tea",
    "the city bus",
    "an old bicycle",
    "the school cafeteria",
    "a visit to the post office",
    "the office printer",
    "a weekend at the beach",
    "the corner grocery store",
    "a cooking class",
    "the movie you watched last night",
    "a pair of running shoes",
    "the apartment upstairs",
    "a long walk in the city",
    "the hotel breakfast",
    "a video call with family",
    "the garden behind the house",
    "a history lecture",
    "the airport",
    "a birthday dinner",
    "the new coffee machine",
    "a museum exhibit",
    "the morning commute",
    "a book club meeting",
    "the neighbor's dog",
    "a camping trip",
    "the laundry room",
    "a software update",
    "the town square",
    "a team meeting",
    "the winter coat",
    "a road trip",
)

SENTIMENT_PROMPTS: tuple[str, ...] = tuple(t.format(x=s) for t, s in product(SENTIMENT_TEMPLATES, SENTIMENT_SUBJECTS))

# About one prompt in five is held out for evaluation.
_EVAL_BUCKETS = 5

# Drop reason used in the pairs' DropReport.
SMALL_GAP = "best-worst reward gap not above min_reward_gap"


def is_eval_prompt(prompt: str) -> bool:
    """Whether ``prompt`` belongs to the held-out evaluation split.

    Decided by a hash of the text alone, so a prompt's split never changes when templates or subjects
    are added, and no evaluation prompt can end up in training.
    """
    return hashlib.sha256(prompt.encode("utf-8")).digest()[0] % _EVAL_BUCKETS == 0


def sentiment_prompts(n: int | None = None, seed: int = 0, split: Literal["train", "eval"] = "train") -> list[str]:
    """``n`` prompts of one split, in a seeded random order.

    Args:
        n: how many; None for the whole split.
        seed: order of the shuffle (the same seed gives the same list).
        split: "train" (for making pairs) or "eval" (held out).

    Raises:
        ValueError: an unknown split, or more prompts asked for than the split holds.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    pool = [p for p in SENTIMENT_PROMPTS if is_eval_prompt(p) == (split == "eval")]
    random.Random(seed).shuffle(pool)
    if n is None:
        return pool
    if not 0 < n <= len(pool):
        raise ValueError(f"n must be in 1..{len(pool)} for the {split} split, got {n}")
    return pool[:n]


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def model_fingerprint(model: nn.Module, max_elements: int = 65536) -> str:
    """A stable id of a model's weights, cheap enough for a 135M-parameter model (~0.1 s).

    Hashes the class, the config, every tensor's name, shape and dtype, and the raw bytes of up to
    ``max_elements`` evenly strided elements of each tensor: any fine-tuning step changes it.
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // max_elements)
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(flat[::step].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _tokenizer_fingerprint(tokenizer) -> str:
    probe = "Hello world. <|im_end|> 123 é"
    return _sha(
        {
            "vocab": len(tokenizer),
            "template": getattr(tokenizer, "chat_template", None) or "",
            "probe": list(tokenizer(probe)["input_ids"]),
            "eos": tokenizer.eos_token_id,
        }
    )


@dataclass
class RewardPairs:
    """Preference pairs built from rewards, with what it took to build them.

    Attributes:
        pairs: best-versus-worst pairs, in prompt order.
        drops: prompts seen and prompts dropped (reason ``SMALL_GAP``).
        reward_name: the reward that scored the completions.
        mean_reward: mean reward over all sampled completions.
        mean_chosen_reward: mean reward of the kept chosen responses.
        mean_rejected_reward: mean reward of the kept rejected responses.
        mean_gap: mean chosen - rejected reward over kept pairs.
        from_cache: whether the completions were read from the cache rather than generated.
        seconds: wall time (generation + scoring, or loading + scoring).
        cache_path: the cache file, or None when caching was off.
        rewards: (P, K) reward of every completion, for inspection.
    """

    pairs: list[PreferenceExample]
    drops: DropReport
    reward_name: str
    mean_reward: float
    mean_chosen_reward: float
    mean_rejected_reward: float
    mean_gap: float
    from_cache: bool
    seconds: float
    cache_path: Path | None = None
    rewards: list[list[float]] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        source = "cached" if self.from_cache else "generated"
        return (
            f"{len(self.pairs)} pairs from {self.drops.seen} prompts ({source}, {self.seconds:.1f}s); "
            f"{self.drops.dropped} dropped for a small reward gap; {self.reward_name}: "
            f"chosen {self.mean_chosen_reward:+.3f}, rejected {self.mean_rejected_reward:+.3f}, "
            f"gap {self.mean_gap:.3f}, all samples {self.mean_reward:+.3f}"
        )


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write to a temporary sibling, then rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; it is an ordinary cache file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(path: Path, prompts: Sequence[str], k: int) -> list[list[str]] | None:
    """The cached (P, K) completion texts, or None when the file is missing or does not match."""
    if not path.exists():
        return None
    try:
        # split("\n"), not splitlines(): completions may hold U+2028 and other characters splitlines() breaks on
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        log.warning("ignoring unreadable pair cache %s: %s", path, err)
        return None
    texts = [row.get("completions") for row in rows[1:]]
    if len(texts) != len(prompts) or any(
        row.get("prompt") != p or not isinstance(t, list) or len(t) != k
        for row, p, t in zip(rows[1:], prompts, texts, strict=True)
    ):
        log.warning("ignoring pair cache %s: it does not match the prompts", path)
        return None
    return texts


def _as_example(prompt: str, chosen: str, rejected: str, chat: bool) -> PreferenceExample:
    # With a chat template the pair is a conversation, so training renders it exactly as it was
    # generated (user turn + assistant header); otherwise plain text continues the raw prompt.
    if chat:
        user = [{"role": "user", "content": prompt}]
        return PreferenceExample(
            user, [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        )
    return PreferenceExample(prompt, chosen, rejected)


def build_reward_pairs(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    sampling: Sampling | None = None,
    *,
    reward: str | RewardFn = "vader_sentiment",
    min_reward_gap: float = 0.0,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    model_id: str | None = None,
    progress: ProgressFn | None = None,
    generation_dtype: torch.dtype | None = None,
    **changes: Any,
) -> RewardPairs:
    """Sample K completions per prompt, score them, keep best versus worst (see the module docstring).

    Args:
        model: the reference model that samples (put in eval mode for the call).
        tokenizer: its tokenizer.
        prompts: P prompts (training split).
        sampling: K >= 2 samples per prompt (``samples_per_prompt``, default 4) at a temperature > 0 (K
            greedy copies would be identical); its ``use_chat_template`` (None = when the tokenizer has one)
            makes the pairs conversations (user prompt, assistant responses).
        reward: a registered reward name or a ``texts -> rewards`` callable.
        min_reward_gap: keep a prompt only when best - worst reward is strictly above this.
        cache_dir: folder of the completion cache; None = ``<alignkit cache>/reward_pairs``.
        use_cache: False never reads or writes the cache.
        model_id: a name to key the cache by instead of the weights' fingerprint.
        progress: optional ``fn(done, total)`` per generation batch.
        generation_dtype: sample from a temporary copy of the model in this dtype (``torch.bfloat16``
            about doubles CPU sampling speed on CPUs with bf16 units); None samples from ``model``.
        **changes: settings of ``sampling`` to change for this call.

    Returns:
        The pairs and their statistics. Chosen is the first best sample, rejected the last worst one.
    """
    sampling = (sampling or Sampling(samples_per_prompt=4)).but(**changes)
    k, temperature = sampling.samples_per_prompt, sampling.temperature
    if k < 2:
        raise ValueError(f"completions_per_prompt must be >= 2 to pick a best and a worst, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to sample different completions, got {temperature}")
    if not prompts:
        raise ValueError("no prompts to make pairs from")
    start = time.perf_counter()
    max_new_tokens, top_p, batch_size, seed = sampling.max_new_tokens, sampling.top_p, sampling.batch_size, sampling.seed
    reward_name, reward_fn = resolve_reward(reward)
    chat = uses_chat_template(tokenizer, sampling.use_chat_template)

    path = None
    if use_cache:
        key = _sha(
            {
                "model": model_id or model_fingerprint(model),
                "tokenizer": _tokenizer_fingerprint(tokenizer),
                "prompts": list(prompts),
                "k": k,
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                # The batch split decides which RNG draws each row gets.
                "batch_size": batch_size,
                "seed": seed,
                "chat": chat,
                "dtype": str(generation_dtype),
            }
        )
        path = (cache_dir or default_cache_dir("reward_pairs")) / f"{key[:32]}.jsonl"
    texts = _read_cache(path, prompts, k) if path is not None else None
    from_cache = texts is not None
    if texts is None:
        sampler = model
        if generation_dtype is not None and generation_dtype != next(model.parameters()).dtype:
            sampler = copy.deepcopy(model).to(generation_dtype)
        completions = generate_completions(sampler, tokenizer, prompts, sampling.but(use_chat_template=chat),
                                           progress=progress)
        texts = [[c.text for c in completions[i * k : (i + 1) * k]] for i in range(len(prompts))]
        if path is not None:
            meta = {"model_id": model_id, "k": k, "max_new_tokens": max_new_tokens, "temperature": temperature,
                    "top_p": top_p, "batch_size": batch_size, "seed": seed, "chat": chat,
                    "dtype": str(generation_dtype)}
            rows = [{"meta": meta}] + [{"prompt": p, "completions": t} for p, t in zip(prompts, texts, strict=True)]
            _write_jsonl_atomic(path, rows)

    flat = [t for group in texts for t in group]
    scores = np.asarray(reward_fn(flat), dtype=np.float64)
    if scores.shape != (len(flat),):
        raise ValueError(f"reward {reward_name!r} returned {scores.shape} values for {len(flat)} texts")
    scores = scores.reshape(len(prompts), k)  # (P, K)

    drops = DropReport()
    pairs, chosen_r, rejected_r = [], [], []
    for i, prompt in enumerate(prompts):
        drops.seen += 1
        # First maximum and last minimum: distinct samples even when all K rewards tie.
        best, worst = int(scores[i].argmax()), k - 1 - int(scores[i][::-1].argmin())
        if scores[i, best] - scores[i, worst] <= min_reward_gap:
            drops.drop(SMALL_GAP, f"prompt {i}")
            continue
        pairs.append(_as_example(prompt, texts[i][best], texts[i][worst], chat))
        chosen_r.append(scores[i, best])
        rejected_r.append(scores[i, worst])

    result = RewardPairs(
        pairs=pairs,
        drops=drops,
        reward_name=reward_name,
        mean_reward=float(scores.mean()),
        mean_chosen_reward=float(np.mean(chosen_r)) if pairs else float("nan"),
        mean_rejected_reward=float(np.mean(rejected_r)) if pairs else float("nan"),
        mean_gap=float(np.mean(np.subtract(chosen_r, rejected_r))) if pairs else float("nan"),
        from_cache=from_cache,
        seconds=time.perf_counter() - start,
        cache_path=path,
        rewards=scores.tolist(),
    )
    log.info("%s", result.summary())
    return result


def make_sentiment_pairs(*args: Any, **kwargs: Any) -> list[PreferenceExample]:
    """The pairs of :func:`build_reward_pairs` (same arguments), for callers that need only the data.

    Use :func:`build_reward_pairs` to get the drop counts and reward statistics as values too.
    """
    return build_reward_pairs(*args, **kwargs).pairs


def _heldout_sentiment_prompts(cfg: DataConfig) -> tuple[list[str], dict[str, str]]:
    """The held-out prompts of a sentiment section (generated data has no chosen response)."""
    src = cfg.source
    assert isinstance(src, SentimentSource)
    return sentiment_prompts(src.num_eval_prompts, seed=cfg.seed, split="eval"), {}


@register_prepared_source("sentiment", needs_model=True, heldout=_heldout_sentiment_prompts)
def _prepare_sentiment_source(cfg: DataConfig, tokenizer: Any, context: PrepareContext) -> PreparedData:
    assert context.model is not None
    return prepare_sentiment_data(cfg, tokenizer, context.model, seed=context.seed, console=context.console)


def prepare_sentiment_data(
    cfg: DataConfig,
    tokenizer,
    model: nn.Module,
    *,
    seed: int = 0,
    console: Console | None = None,
    generation_dtype: torch.dtype | None = None,
) -> PreparedData:
    """A recipe's ``data:`` section with a ``sentiment`` source: generate, score, pair and tokenize.

    Training pairs come from ``num_prompts`` prompts of the training split (capped by
    ``max_examples``); test pairs from ``num_eval_prompts`` held-out prompts. Test pairs keep every
    held-out prompt, ties included (``min_reward_gap`` applies to training only), so the reward
    evaluation, which samples from the test pairs' prompts, sees the whole held-out set.

    Args:
        cfg: the data section; ``cfg.source`` must be a :class:`SentimentSource`.
        tokenizer: the model's tokenizer.
        model: the initial policy, which is the reference that samples.
        seed: sampling seed (the recipe's seed); ``cfg.seed`` orders the prompts.
        console: where progress is shown (stderr when None).
        generation_dtype: see :func:`build_reward_pairs`; default: ``cfg.source.generation_dtype``.
    """
    src = cfg.source
    if not isinstance(src, SentimentSource):
        raise DataError(f"data.source.kind must be 'sentiment' here, got {src.kind!r}")
    if generation_dtype is None and src.generation_dtype:
        generation_dtype = getattr(torch, src.generation_dtype)
    if model is None:
        raise DataError("data.source.kind 'sentiment' needs the model to sample completions from")
    # max_examples caps the prompts (one pair each) without ever asking for more than the split holds.
    n_train = src.num_prompts
    if cfg.max_examples is not None:
        n_train = min(n_train or len(sentiment_prompts(split="train")), cfg.max_examples)
    train_prompts = sentiment_prompts(n_train, seed=cfg.seed, split="train")
    eval_prompts = sentiment_prompts(src.num_eval_prompts, seed=cfg.seed, split="eval")
    sampling = Sampling(samples_per_prompt=src.completions_per_prompt, max_new_tokens=src.max_new_tokens,
                        temperature=src.temperature, top_p=src.top_p, batch_size=src.batch_size, seed=seed,
                        use_chat_template=cfg.chat_template)
    console = console or Console(stderr=True)
    results = {}
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    ) as progress:
        for name, prompts, gap in (
            ("train", train_prompts, src.min_reward_gap),
            ("test", eval_prompts, float("-inf")),
        ):
            task = progress.add_task(f"sentiment pairs ({name}): sampling", total=len(prompts) * src.completions_per_prompt)

            def advance(done: int, total: int, task: TaskID = task) -> None:
                progress.update(task, completed=done, total=total)

            results[name] = build_reward_pairs(
                model, tokenizer, prompts, sampling, reward=src.reward, min_reward_gap=gap, use_cache=src.use_cache,
                generation_dtype=generation_dtype,
                progress=advance,
            )
            progress.update(task, completed=len(prompts) * src.completions_per_prompt)
    for name, result in results.items():
        console.print(f"sentiment {name}: {result.summary()}")
    train_ex, test_ex = results["train"].pairs, results["test"].pairs
    load_report = DropReport().merge(results["train"].drops).merge(results["test"].drops)
    train, train_report = tokenize_pairs(train_ex, tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.chat_template)
    test, test_report = tokenize_pairs(
        test_ex, tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.chat_template, start_index=len(train_ex)
    )
    if not train:
        raise DataError(
            f"no usable training pairs from data.source (sentiment):\nloading: {load_report.summary()}\n"
            f"tokenization: {train_report.summary()}"
        )
    return PreparedData(train, test, train_ex, test_ex, load_report, train_report, test_report)
