"""`alignkit run` on several processes: the layout is checked before anything starts, a sharded run (SFT,
cached reference) gives the one-process run's model and metrics, two torchrun agents rendezvous as two
machines would, and a process that fails stops the others with its error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from process_group import free_port
from safetensors.torch import load_file

from alignkit.cli import main
from alignkit.train.config import DistributedConfig
from alignkit.train.distributed import DistEnv
from alignkit.train.sharding import ShardingError, decoder_blocks, shard_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_data import tiny_recipe  # noqa: E402

CLI = [sys.executable, "-m", "alignkit.cli"]
# The evaluation after training runs on the main process alone: nothing in it may wait for the others.
SHARDED = ["distributed.strategy=fsdp", "sft.enabled=true", "sft.max_steps=2", "sft.batch_size=4",
           "reference.mode=cached", "train.eval_every=1", "data.test_size=4", "eval.reward=vader_sentiment",
           "eval.num_prompts=2", "eval.samples_per_prompt=2", "eval.max_new_tokens=4", "eval.batch_size=4"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ALIGNKIT_CACHE": str(tmp_path / "cache")}


def _run(cmd: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------------------
# Refused before any process starts (default tier)

@pytest.mark.parametrize(("overrides", "expected"), [
    (["distributed.strategy=fsdp", "distributed.mesh.shard=3"], "distributed.mesh: replicate 1 x shard 3"),
    (["train.batch_size=6", "train.grad_accum=2"], "train.batch_size: 6 examples do not split over 2"),
    (["distributed.mesh.shard=2"], "mesh applies to strategy fsdp only"),
    (["distributed.strategy=zero3"], "distributed.strategy"),
])
def test_a_layout_the_processes_cannot_share_is_refused_before_they_start(tmp_path, capsys, overrides, expected):
    recipe = tiny_recipe(tmp_path)
    assert main(["run", recipe, "--nproc", "2", *overrides]) == 2
    err = capsys.readouterr().err
    assert expected in " ".join(err.split()), err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # measures the machine: a few seconds, more where bf16 is emulated
def test_the_launcher_measures_precision_once_before_the_processes_start(tmp_path, monkeypatch):
    """With ``precision: auto`` on a machine read (not stated), the launcher measures each phase's speed into the
    cache before starting the processes, so that they all read one measurement and choose alike."""
    from alignkit.commands.launch import _check
    from alignkit.models.hardware import HARDWARE_ENV

    monkeypatch.delenv(HARDWARE_ENV)
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "fp32"))
    _check(tiny_recipe(tmp_path), ["train.device=cpu", "train.precision=fp32"], [], 2)
    assert not list((tmp_path / "fp32").rglob("phase-training-*.json"))  # fp32 asked for: nothing to measure
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "auto"))
    _check(tiny_recipe(tmp_path), ["train.device=cpu"], [], 2)
    for phase in ("training", "decoding"):
        for dtype in ("float32", "bfloat16"):
            assert list((tmp_path / "auto").rglob(f"phase-{phase}-{dtype}-*.json")), (phase, dtype)


def test_a_model_without_known_blocks_cannot_be_sharded():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ShardingError, match="_no_split_modules"):
        decoder_blocks(model)
    with pytest.raises(ShardingError, match="use strategy ddp"):
        shard_model(model, DistributedConfig(strategy="fsdp"), DistEnv(), torch.device("cpu"))


def test_sharded_bf16_training_gathers_weights_in_bf16_unless_told_otherwise(monkeypatch):
    """bf16 autocast over sharded fp32 weights would keep a whole bf16 copy of the model per process; FSDP's
    own mixed precision replaces it, unless the recipe chose one. ``auto`` follows the hardware facts, stated
    here both ways (whatever this machine is)."""
    from alignkit.models.hardware import HARDWARE_ENV
    from alignkit.train.config import MixedPrecisionConfig
    from alignkit.workflow.sharded_run import compute_precision

    cpu = torch.device("cpu")
    fsdp = DistributedConfig(strategy="fsdp")
    bf16 = MixedPrecisionConfig(param_dtype="bfloat16", reduce_dtype="float32")
    assert compute_precision(fsdp, "bf16", cpu).mixed_precision == bf16
    assert compute_precision(fsdp, "fp32", cpu).mixed_precision is None
    monkeypatch.setenv(HARDWARE_ENV, "no-bf16")
    assert compute_precision(fsdp, "auto", cpu).mixed_precision is None
    monkeypatch.setenv(HARDWARE_ENV, "native-bf16")
    assert compute_precision(fsdp, "auto", cpu).mixed_precision == bf16
    chosen = DistributedConfig(strategy="fsdp", mixed_precision=MixedPrecisionConfig(param_dtype="float16"))
    assert compute_precision(chosen, "bf16", cpu) == chosen


def test_online_recipes_refuse_fsdp(tmp_path, capsys):
    recipe = sorted((Path(__file__).resolve().parents[2] / "recipes" / "online").glob("*.yaml"))[0]
    assert main(["validate", str(recipe), "distributed.strategy=fsdp"]) == 2
    assert "strategy ddp only" in " ".join(capsys.readouterr().err.split())


# --------------------------------------------------------------------------------------------------------
# Real processes (slow tier)

def _assert_same_measurements(a: object, b: object, where: str = "") -> None:
    """Equal texts and counts, numbers equal to float rounding (the weights agree to ~1e-7), timings aside."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if key != "seconds":
                _assert_same_measurements(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_measurements(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-3, abs=1e-4), where
    else:
        assert a == b, where


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    diff = sum(float((wa[k] - wb[k]).norm() ** 2) for k in wa) ** 0.5
    norm = sum(float(wa[k].norm() ** 2) for k in wa) ** 0.5
    assert diff / norm < 1e-5, diff / norm
    # The best checkpoint and the last step's resume state are gathered into the one-process files.
    for stage in ("sft", "preference"):
        for name in ("best/trainable.safetensors", "latest"):
            assert (a / stage / "checkpoints" / name).exists() == (b / stage / "checkpoints" / name).exists()
        last = (a / stage / "checkpoints" / "latest").read_text().strip()
        for file in (f"{last}/trainable.safetensors", f"{last}/resume_state.safetensors",
                     "best/trainable.safetensors"):
            ta, tb = (load_file(str(x / stage / "checkpoints" / file)) for x in (a, b))
            assert ta.keys() == tb.keys(), file
            for key in ta:
                torch.testing.assert_close(tb[key], ta[key], rtol=1e-4, atol=1e-5, msg=f"{stage} {file} {key}")
        assert (json.loads((a / stage / "checkpoints" / last / "resume_state.json").read_text())["optimizer"]
                .keys() == json.loads((b / stage / "checkpoints" / last / "resume_state.json").read_text())
                ["optimizer"].keys())
    for stage in ("sft", "preference"):
        ra = [json.loads(x) for x in (a / stage / "metrics.jsonl").read_text().splitlines()]
        rb = [json.loads(x) for x in (b / stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in ra] == [r["step"] for r in rb]
        for x, y in zip(ra, rb, strict=True):
            for key in ("loss", "eval/loss", "eval/rewards/margins"):
                if key in x:
                    assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), (stage, x["step"], key)


# A plugin is imported by every process: this one logs which processes write the reference cache.
COUNT_CACHE_WRITES = """
import torch.distributed as dist
from alignkit.models import reference_cache

_save = reference_cache._atomic_save


def _logged(*args, **kwargs):
    with open({log!r}, "a") as f:
        f.write(f"{{dist.get_rank()}}\\n")
    return _save(*args, **kwargs)


reference_cache._atomic_save = _logged
"""


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("one")
    recipe = tiny_recipe(tmp_path)
    proc = _run([*CLI, "run", recipe, *SHARDED], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "run"


@pytest.mark.slow
@pytest.mark.parametrize("layout", [[], ["distributed.mesh.replicate=2", "distributed.mesh.shard=1"]],
                         ids=["fsdp", "hsdp-2x1"])
def test_two_sharded_processes_give_the_one_process_run(tmp_path, one_process, layout):
    recipe = tiny_recipe(tmp_path)
    (tmp_path / "count_writes.py").write_text(COUNT_CACHE_WRITES.format(log=str(tmp_path / "writes.txt")))
    proc = _run([*CLI, "run", recipe, "--nproc", "2", "--plugin", str(tmp_path / "count_writes.py"), *SHARDED,
                 *layout], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(one_process, tmp_path / "run")
    # The reference cache: computed in shares, written once, by the main process.
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
    assert (tmp_path / "writes.txt").read_text() == "0\n"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["stages"]["preference"]["steps"] == 2
    expected = json.loads((one_process / "report.json").read_text())
    _assert_same_measurements(report["reward_kl"], expected["reward_kl"])  # the same model, evaluated alike


@pytest.mark.slow
def test_two_machines_rendezvous_over_c10d(tmp_path, one_process):
    """Two torchrun agents, one per "machine", meet at a c10d rendezvous on 127.0.0.1 (the multi-node command
    of docs/distributed.md, on one machine)."""
    recipe = tiny_recipe(tmp_path)
    port = free_port()
    agents = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                          f"--node-rank={rank}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                          "--rdzv-id=alignkit-test", "--module", "alignkit.cli", "run", recipe, *SHARDED],
                         cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]
    try:
        outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    _assert_same_run(one_process, tmp_path / "run")


FAILING_LOSS = '''
import torch.distributed as dist
from alignkit.losses import register_loss
from alignkit.losses.dpo import DPOConfig, dpo


@register_loss("dpo_failing_on_rank_1", config=DPOConfig, needs_reference=True)
def failing(stats, cfg):
    """DPO, except on the second process, whose first call fails."""
    if dist.is_initialized() and dist.get_rank() == 1:
        raise ValueError("planted failure on process 1")
    return dpo(stats, cfg)
'''


@pytest.mark.slow
def test_a_failing_process_stops_every_process_with_its_error(tmp_path):
    recipe = tiny_recipe(tmp_path)
    (tmp_path / "failing.py").write_text(FAILING_LOSS)
    proc = _run([*CLI, "run", recipe, "--nproc", "2", "--plugin", str(tmp_path / "failing.py"),
                 "loss.name=dpo_failing_on_rank_1", "distributed.strategy=fsdp", "data.test_size=4"], tmp_path,
                timeout=120)
    out = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "planted failure on process 1" in out
    assert "process 1 of 2 exited with code 2" in out
