"""A run folder is a result: refused, replaced only when asked, resumed only under the same recipe."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from workflow_recipes import tiny_jsonl_recipe as _recipe

from alignkit.cli import main
from alignkit.recipe import Recipe, RecipeError, load_recipe, recipe_to_yaml
from alignkit.workflow.run_folder import FolderState, claim_run_folder, inspect_run_folder


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    """stderr with the terminal's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """A finished run and the bytes of every file it wrote."""
    tmp_path = tmp_path_factory.mktemp("finished")
    recipe = _recipe(tmp_path)
    assert main(["run", str(recipe)]) == 0
    return recipe, _snapshot(tmp_path / "run")


def test_a_finished_run_is_never_overwritten_without_being_asked(finished, capsys):
    recipe, before = finished
    run = recipe.parent / "run"
    assert main(["run", str(recipe)]) == 2
    assert "holds a finished run" in _err(capsys)
    assert main(["run", str(recipe), "train.lr=1e-3"]) == 2  # another recipe: refused too, recipe.yaml kept
    assert _snapshot(run) == before


def test_resume_of_a_finished_run_changes_nothing(finished, capsys):
    recipe, before = finished
    assert main(["run", str(recipe), "--resume"]) == 0
    assert "nothing changed" in _err(capsys)
    assert _snapshot(recipe.parent / "run") == before


def test_resume_with_a_changed_recipe_is_refused_and_shows_the_difference(finished, capsys):
    recipe, before = finished
    assert main(["run", str(recipe), "--resume", "loss.name=ipo"]) == 2
    assert "loss.name: 'dpo' -> 'ipo'" in _err(capsys)
    assert _snapshot(recipe.parent / "run") == before


def test_resume_of_a_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["run", str(_recipe(tmp_path)), "--resume"]) == 2
    assert "holds no run to resume" in _err(capsys)
    assert not (tmp_path / "run").exists()


def test_overwrite_replaces_the_run_and_starts_clean(tmp_path):
    recipe = _recipe(tmp_path)
    assert main(["run", str(recipe)]) == 0
    stray = tmp_path / "run" / "preference" / "checkpoints" / "step_999"
    stray.mkdir()
    assert main(["run", str(recipe), "--overwrite", "train.max_steps=1"]) == 0
    assert not stray.exists()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["stages"]["preference"]["steps"] == 1
    metrics = (tmp_path / "run" / "preference" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics if "loss" in json.loads(line)] == [1]


@pytest.mark.parametrize(
    ("state", "resume", "overwrite", "expected"),
    [
        (FolderState("new"), False, False, "start"),
        (FolderState("interrupted", "", True), True, False, "resume"),
        (FolderState("finished", "", True), True, False, "finished"),
        (FolderState("finished", "", True), False, True, "replace"),
        (FolderState("different", "loss.name: 'dpo' -> 'ipo'", False), False, False, "start"),  # only a recipe.yaml
    ],
)
def test_claim_decisions(state, resume, overwrite, expected, tmp_path):
    assert claim_run_folder(tmp_path, state, resume=resume, overwrite=overwrite) == expected


