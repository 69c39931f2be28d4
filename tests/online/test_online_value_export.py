"""`alignkit export RUN --model value`: a PPO run's value model (a head on the policy, or a model of its own;
LoRA or full fine-tuning) exported as a transformers token classifier, reloaded with transformers alone, gives
the values the trainer's own value model computed at the end of training, at every position."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_online import _recipe

from alignkit.cli import main
from alignkit.commands.online import run_online_recipe
from alignkit.online.tokens import ValueHead, ValueModel
from alignkit.online.trainer import OnlineTrainer

IDS = torch.tensor([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]])


def _trained(tmp_path, monkeypatch, *overrides: str) -> OnlineTrainer:
    """A 2-update PPO run; the trainer as it ended training (the value model the checkpoint holds)."""
    kept: list[OnlineTrainer] = []
    fit = OnlineTrainer.fit

    def keeping_fit(self: OnlineTrainer, *, resume: bool = False):
        kept.append(self)
        return fit(self, resume=resume)

    monkeypatch.setattr(OnlineTrainer, "fit", keeping_fit)
    run_online_recipe(_recipe(tmp_path, "eval=null", "train.max_steps=2", "online.algorithm=ppo",
                              "online.samples_per_prompt=2", "train.lr=0.01", *overrides))
    return kept[0]


def _trainer_values(trainer: OnlineTrainer) -> torch.Tensor:
    """(1, T) values at every position, computed by the trainer's own value model (float32)."""
    value, policy = trainer.value, trainer.policy
    mask = torch.ones_like(IDS)
    with torch.no_grad():
        if isinstance(value, ValueHead):  # on the policy's last hidden state
            hidden = policy.eval()(input_ids=IDS, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        else:
            assert isinstance(value, ValueModel)
            out = value.body.eval()(input_ids=IDS, attention_mask=mask, output_hidden_states=True)
            hidden = out.last_hidden_state
            return value.head.eval()(hidden).float()
        return value.eval()(hidden)


@pytest.mark.parametrize(("adapter", "value_model"), [("{kind: lora, r: 4, alpha: 8}", "policy_head"),
                                                       ("{kind: lora, r: 4, alpha: 8}", "separate"),
                                                       ("{kind: none}", "separate")])
def test_the_exported_value_model_gives_the_trainers_values(tmp_path, monkeypatch, adapter, value_model):
    from transformers import AutoModelForTokenClassification

    trainer = _trained(tmp_path, monkeypatch, f"adapter={adapter}",
                       f"online.ppo={{epochs: 1, value_model: {value_model}}}")
    expected = _trainer_values(trainer)
    assert expected.abs().max() > 1e-4  # trained: a zero-initialised head that never moved would prove nothing
    run = tmp_path / "run"
    assert main(["export", str(run), "--format", "merged", "--model", "value"]) == 0
    folder = run / "export-value"
    manifest = json.loads((folder / "alignkit_export.json").read_text())
    assert manifest["model"] == "value_model" and "config.json" in manifest["files"]
    exported = AutoModelForTokenClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        values = exported(input_ids=IDS).logits[..., 0]
    torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-5)  # LoRA folded in: float32 rounding only


def test_a_run_without_a_value_model_and_other_formats_are_refused(tmp_path, capsys):
    summary = run_online_recipe(_recipe(tmp_path, "eval=null", "train.max_steps=1"))  # RLOO: no value model
    run = summary.run_dir
    assert main(["export", str(run), "--format", "merged", "--model", "value"]) == 2
    assert "no value model to export" in " ".join(capsys.readouterr().err.split())
    assert main(["export", str(run), "--format", "peft", "--model", "value"]) == 2
    assert "--model value: only --format merged" in " ".join(capsys.readouterr().err.split())
    assert not (run / "export-value").exists()
