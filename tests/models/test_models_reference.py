"""Reference policies: a frozen copy, the policy with adapters off, and cached log-probs."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from conftest import make_tiny_gpt2
from preference_batches import collate, make_pairs
from torch import nn

from alignkit.models.logps import LogpsOptions, concatenated_forward
from alignkit.models.reference import AdaptersOffReference, CachedReference, FrozenCopyReference, Reference
from alignkit.models.reference_cache import ReferenceLogpsCache

VOCAB = 1000


def policy_logps(model, batch):
    with torch.no_grad():
        out = concatenated_forward(model, batch, logps=LogpsOptions(chunk_size=7))
    return out["chosen_logps"], out["rejected_logps"]


def take_sgd_step(model, batch):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = concatenated_forward(model, batch)
    (out["chosen_logps"] - out["rejected_logps"]).mean().neg().backward()
    opt.step()


def test_frozen_copy_keeps_the_initial_policy():
    policy = make_tiny_gpt2(vocab_size=VOCAB).train()
    batch = collate(make_pairs(3, vocab_size=VOCAB), pad_id=VOCAB - 1)
    with torch.no_grad():
        policy.eval()
        initial = policy_logps(policy, batch)
        policy.train()
    reference = FrozenCopyReference(policy, logps=LogpsOptions(chunk_size=3))
    assert isinstance(reference, Reference)

    take_sgd_step(policy, batch)
    after = policy_logps(policy, batch)
    assert not torch.allclose(after[0], initial[0]), "the policy must have changed"

    chosen, rejected = reference.logps(batch)
    torch.testing.assert_close(chosen, initial[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected, initial[1], atol=1e-5, rtol=0)
    assert not chosen.requires_grad
    assert all(p.requires_grad for p in policy.parameters()), "freezing the copy must not freeze the policy"
    assert not any(p.requires_grad for p in reference.model.parameters())
    with reference.model_context() as model:
        assert model is reference.model and not model.training


class ScaledResidual(nn.Module):
    """A minimal adapter: adds a learned linear map of a block's output; `enabled` switches it off."""

    def __init__(self, block: nn.Module, width: int) -> None:
        super().__init__()
        self.block = block
        self.delta = nn.Linear(width, width)
        nn.init.normal_(self.delta.weight, std=0.5)
        self.enabled = True

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        return out + self.delta(out) if self.enabled else out


@contextmanager
def adapters_off(model: nn.Module):
    adapters = [m for m in model.modules() if isinstance(m, ScaledResidual)]
    for a in adapters:
        a.enabled = False
    try:
        yield
    finally:
        for a in adapters:
            a.enabled = True


def test_adapters_off_gives_the_base_model_in_eval_mode():
    base = make_tiny_gpt2(vocab_size=VOCAB)
    base.config.resid_pdrop = 0.5
    batch = collate(make_pairs(2, vocab_size=VOCAB), pad_id=VOCAB - 1)
    expected = policy_logps(base.eval(), batch)

    policy = base
    for block in policy.transformer.h:
        block.mlp = ScaledResidual(block.mlp, 32)
    policy.train()  # dropout on: the reference must still be deterministic (eval mode inside)
    with_adapters = policy_logps(policy.eval(), batch)
    policy.train()
    assert not torch.allclose(with_adapters[0], expected[0])

    reference = AdaptersOffReference(policy, adapters_off, logps=LogpsOptions(chunk_size=5))
    chosen, rejected = reference.logps(batch)
    torch.testing.assert_close(chosen, expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected, expected[1], atol=1e-5, rtol=0)
    assert policy.training, "the policy's train mode is restored"
    assert all(m.enabled for m in policy.modules() if isinstance(m, ScaledResidual)), "adapters back on"
    with reference.model_context() as model:
        assert model is policy and not model.training
    assert policy.training


def test_cached_reference_looks_up_by_index():
    model = make_tiny_gpt2(vocab_size=VOCAB)
    pairs = make_pairs(5, vocab_size=VOCAB, seed=2)
    cache = ReferenceLogpsCache.build(
        model, pairs, lambda p: collate(p, pad_id=VOCAB - 1), batch_size=2, model_id="tiny", progress=False
    )
    reference = CachedReference(cache)
    # A batch of pairs 4 and 1, in that order: lookups must follow batch["index"], not batch position.
    batch = collate([pairs[4], pairs[1]], pad_id=VOCAB - 1)
    chosen, rejected = reference.logps(batch)
    expected = policy_logps(model, batch)
    torch.testing.assert_close(chosen, expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected, expected[1], atol=1e-5, rtol=0)

    with pytest.raises(RuntimeError, match="model_factory"), reference.model_context():
        pass
    with pytest.raises(KeyError, match="index"):
        reference.logps({k: v for k, v in batch.items() if k != "index"})
    with CachedReference(cache, model_factory=lambda: make_tiny_gpt2(vocab_size=VOCAB)).model_context() as m:
        assert not m.training and not any(p.requires_grad for p in m.parameters())
