"""The one padding helper and the one KL function of models/: hand-worked values."""

from __future__ import annotations

import pytest
import torch

from alignkit.models.kl import kl_estimate
from alignkit.models.padding import IGNORE_INDEX, labelled_batch, pad_token_rows


def test_pad_token_rows_right_and_left():
    ids, mask = pad_token_rows([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_token_rows([[5, 6, 7], [8]], pad_id=0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long


def test_labelled_batch_labels_responses_by_length_even_when_they_end_in_the_pad_id():
    # GPT-2 pads with its EOS (here 9): the EOS that ends the first response keeps its label.
    batch = labelled_batch([([1, 2], [3, 9]), ([4], [5])], pad_id=9, pad_to_multiple_of=8)
    n = IGNORE_INDEX
    assert batch["input_ids"].tolist() == [[1, 2, 3, 9, 9, 9, 9, 9], [4, 5, 9, 9, 9, 9, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[n, n, 3, 9, n, n, n, n], [n, 5, n, n, n, n, n, n]]


def test_kl_estimators_hand_worked():
    logps, ref = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-1.5, -2.0, -2.0])
    d = torch.tensor([0.5, 0.0, -1.0])
    assert torch.equal(kl_estimate(logps, ref), d)
    assert torch.allclose(kl_estimate(logps, ref, "k2"), d.square() / 2)
    assert torch.allclose(kl_estimate(logps, ref, "k3"), torch.exp(-d) + d - 1)


def test_k3_is_never_negative_for_tiny_log_ratios_and_carries_the_policy_gradient():
    logps = torch.full((1000,), -2.0) + torch.linspace(-1e-4, 1e-4, 1000)
    logps.requires_grad_(True)
    ref = torch.full((1000,), -2.0, requires_grad=True)
    k3 = kl_estimate(logps, ref, "k3")
    assert (k3 >= 0).all()
    k3.sum().backward()
    assert logps.grad is not None and ref.grad is None


def test_kl_estimate_refuses_mismatched_shapes_and_unknown_estimators():
    with pytest.raises(ValueError, match="same shape"):
        kl_estimate(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "k4")  # type: ignore[arg-type]


def test_k3_matches_the_per_token_estimator_of_online_training():
    """Online training's k3 (alignkit.online.grpo.k3_kl) gives the same numbers, so it can use this one."""
    from alignkit.online.grpo import k3_kl

    torch.manual_seed(0)
    logps, ref = -torch.rand(4, 7) * 3, -torch.rand(4, 7) * 3
    assert torch.equal(kl_estimate(logps, ref, "k3"), k3_kl(logps, ref))
