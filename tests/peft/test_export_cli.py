"""`alignkit export`: tiny runs (LoRA, bottleneck adapter, full fine-tune, reward model) exported, reloaded with
transformers / PEFT, and compared with the run's own model on the same input: the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignkit.cli import main
from alignkit.commands.export import EXPORT_MANIFEST
from alignkit.peft import load_exported
from alignkit.workflow.model_io import load_run_model

IDS = torch.tensor([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]])


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A tiny GPT-2 saved as a folder: a base a PEFT adapter can name and reload."""
    from conftest import make_tiny_gpt2

    folder = tmp_path_factory.mktemp("base")
    make_tiny_gpt2().save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return folder


def _train(tmp_path: Path, hh_path: Path, base: Path, *extra: str) -> Path:
    out = tmp_path / "run"
    args = ["run", "recipes/dpo_gpt2_hh.yaml", f"output_dir={out}", f"model.name_or_path={base}",
            f"model.tokenizer={base}", f"data.source.path={hh_path}", f"data.test_source.path={hh_path}",
            "data.max_examples=12", "data.max_length=64", "data.max_prompt_length=48", "sft.enabled=false",
            "train.batch_size=4", "train.grad_accum=1", "train.max_steps=2", "train.warmup_steps=0",
            "train.lr=1e-2", "train.optimizer=adamw", "train.eval_every=null", "train.save_every=100",
            "eval=null", "logging.tensorboard=false", *extra]
    assert main(args) == 0
    return out


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.float()(input_ids=IDS).logits


def _run_logits(run: Path) -> torch.Tensor:
    model, _ = load_run_model(run)
    return _logits(model)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / EXPORT_MANIFEST).read_text())


def test_lora_run_exports_as_peft_and_merged_with_the_runs_logits(tmp_path, hh_path, base_folder):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    run = _train(tmp_path, hh_path, base_folder, "adapter={kind: lora, r: 4, alpha: 8, target_modules: [c_attn]}")
    expected = _run_logits(run)
    base_logits = _logits(AutoModelForCausalLM.from_pretrained(base_folder))
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # training moved it: the check can fail

    assert main(["export", str(run), "--format", "peft"]) == 0
    folder = run / "export-peft"
    assert _manifest(folder)["adapter"] == "lora" and _manifest(folder)["base_model"] == str(base_folder.resolve())
    reloaded = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), folder)
    torch.testing.assert_close(_logits(reloaded), expected, rtol=1e-5, atol=1e-5)

    merged = tmp_path / "merged"
    assert main(["export", str(run), "--format", "merged", "--out", str(merged)]) == 0
    assert (merged / "model.safetensors").is_file() and not (merged / "alignkit_adapter.json").exists()
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(merged)), expected, rtol=1e-5, atol=1e-5)


def test_bottleneck_run_exports_as_hf_with_the_runs_logits_and_refuses_merged(tmp_path, hh_path, base_folder, capsys):
    run = _train(tmp_path, hh_path, base_folder, "adapter={kind: bottleneck, reduction_factor: 4}")
    expected = _run_logits(run)
    assert main(["export", str(run), "--format", "hf"]) == 0
    folder = run / "export-hf"
    assert _manifest(folder)["adapter"] == "bottleneck"
    torch.testing.assert_close(_logits(load_exported(folder)), expected, rtol=0, atol=0)
    for fmt in ("merged", "peft"):
        assert main(["export", str(run), "--format", fmt]) == 2
        err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
        assert "bottleneck" in err and "--format hf" in err and "Traceback" not in err
        assert not (run / f"export-{fmt}").exists()


def test_full_fine_tune_exports_as_a_transformers_folder_with_the_runs_logits(tmp_path, hh_path, base_folder, capsys):
    from transformers import AutoModelForCausalLM

    run = _train(tmp_path, hh_path, base_folder)
    expected = _run_logits(run)
    assert main(["export", str(run), "--format", "hf"]) == 0
    folder = run / "export-hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", EXPORT_MANIFEST} <= {p.name for p in folder.iterdir()}
    assert _manifest(folder)["adapter"] == "none"
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(folder)), expected, rtol=0, atol=0)

    # An existing destination is left alone unless --overwrite.
    marker = folder / "keep.txt"
    marker.write_text("mine")
    assert main(["export", str(run), "--format", "hf"]) == 2
    assert "--overwrite" in " ".join(capsys.readouterr().err.split()) and marker.read_text() == "mine"
    assert main(["export", str(run), "--format", "hf", "--overwrite"]) == 0
    assert not marker.exists() and (folder / EXPORT_MANIFEST).is_file()
    assert main(["export", str(run), "--format", "peft"]) == 2
    assert "full fine-tuning" in " ".join(capsys.readouterr().err.split())


def test_reward_model_run_exports_its_scalar_head(tmp_path, hh_path, base_folder):
    from transformers import AutoModelForSequenceClassification

    run = _train(tmp_path, hh_path, base_folder, "loss.name=reward_bt", "reference.mode=none")
    assert main(["export", str(run), "--format", "merged"]) == 0
    folder = run / "export-merged"
    assert _manifest(folder)["model"] == "reward_model"
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
    original = AutoModelForSequenceClassification.from_pretrained(run / "model")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=IDS).logits, original(input_ids=IDS).logits, rtol=0, atol=0)


def test_export_of_a_folder_that_is_no_run_is_a_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "hf"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "not a run folder" in err and "Traceback" not in err
