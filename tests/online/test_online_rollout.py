"""Rollout sampling with a stream per prompt group: the samples do not depend on batching or on how the
prompts are split, and they follow the policy's distribution (temperature, top-p)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_gpt2

from alignkit.models.sampling import Sampling
from alignkit.online.parallel import local_share
from alignkit.online.rollout import group_seed, sample_groups
from alignkit.train.distributed import DistEnv

PROMPTS = ["The weather today", "A cat", "In the morning of a long day", "Yes"]


def _ids(completions) -> list[tuple[int, list[int]]]:
    return [(c.prompt_index, c.completion_ids) for c in completions]


def test_samples_do_not_depend_on_batches_or_on_the_split(gpt2_tokenizer):
    model = make_tiny_gpt2()
    sampling = Sampling(max_new_tokens=6, samples_per_prompt=2, batch_size=64)
    whole = sample_groups(model, gpt2_tokenizer, PROMPTS, range(4), sampling, seed=0, step=3)
    assert [c.prompt_index for c in whole] == [0, 0, 1, 1, 2, 2, 3, 3]
    # As two processes would sample it (each its half, in batches of one group and of two groups).
    first = sample_groups(model, gpt2_tokenizer, PROMPTS[:2], [0, 1], sampling.but(batch_size=2), seed=0, step=3)
    second = sample_groups(model, gpt2_tokenizer, PROMPTS[2:], [2, 3], sampling, seed=0, step=3)
    assert [c.completion_ids for c in first + second] == [c.completion_ids for c in whole]
    assert _ids(second) == [(i - 2, ids) for i, ids in _ids(whole[4:])]  # prompt_index into its own prompts
    assert len({tuple(c.completion_ids) for c in whole}) == 8  # the k samples of a prompt differ
    other_step = sample_groups(model, gpt2_tokenizer, PROMPTS, range(4), sampling, seed=0, step=4)
    assert [c.completion_ids for c in other_step] != [c.completion_ids for c in whole]


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_samples_follow_the_policy(gpt2_tokenizer, temperature, top_p):
    """First tokens of 2,000 one-prompt groups against softmax(logits / T), cut to the top-p nucleus."""
    model = make_tiny_gpt2(vocab_size=1000)  # a small vocabulary: the draw handles (rows, vocab) float64 tensors
    prompt = "The"  # GPT-2 id 464, inside the small vocabulary
    with torch.no_grad():
        model.transformer.wte.weight.mul_(10)  # one likely next token (p 0.33) and a long tail (tied lm-head)
        logits = model(torch.tensor([gpt2_tokenizer(prompt)["input_ids"]])).logits[0, -1] / temperature
    probs = torch.softmax(logits.double(), dim=-1)
    if top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        keep = order[(sorted_p.cumsum(0) - sorted_p) < top_p]
        nucleus = torch.zeros_like(probs)
        nucleus[keep] = probs[keep]
        probs = nucleus / nucleus.sum()
    n = 2000
    sampling = Sampling(max_new_tokens=1, temperature=temperature, top_p=top_p, batch_size=500)
    first = torch.tensor([c.completion_ids[0] for c in
                          sample_groups(model, gpt2_tokenizer, [prompt] * n, range(n), sampling, seed=1, step=0)])
    assert bool((probs[first] > 0).all())  # nothing outside the distribution's support
    for p, token in zip(*probs.topk(3), strict=True):
        frequency = float((first == token).double().mean())
        assert abs(frequency - float(p)) < 4 * (float(p) * (1 - float(p)) / n) ** 0.5 + 1e-3, (int(token), p)


def test_group_seeds_and_shares():
    assert group_seed(0, 1, 2) == group_seed(0, 1, 2)
    assert len({group_seed(s, t, i) for s in range(3) for t in range(3) for i in range(3)}) == 27
    items = list(range(8))
    assert local_share(items, DistEnv()) == (0, items)
    assert local_share(items, DistEnv(rank=1, world_size=2)) == (4, [4, 5, 6, 7])
    assert local_share(items, DistEnv(rank=3, world_size=4)) == (6, [6, 7])
