"""The built-in prompts of the controlled-sentiment protocol, and their fixed train/eval split.

Short, neutral requests (no sentiment built into the prompt: VADER scores every one 0) made by combining
task templates with everyday subjects; the model sets the tone. A hash of each prompt's text puts about
one in five in the held-out evaluation split.
"""

from __future__ import annotations

import hashlib
import random
from itertools import product
from typing import Literal

__all__ = [
    "SENTIMENT_PROMPTS",
    "SENTIMENT_SUBJECTS",
    "SENTIMENT_TEMPLATES",
    "is_eval_prompt",
    "sentiment_prompts",
]

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