@pytest.mark.parametrize(
    ("state", "resume", "overwrite", "message"),
    [
        (FolderState("interrupted", "", True), False, False, "--resume to continue it"),
        (FolderState("different", "x: 1 -> 2", True), True, False, "x: 1 -> 2"),
        (FolderState("new"), True, False, "holds no run to resume"),
        (FolderState("foreign"), False, True, "not an alignkit run"),
        (FolderState("finished", "", True), True, True, "contradict"),
    ],
)
def test_claim_refusals(state, resume, overwrite, message, tmp_path):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(")):
        claim_run_folder(tmp_path, state, resume=resume, overwrite=overwrite)


def test_a_folder_of_other_files_is_never_deleted(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert main(["run", str(recipe), "--overwrite"]) == 2
    assert "not an alignkit run" in _err(capsys)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_a_users_folder_with_a_recipe_yaml_is_not_a_run(tmp_path, capsys):
    """`output_dir` pointing at the folder of the user's own recipe: refused, and --overwrite deletes nothing."""
    recipe = _recipe(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text(recipe.read_text())  # the user's file, not a run's
    (tmp_path / "run" / "data.jsonl").write_text("mine")
    assert main(["run", str(recipe), "--overwrite"]) == 2
    assert "not an alignkit run" in _err(capsys)
    assert (tmp_path / "run" / "data.jsonl").read_text() == "mine"


def test_inspecting_a_run_folder_runs_none_of_its_code(finished, tmp_path):
    """A plugin planted in a run folder's recipe is never imported by run, --resume or compare."""
    recipe, _ = finished
    folder = tmp_path / "planted"
    shutil.copytree(recipe.parent / "run", folder)
    marker = tmp_path / "executed"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    saved = (folder / "recipe.yaml").read_text()
    assert "plugins: []" in saved
    (folder / "recipe.yaml").write_text(saved.replace("plugins: []", "plugins:\n- evil.py"))
    current = load_recipe(recipe, [f"output_dir={folder}"])
    assert inspect_run_folder(folder, current, Recipe, recipe_to_yaml).state == "different"
    assert main(["run", str(recipe), f"output_dir={folder}", "--resume"]) == 2
    assert not marker.exists()


def test_resume_under_the_other_strategy_continues_the_run(tmp_path):
    """distributed.strategy places the work, it is not the recipe: an fsdp run resumes under ddp, exactly."""
    recipe = _recipe(tmp_path)
    assert main(["run", str(recipe), "distributed.strategy=fsdp"]) == 0
    run = tmp_path / "run"
    whole = _snapshot(run / "model")
    checkpoints = run / "preference" / "checkpoints"
    # As if stopped after step 1: its checkpoint is the latest, nothing after it was written.
    shutil.rmtree(checkpoints / "step-0000002")
    (checkpoints / "latest").write_text("step-0000001")
    shutil.rmtree(run / "model")
    (run / "report.json").unlink()
    assert main(["run", str(recipe), "--resume", "distributed.strategy=ddp"]) == 0
    assert _snapshot(run / "model") == whole
    metrics = [json.loads(line) for line in (run / "preference" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    assert json.loads((run / "report.json").read_text())["world_size"] == 1


def test_a_folder_in_use_is_refused_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    from alignkit.workflow.folder_lock import LOCK_FILE, run_folder_lock

    recipe = _recipe(tmp_path)
    run = tmp_path / "run"
    with run_folder_lock(run):  # another run holds the folder (flock: another open file, even in this process)
        assert main(["run", str(recipe)]) == 2
        err = _err(capsys)
        assert "is in use by another run (pid" in err and str(os.getpid()) in err
        assert main(["eval", str(run), "eval.judge.kind=reward", "eval.judge.reward=vader_sentiment"]) == 2
        assert list(run.iterdir()) == [run / LOCK_FILE]  # nothing of the refused run was written
    assert not run.exists()  # the holder created the folder for its lock and removed it again
    run.mkdir()
    (run / LOCK_FILE).write_text('{"pid": 999999, "host": "gone", "since": "earlier"}')  # a killed run's file
    assert main(["run", str(recipe)]) == 0
    assert "taking over the lock of a run that stopped without releasing it (pid 999999 on gone" in _err(capsys)
    assert not (run / LOCK_FILE).exists()


def test_overwrite_checks_what_the_run_reads_before_deleting_anything(finished, tmp_path, capsys):
    recipe, before = finished
    folder = tmp_path / "copy"
    shutil.copytree(recipe.parent / "run", folder)
    for bad, field in ((f"data.source.path={tmp_path / 'missing.jsonl'}", "data.source.path: file not found"),
                       (f"model.tokenizer={tmp_path / 'no_tokenizer'}", "model.tokenizer: no such model folder"),
                       (f"reference.name_or_path={tmp_path / 'no_model'}", "reference.name_or_path: no such model")):
        assert main(["run", str(recipe), f"output_dir={folder}", "--overwrite", bad]) == 2
        assert field in _err(capsys)
        assert _snapshot(folder) == before


def test_planted_links_in_a_run_folder_are_refused_and_their_targets_untouched(finished, tmp_path, capsys):
    recipe, _ = finished
    folder = tmp_path / "copy"
    shutil.copytree(recipe.parent / "run", folder)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    # eval appends its judged pairs: not through a link.
    (folder / "judged_pairs.jsonl").symlink_to(notes)
    assert main(["eval", str(folder), "eval.judge.kind=reward", "eval.judge.reward=vader_sentiment",
                 "eval.num_prompts=2", "eval.max_new_tokens=3", "eval.baselines=[chosen]"]) == 2
    assert "judged_pairs.jsonl:itisasymboliclink" in _err(capsys).replace(" ", "")
    # --resume rewrites metrics.jsonl up to its checkpoint: not through a link.
    checkpoints = folder / "preference" / "checkpoints"
    shutil.rmtree(checkpoints / "step-0000002")
    (checkpoints / "latest").write_text("step-0000001")
    (folder / "report.json").unlink()
    (folder / "preference" / "metrics.jsonl").unlink()
    (folder / "preference" / "metrics.jsonl").symlink_to(notes)
    assert main(["run", str(recipe), f"output_dir={folder}", "--resume"]) == 2
    assert "metrics.jsonl:itisasymboliclink" in _err(capsys).replace(" ", "")
    assert notes.read_text() == "my notes\n"


def test_a_model_that_fails_to_load_claims_nothing(finished, tmp_path, capsys):
    """Before: the folder was marked and recipe.yaml (and TensorBoard's folder) written before the model loaded,
    so the same command, once the model was fixed, was refused as an interrupted run without --overwrite. Now the
    folder is claimed only once the model has loaded: a new folder is gone again, a finished run that
    --overwrite would replace is untouched, and a fixed model then runs in the same folder."""
    recipe, before = finished
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "gpt2", "n_layer": "many"}')
    bad = [f"model.name_or_path={broken}", "model.from_config=null"]
    new = tmp_path / "new"
    for _ in range(2):  # the second time is not refused as an interrupted run: the first claimed nothing
        assert main(["run", str(recipe), f"output_dir={new}", *bad]) == 2
        err = _err(capsys)
        assert str(broken) in err and "interrupted" not in err, err
        assert not new.exists()
    assert main(["run", str(recipe), f"output_dir={new}"]) == 0  # the model fixed: runs, no --overwrite needed
    assert (new / "report.json").is_file()

    folder = tmp_path / "copy"
    shutil.copytree(recipe.parent / "run", folder)
    assert main(["run", str(recipe), f"output_dir={folder}", "--overwrite", *bad]) == 2
    assert _snapshot(folder) == before  # the finished run it would have replaced is all there


@pytest.mark.parametrize(("record", "holder"), [
    ('{"pid": Infinity, "host": "gone", "since": "earlier"}', "an unreadable record"),
    ('{"pid": NaN, "host": "gone", "since": "earlier"}', "an unreadable record"),
    ("[" * 4000, "an unreadable record"),
    ('{"pid": 1' + "0" * 5000 + ', "host": "gone", "since": "earlier"}', "an unreadable record"),
    ('["pid"]', "an unreadable record"),
    ("\udcff", "an unreadable record"),
    ('{"pid": 999999, "host": "gone", "since": "earlier"}', "pid 999999 on gone since earlier"),
])
def test_a_damaged_stale_lock_is_taken_over_naming_what_it_could_read(tmp_path, record, holder):
    """The lock file of a killed run is read strictly: whatever it holds, one note and the lock is taken."""
    import io

    from rich.console import Console

    from alignkit.workflow.folder_lock import LOCK_FILE, run_folder_lock

    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_bytes(record.encode("utf-8", "surrogateescape"))
    out = io.StringIO()
    with run_folder_lock(run, Console(file=out, width=400)):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of a run that stopped without releasing it ({holder})" in out.getvalue()
