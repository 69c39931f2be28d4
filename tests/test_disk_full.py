"""A full disk while saving a checkpoint, the model or the report: one line naming the folder and the space
needed, and nothing that was there before is lost. The disk is a real one: a 1 MiB tmpfs (mounting needs root;
without it these tests skip and say so)."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from alignkit.cache import DiskFullError, write_atomic
from alignkit.train.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB filesystem of its own (tmpfs), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 1 MiB tmpfs to fill needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # safetensors may still map a file there


def test_a_checkpoint_that_does_not_fit_keeps_the_previous_one(tiny_disk):
    model = torch.nn.Linear(8, 8)
    folder = tiny_disk / "checkpoints" / "step-0000001"
    save_checkpoint(folder, model=model, optimizer=None, scheduler=None, state={"step": 1})
    before = load_file(str(folder / "trainable.safetensors"))
    big = {"value.safetensors": {"w": torch.zeros(512, 1024)}}  # 2 MiB on a 1 MiB disk
    with pytest.raises(DiskFullError) as caught:
        save_checkpoint(folder, model=model, optimizer=None, scheduler=None, state={"step": 2}, files=big)
    message = str(caught.value)
    assert message.startswith(f"{folder.parent}: no space left on the device while saving step-0000001/")
    assert "about 2.0 MiB needed" in message and "free" in message and "\n" not in message
    after = load_file(str(folder / "trainable.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert load_checkpoint(folder, model=torch.nn.Linear(8, 8), restore_rng=False) == {"step": 1}
    assert [p.name for p in folder.parent.iterdir()] == ["step-0000001", "latest"] or \
        sorted(p.name for p in folder.parent.iterdir()) == ["latest", "step-0000001"]  # no half-written folder


def test_a_report_that_does_not_fit_keeps_the_previous_one(tiny_disk):
    report = tiny_disk / "report.json"
    write_atomic(report, '{"a": 1}')
    (tiny_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))
    with pytest.raises(DiskFullError, match=rf"^{tiny_disk}: no space left on the device while saving report.json "
                                            r"\(about 500.0 KiB needed"):
        write_atomic(report, "x" * 512_000)
    assert report.read_text() == '{"a": 1}' and list(tiny_disk.glob(".report.json.tmp*")) == []


def test_the_model_folder_and_the_cli_message(tiny_disk, gpt2_tokenizer, capsys):
    from conftest import make_tiny_gpt2

    from alignkit.cli import main
    from alignkit.workflow.model_io import save_model

    with pytest.raises(DiskFullError, match=rf"^{tiny_disk}: no space left on the device while saving model/ "
                                            r"\(about \d+\.\d MiB needed"):
        save_model(make_tiny_gpt2(), gpt2_tokenizer, tiny_disk / "model")
    assert list(tiny_disk.iterdir()) == []  # the temporary folder is gone too
    # The CLI prints it as one line, exit 1 (the input was fine): a run whose output_dir is on the full disk.
    code = main(["online", "recipes/online/rloo_smollm2_sentiment.yaml", f"output_dir={tiny_disk / 'run'}",
                 "model.name_or_path=gpt2", "model.from_config={model_type: gpt2, n_layer: 1, n_embd: 64, "
                 "n_head: 2, n_positions: 64}", "adapter={kind: none}", "model.tokenizer=gpt2",
                 "prompts={kind: inline, train: [A day, The sea], eval: [A cat]}", "train.max_steps=1",
                 "train.prompts_per_step=2", "online.samples_per_prompt=2", "online.max_new_tokens=2", "eval=null",
                 "train.device=cpu"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "no space left on the device while saving" in err and "Traceback" not in err


def _fill(disk, free_pages: int) -> None:
    """Fill ``disk`` (a 1 MiB tmpfs) so that ``free_pages`` pages of 4 KiB are left."""
    (disk / "filler").write_bytes(b"\0" * (1024 * 1024 - free_pages * 4096 - 16))


def test_an_append_that_does_not_fit_leaves_the_file_as_it_was(tiny_disk):
    from alignkit.cache import writing

    pairs = tiny_disk / "judged_pairs.jsonl"
    pairs.write_text('{"a": 1}\n')
    _fill(tiny_disk, 1)
    with pytest.raises(DiskFullError, match=rf"^{tiny_disk}: no space left on the device while saving "
                                            r"judged_pairs.jsonl \(about 19.5 KiB needed"):
        with writing(pairs, "a", needed_bytes=20_000) as f:
            f.writelines('{"b": "' + "x" * 990 + '"}\n' for _ in range(20))
    assert pairs.read_text() == '{"a": 1}\n'  # no torn line left behind


def test_the_judge_cache_and_the_metrics_log_on_a_full_disk(tiny_disk):
    from alignkit.eval.judges.cache import VerdictCache
    from alignkit.train.metrics import MetricsWriter

    _fill(tiny_disk, 0)
    with pytest.raises(DiskFullError, match=r"while saving verdicts.jsonl"):
        VerdictCache(tiny_disk / "verdicts.jsonl").put("k", "A" * 10_000)
    with pytest.raises(DiskFullError, match=r"while saving metrics.jsonl \(about 4.9 KiB needed"):
        MetricsWriter(tiny_disk / "metrics.jsonl").write({"step": 1, "loss": 0.5, "note": "x" * 5000})


def test_a_run_on_a_full_disk_names_the_file_it_could_not_write(tiny_disk, capsys):
    """Whatever the run is writing when the device fills up (its folder's lock, marker, recipe.yaml or its
    TensorBoard events): one line naming it, exit 1, no traceback."""
    from alignkit.cli import main

    named = set()
    for free_pages in range(4):
        for leftover in tiny_disk.iterdir():
            subprocess.run(["rm", "-rf", str(leftover)], check=True)
        _fill(tiny_disk, free_pages)
        code = main(["run", "recipes/dpo_gpt2_hh.yaml", f"output_dir={tiny_disk / 'run'}", "train.device=cpu",
                     "model.from_config={model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 1024}"])
        err = capsys.readouterr().err
        assert code == 1, err
        assert "Traceback" not in err and "no space left on the device while saving" in err, err
        named.add(err.split("while saving", 1)[1].split()[0])
    assert {".alignkit-lock", "recipe.yaml"} <= named, named


@pytest.mark.parametrize("existed", [False, True], ids=["absent", "existing"])
def test_a_rewrite_that_does_not_fit_leaves_the_file_as_it_was(tiny_disk, existed):
    from alignkit.cache import writing

    table = tiny_disk / "comparison.md"
    if existed:
        table.write_text("| old |\n")
    _fill(tiny_disk, 1)
    with pytest.raises(DiskFullError, match=rf"^{tiny_disk}: no space left on the device while saving "
                                            r"comparison.md \(about 19.5 KiB needed"):
        with writing(table, needed_bytes=20_000) as f:
            f.writelines("| " + "x" * 990 + " |\n" for _ in range(20))
    assert (table.read_text() == "| old |\n") if existed else not table.exists()
    assert sorted(p.name for p in tiny_disk.iterdir()) == (["comparison.md", "filler"] if existed else ["filler"])
