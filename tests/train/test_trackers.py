"""Experiment trackers: TensorBoard by default, W&B offline and trackio locally, fed what metrics.jsonl holds."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from alignkit.cli import main
from alignkit.recipe import RecipeError, load_recipe
from alignkit.train.metrics import MetricsWriter
from alignkit.train.tracker_config import LoggingConfig, missing_tracker_packages
from alignkit.train.trackers import open_trackers, record_scalars, tracking

ROOT = Path(__file__).resolve().parents[2]
TINY_GPT2 = "{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 256}"
HPARAMS = {"name": "tiny", "train": {"lr": 0.001, "max_steps": 3}}
RECORDS = [
    {"stage": "sft", "step": 1, "loss": 2.5, "grad_norm": 1.0},
    {"stage": "sft", "step": 2, "loss": 2.0, "grad_norm": 0.5},
    {"stage": "preference", "step": 1, "loss": 0.69, "rewards/margins": 0.0},
    {"stage": "preference", "step": 2, "eval/loss": 0.6, "eval/rewards/accuracies": 0.75},
]


def _expected(records: list[dict]) -> dict[str, dict[int, float]]:
    """``<stage>/<name> -> {step: value}`` of metrics records (what every tracker must hold)."""
    out: dict[str, dict[int, float]] = {}
    for record in records:
        for name, value in record_scalars(record).items():
            out.setdefault(f"{record['stage']}/{name}", {})[record["step"]] = value
    return out


def _write(records: list[dict], folder: Path) -> list[dict]:
    """Write ``records`` through the stages' MetricsWriters; return what metrics.jsonl files hold."""
    for stage in ("sft", "preference"):
        writer = MetricsWriter(folder / stage / "metrics.jsonl")
        for record in records:
            if record["stage"] == stage:
                writer.write(record)
    return [json.loads(line) for stage in ("sft", "preference")
            for line in (folder / stage / "metrics.jsonl").read_text().splitlines()]


def _tensorboard_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _tiny_run_args(hh_path: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "recipes/dpo_gpt2_hh.yaml", f"output_dir={out}", f"model.from_config={TINY_GPT2}",
            "model.tokenizer=gpt2", f"data.source.path={hh_path}", f"data.test_source.path={hh_path}",
            "data.max_examples=16", "data.max_length=64", "data.max_prompt_length=48", "eval=null",
            "sft.batch_size=4", "sft.grad_accum=1", "sft.max_steps=2", "sft.warmup_steps=0", "sft.eval_every=null",
            "train.batch_size=4", "train.grad_accum=1", "train.max_steps=3", "train.warmup_steps=0",
            "train.eval_every=2", "train.max_eval_examples=4", "train.save_every=100", *extra]


