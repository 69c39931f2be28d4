"""Crafted or damaged files in a run folder (model folder, manifest, checkpoint, report, adapter settings) give
a one-line error that names the file: never a RecursionError, TypeError or IndexError from deep inside, and
never an unpickled ``pytorch_model.bin``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_gpt2
from safetensors.torch import save_file

from alignkit.jsonio import RunFileError
from alignkit.peft import apply_adapter
from alignkit.peft.api import read_adapter_meta
from alignkit.peft.config import parse_adapter_config
from alignkit.report.frontier import online_frontier_rows
from alignkit.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from alignkit.train.loop import LoopState
from alignkit.workflow.model_io import MANIFEST_FILE, load_run_model, save_model

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "1" + "0" * 5000


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A run folder: model/ (a tiny GPT-2 with its manifest), a resumable checkpoint, report.json, an adapter."""
    root = tmp_path_factory.mktemp("pristine")
    model = make_tiny_gpt2()
    save_model(model, gpt2_tokenizer, root / "run" / "model")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    save_checkpoint(root / "run" / "checkpoints" / "step-0000001", model=model, optimizer=optimizer, scheduler=None,
                    state={"step": 1})
    (root / "run" / "report.json").write_text(json.dumps({"recipe": "r", "method": "rloo"}))
    adapted = make_tiny_gpt2()
    apply_adapter(adapted, parse_adapter_config({"kind": "lora", "r": 2, "alpha": 4}))
    save_model(adapted, gpt2_tokenizer, root / "adapted" / "model")
    return root


def _model(run: Path) -> None:
    load_run_model(run / "run")


def _checkpoint(run: Path) -> None:
    model = make_tiny_gpt2()
    load_checkpoint(run / "run" / "checkpoints" / "step-0000001", model=model,
                    optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))


def _report(run: Path) -> None:
    online_frontier_rows([run / "run"])


def _adapter(run: Path) -> None:
    read_adapter_meta(run / "adapted" / "model")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _pickle_only(model_dir: Path) -> None:
    for f in model_dir.glob("*.safetensors"):
        f.unlink()
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x04\x95")  # a pickle's opening bytes: never read


def _wrong_shape(ckpt: Path) -> None:
    save_file({"transformer.wte.weight": torch.zeros(3, 3)}, str(ckpt / "trainable.safetensors"))


MODEL, CKPT = Path("run/model"), Path("run/checkpoints/step-0000001")
# id: (file changed, how, the call that reads it, what the one-line error says)
CASES: dict[str, tuple[Path, Callable[[Path], None], Callable[[Path], None], str]] = {
    "manifest nested too deeply": (MODEL / MANIFEST_FILE, lambda p: p.write_text(DEEP), _model, "nested too deeply"),
    "manifest a list": (MODEL / MANIFEST_FILE, lambda p: p.write_text("[1, 2]"), _model, "a JSON list where a dict"),
    "manifest an integer of 5000 digits": (MODEL / MANIFEST_FILE, lambda p: p.write_text(HUGE_INT), _model,
                                           "not a model folder's manifest"),
    "manifest with NaN": (MODEL / MANIFEST_FILE, lambda p: p.write_text('{"format": NaN}'), _model,
                          "NaN is not a JSON number"),
    "manifest not UTF-8": (MODEL / MANIFEST_FILE, lambda p: p.write_bytes(b"\xff\xfe{"), _model, "cannot read"),
    "adapter_only manifest of wrong types": (
        MODEL / MANIFEST_FILE,
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "contents": "adapter_only", "base_model": 5})),
        _model, "an adapter_only manifest needs a base_model object"),
    "truncated model weights": (MODEL / "model.safetensors", _truncate, _model, "model.safetensors is unreadable"),
    "pickle weights only": (MODEL, _pickle_only, _model, "pytorch_model.bin), which alignkit never loads"),
    "trainer state nested too deeply": (CKPT / "trainer_state.json", lambda p: p.write_text(DEEP), _checkpoint,
                                        "nested too deeply"),
    "trainer state a string": (CKPT / "trainer_state.json", lambda p: p.write_text('"step"'), _checkpoint,
                               "a JSON str where a dict belongs"),
    "truncated checkpoint weights": (CKPT / "trainable.safetensors", _truncate, _checkpoint,
                                     "its weights cannot be read"),
    "checkpoint weights of the wrong shape": (CKPT, _wrong_shape, _checkpoint, "not a state alignkit wrote"),
    "resume state of the wrong structure": (CKPT / "resume_state.json", lambda p: p.write_text('{"optimizer": 3}'),
                                            _checkpoint, "is not a state alignkit wrote"),
    "resume state nested too deeply": (CKPT / "resume_state.json", lambda p: p.write_text(DEEP), _checkpoint,
                                       "resume state cannot be read"),
    "report nested too deeply": (Path("run/report.json"), lambda p: p.write_text(DEEP), _report, "nested too deeply"),
    "report a number": (Path("run/report.json"), lambda p: p.write_text("3"), _report, "a JSON int where a dict"),
    "adapter settings a list": (Path("adapted/model/alignkit_adapter.json"), lambda p: p.write_text("[]"), _adapter,
                                "a JSON list where a dict"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_crafted_file_is_named_in_a_one_line_error(pristine, tmp_path, case):
    changed, craft, read, says = CASES[case]
    shutil.copytree(pristine, tmp_path / "copy")
    target = tmp_path / "copy" / changed
    assert target.exists(), target
    craft(target)
    with pytest.raises((RunFileError, CheckpointError)) as caught:
        read(tmp_path / "copy")
    message = str(caught.value)
    assert says in message, message
    assert str(target) in message or target.name in message, message
    assert "\n" not in message, message


@pytest.mark.parametrize(("state", "why"), [({"step": "1"}, "non-negative integers"),
                                            ({"step": 1, "eval_history": 3}, "eval_history"),
                                            ({"step": 1, "stopped_early": "yes"}, "stopped_early"),
                                            ({"step": 1, "best_metric": [1]}, "best_metric")])
def test_a_trainer_state_of_the_wrong_types_is_refused(state, why):
    with pytest.raises(ValueError, match=why):
        LoopState.from_json(state)
