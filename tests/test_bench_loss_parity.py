"""alignkit's DPO loss equals TRL's DPOTrainer loss (sigmoid, beta 0.1) at the same inputs.

TRL 1.16 exposes no standalone DPO loss function: the loss is computed inside ``DPOTrainer.compute_loss``
from the model's log-probs. So both frameworks score the same HH pairs (the shipped fixture) with the same
policy and a *different* reference model (with policy == reference every loss would be log 2), and the
losses, gradients and precomputed reference log-probs are compared.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch

pytest.importorskip("trl")

from conftest import make_tiny_gpt2  # noqa: E402

from alignkit.data.collate import collate_preference  # noqa: E402
from alignkit.data.config import HHRLHFSource  # noqa: E402
from alignkit.data.hh_rlhf import load_hh_rlhf  # noqa: E402
from alignkit.data.tokenize import tokenize_pairs  # noqa: E402
from alignkit.losses import build_objective  # noqa: E402
from alignkit.models.reference import FrozenCopyReference  # noqa: E402
from alignkit.models.reference_cache import ReferenceLogpsCache  # noqa: E402
from alignkit.train.forward import objective_step  # noqa: E402

BETA = 0.1
N_PAIRS = 4


@pytest.fixture(scope="module")
def pairs(hh_path, gpt2_tokenizer):
    examples, _ = load_hh_rlhf(HHRLHFSource(path=str(hh_path)))
    out, _ = tokenize_pairs(examples[:8], gpt2_tokenizer, max_length=64, max_prompt_length=32)
    return out[:N_PAIRS]


def _trl_trainer(policy, reference, pairs, tokenizer, tmp_path, precompute: bool):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class Pretokenized(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    dataset = Dataset.from_dict({
        "prompt_ids": [p.prompt_ids for p in pairs],
        "chosen_ids": [p.chosen_ids for p in pairs],
        "rejected_ids": [p.rejected_ids for p in pairs],
    })
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=len(pairs),
                     beta=BETA, loss_type=["sigmoid"], gradient_checkpointing=False, report_to="none",
                     precompute_ref_log_probs=precompute, precompute_ref_batch_size=len(pairs), disable_tqdm=True)
    return Pretokenized(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                        processing_class=tokenizer)


def test_dpo_loss_and_gradients_match_trl(pairs, gpt2_tokenizer, tmp_path):
    policy, reference = make_tiny_gpt2(seed=0).train(), make_tiny_gpt2(seed=1).eval()
    trainer = _trl_trainer(copy.deepcopy(policy), copy.deepcopy(reference), pairs, gpt2_tokenizer, tmp_path, False)
    trl_model = trainer.model
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    trl_loss = trainer.compute_loss(trl_model, inputs)
    trl_loss.backward()

    batch = collate_preference(pairs, pad_token_id=gpt2_tokenizer.pad_token_id)
    out, stats = objective_step(policy, batch, build_objective({"name": "dpo", "beta": BETA}),
                                FrozenCopyReference(reference, copy=False))
    ours = out.losses.mean()
    ours.backward()

    assert abs(ours.item() - math.log(2)) > 1e-3, "policy and reference differ: the loss must not be log 2"
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)
    trl_metrics = trainer._metrics["train"]
    assert stats.policy_chosen_logps.mean().item() == pytest.approx(trl_metrics["logps/chosen"][-1], rel=1e-5)
    # A reward is beta x the difference of two float32 sums of some 400 nats, each summed in another order by
    # TRL: exact to a few of float32's spacings at 400 (3.1e-5), so to about beta x 1e-4 absolutely.
    assert out.chosen_rewards.mean().item() == pytest.approx(trl_metrics["rewards/chosen"][-1], rel=1e-4,
                                                             abs=BETA * 1e-4)
    for (name, ours_p), theirs_p in zip(policy.named_parameters(), trl_model.parameters(), strict=True):
        torch.testing.assert_close(ours_p.grad, theirs_p.grad, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")


def test_precomputed_reference_logps_match_trl(pairs, gpt2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    reference = make_tiny_gpt2(seed=1).eval()
    trainer = _trl_trainer(copy.deepcopy(reference), None, pairs, gpt2_tokenizer, tmp_path / "trl", True)
    collate = partial(collate_preference, pad_token_id=gpt2_tokenizer.pad_token_id)
    cache = ReferenceLogpsCache.build(reference, pairs, collate, 2, "parity", progress=False)
    torch.testing.assert_close(cache.chosen, torch.tensor(trainer.train_dataset["ref_chosen_logps"]),
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(cache.rejected, torch.tensor(trainer.train_dataset["ref_rejected_logps"]),
                               rtol=1e-5, atol=1e-4)