def test_tiny_run_writes_tensorboard_events_with_the_scalars_of_metrics_jsonl(tmp_path, hh_path):
    """The default: a run's TensorBoard events hold every scalar of every stage's metrics.jsonl, at its step,
    as <stage>/<name>, and the recipe once as text; `tensorboard --inspect` reads them."""
    out = tmp_path / "run"
    assert main(_tiny_run_args(hh_path, out)) == 0
    records = [json.loads(line) for stage in ("sft", "preference")
               for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
    expected = _expected(records)
    assert {"sft/loss", "preference/loss", "preference/eval/loss"} <= set(expected)
    got = _tensorboard_scalars(out / "tensorboard")
    assert set(got) == set(expected)
    for tag, by_step in expected.items():
        assert got[tag] == pytest.approx(by_step, rel=1e-6), tag  # TensorBoard stores float32

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    (text,) = acc.Tensors("recipe/text_summary")
    logged = yaml.safe_load(textwrap.dedent(text.tensor_proto.string_val[0].decode()))
    assert logged == yaml.safe_load((out / "recipe.yaml").read_text())

    inspect = subprocess.run([sys.executable, "-m", "tensorboard.main", "--inspect", "--logdir",
                              str(out / "tensorboard")], capture_output=True, text=True, timeout=120)
    assert inspect.returncode == 0, inspect.stderr
    assert "preference/eval/loss" in inspect.stdout and "sft/loss" in inspect.stdout


def test_tensorboard_can_be_turned_off(tmp_path, hh_path):
    out = tmp_path / "run"
    assert main(_tiny_run_args(hh_path, out, "sft.enabled=false", "train.max_steps=1", "train.eval_every=null",
                               "logging.tensorboard=false")) == 0
    assert (out / "preference" / "metrics.jsonl").is_file() and not (out / "tensorboard").exists()


def test_only_records_written_inside_tracking_reach_the_trackers(tmp_path):
    """Records outside the block (or on a process whose writer is disabled) reach no tracker."""
    trackers = open_trackers(LoggingConfig(), tmp_path, name="t", hparams=HPARAMS)
    MetricsWriter(tmp_path / "before" / "metrics.jsonl").write({"stage": "before", "step": 1, "loss": 1.0})
    with tracking(trackers):
        MetricsWriter(tmp_path / "x" / "metrics.jsonl", enabled=False).write({"stage": "other", "step": 1, "loss": 3.0})
        _write(RECORDS, tmp_path)
    MetricsWriter(tmp_path / "after" / "metrics.jsonl").write({"stage": "after", "step": 1, "loss": 1.0})
    got, expected = _tensorboard_scalars(tmp_path / "tensorboard"), _expected(RECORDS)
    assert set(got) == set(expected)
    for tag, by_step in expected.items():
        assert got[tag] == pytest.approx(by_step, rel=1e-6), tag  # TensorBoard stores float32


def _wandb_records(path: Path):
    """The protobuf records of a W&B offline run file (LevelDB-style log: 7-byte header, 32 KiB blocks of
    chunks with a 7-byte header each: checksum, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, raw = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            pos += 32768 - pos % 32768 if pos % 32768 else 0
        elif kind == 1:
            raw.append(chunk)
        elif kind in (2, 3):
            pending = (pending if kind == 3 else b"") + chunk
        elif kind == 4:
            raw.append(pending + chunk)
    for blob in raw:
        record = pb.Record()
        record.ParseFromString(blob)
        yield record


@pytest.mark.slow  # W&B starts its service process: seconds of CPU on its own
def test_wandb_offline_run_holds_the_metrics_and_the_recipe_once(tmp_path):
    pytest.importorskip("wandb")
    cfg = LoggingConfig(tensorboard=False, wandb=True)
    with tracking(open_trackers(cfg, tmp_path, name="tiny", hparams=HPARAMS)):
        records = _write(RECORDS, tmp_path)
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in _wandb_records(run_file)):
        assert time.monotonic() < deadline, "the W&B service never finished the run file"
        time.sleep(0.5)  # the service process may still be flushing the file when finish() returns
    got: dict[str, dict[int, float]] = {}
    configs = []
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            assert record.run.project == "alignkit" and record.run.display_name == "tiny"
            configs.append({i.key: json.loads(i.value_json) for i in record.run.config.update if i.key != "_wandb"})
        elif kind == "history":
            # W&B keeps a key with "/" as its parts (nested_key)
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            (stage,) = {k.split("/")[0] for k in items if not k.startswith("_")}
            step = items.pop(f"{stage}/step")
            for key, value in items.items():
                if not key.startswith("_"):
                    got.setdefault(key, {})[step] = value
    assert configs == [HPARAMS]
    assert got == _expected(records)


_TRACKIO_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_trackers import HPARAMS, RECORDS, _write
from alignkit.train.tracker_config import LoggingConfig
from alignkit.train.trackers import open_trackers, tracking
folder = Path({folder!r})
cfg = LoggingConfig(tensorboard=False, trackio={{"project": "tiny-project"}})
with tracking(open_trackers(cfg, folder, name="tiny", hparams=HPARAMS)):
    _write(RECORDS, folder)
from trackio.sqlite_storage import SQLiteStorage
print("LOGS=" + json.dumps(SQLiteStorage.get_logs("tiny-project", "tiny")))
print("CONFIG=" + json.dumps(SQLiteStorage.get_run_config("tiny-project", "tiny")))
"""


@pytest.mark.slow  # a fresh process that imports torch and trackio
def test_trackio_local_run_holds_the_metrics_and_the_recipe(tmp_path):
    """In a fresh process: trackio reads its folder ($TRACKIO_DIR) once, when imported."""
    pytest.importorskip("trackio")
    script = _TRACKIO_SCRIPT.format(tests=str(Path(__file__).parent), folder=str(tmp_path))
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines() if line.startswith(("LOGS=", "CONFIG=")))
    got: dict[str, dict[int, float]] = {}
    for entry in json.loads(lines["LOGS"]):
        for key, value in entry.items():
            if key not in ("step", "timestamp"):
                got.setdefault(key, {})[entry["step"]] = value
    assert got == _expected(RECORDS)
    config = json.loads(lines["CONFIG"])
    assert {k: v for k, v in config.items() if not k.startswith("_")} == HPARAMS
    assert (tmp_path / "trackio" / "tiny-project.db").is_file()


def test_a_tracker_without_its_package_is_refused_naming_the_extra(tmp_path, monkeypatch, capsys):
    """A recipe asking for W&B where wandb is not importable fails validation naming the extra, exit 2."""
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    assert missing_tracker_packages(LoggingConfig(wandb=True))[0][0] == "wandb"
    with pytest.raises(RecipeError, match=r"logging\.wandb.*pip install 'alignkit\[wandb\]'"):
        load_recipe(ROOT / "recipes" / "dpo_gpt2_hh.yaml", overrides=["logging.wandb=true"])
    assert main(["validate", "recipes/dpo_gpt2_hh.yaml", "logging.wandb={project: p}"]) == 2
    err = capsys.readouterr().err
    assert "alignkit[wandb]" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_logging_section_accepts_true_false_and_refuses_unknown_modes():
    assert LoggingConfig.model_validate({"wandb": True}).wandb.mode == "offline"  # type: ignore[union-attr]
    assert LoggingConfig.model_validate({"trackio": False}).trackio is None
    with pytest.raises(ValueError, match="mode"):
        LoggingConfig.model_validate({"wandb": {"mode": "cloud"}})

