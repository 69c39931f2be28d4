"""`alignkit online` with ``online.rollout.engine: server`` end to end, against `alignkit serve` started as a
second process on a free port (real HTTP, real weight pushes through the file system)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ROOT
from test_online_e2e import RECIPE, _tiny_model_folder

from alignkit.cli import main
from alignkit.commands.serve import ChatModel, make_server
from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer
from alignkit.workflow.model_io import load_run_model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model: Path, weights_root: Path, *, timeout_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    """`alignkit serve MODEL` in its own process on a free port; its URL once ``/health`` answers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from alignkit.cli import main; sys.exit(main())",
                             "serve", str(model), "--port", str(port), "--quiet", "--allow-weights-from",
                             str(weights_root), "--name", "base"], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"alignkit serve did not listen within {timeout_s:g} s (exit status {proc.wait()})")


@contextmanager
def serve_in_thread(model: Path, weights_root: Path) -> Iterator[str]:
    """`alignkit serve`'s server over ``model`` in this process (a thread), on a free port."""
    policy, tokenizer = load_run_model(model)
    server = make_server(ChatModel(policy, tokenizer, "base", weights_root=weights_root), port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def serve_in_process(model: Path, weights_root: Path) -> Iterator[str]:
    """`alignkit serve` as a second process."""
    proc, url = start_server(model, weights_root)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("serving", [serve_in_thread, pytest.param(serve_in_process, marks=pytest.mark.slow)])
def test_alignkit_online_trains_on_rollouts_of_alignkit_serve(tmp_path, capfd, serving):
    model = _tiny_model_folder(tmp_path / "tiny")
    offline_gpt2_tokenizer().save_pretrained(model)
    recipe = tmp_path / "online.yaml"
    recipe.write_text(RECIPE.replace("MODEL", str(model)))
    with serving(model, tmp_path) as url:
        common = [f"output_dir={tmp_path / 'run'}", "train.max_steps=3", "eval=null",
                  f"online.rollout={{engine: server, url: {url}}}"]
        assert main(["online", str(recipe), *common]) == 0
    history = [json.loads(line) for line in (tmp_path / "run" / "online" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 3
    assert all(h["sampler_logp_abs_diff"] < 1e-5 for h in history), history  # every step from the pushed weights
    assert json.loads((tmp_path / "run" / "report.json").read_text())["online"]["rollout"]["engine"] == "server"
    capfd.readouterr()
    # The server is gone: the next run stops at its first rollout with one line and exit status 2.
    code = main(["online", str(recipe), *common, "--overwrite"])
    err = " ".join(capfd.readouterr().err.split())
    assert code == 2 and "did not answer" in err and "Traceback" not in err, err


@pytest.mark.parametrize(("overrides", "message"), [
    (["online.rollout={engine: server}"], "online.rollout.url is required with engine: server"),
    (["online.rollout={engine: server, url: 'ftp://x'}"], "is not an http(s) URL"),
    (["online.async={max_staleness: 2}"], "online.async.max_staleness"),
    (["online.async={max_staleness: 1}"], "set online.rollout_correction"),
    (["online.async={max_staleness: 1}", "online.rollout_correction=tis", "online.dynamic_sampling={enabled: true}"],
     "online.dynamic_sampling resamples from the current weights"),
])
def test_bad_rollout_settings_are_one_line_errors(tmp_path, capfd, overrides, message):
    recipe = tmp_path / "online.yaml"
    recipe.write_text(RECIPE.replace("MODEL", str(tmp_path)))
    assert main(["online", str(recipe), "--validate", *overrides]) == 2
    err = " ".join(capfd.readouterr().err.split())  # the console wraps long lines
    assert message in err and "Traceback" not in err, err


def test_the_documented_rollout_settings_validate():
    import yaml

    from alignkit.online.config import OnlineConfig

    doc = (ROOT / "docs" / "online.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Rollouts from an inference server"):]
    block = section[section.index("```yaml") + len("```yaml"):section.index("```", section.index("```yaml") + 7)]
    cfg = OnlineConfig.model_validate({**yaml.safe_load(block)["online"], "reward": "vader_sentiment"})
    assert cfg.rollout.engine == "server" and cfg.async_.max_staleness == 1


def test_server_and_one_step_off_runs_refuse_several_processes(tmp_path):
    import torch
    from test_online_e2e import _recipe

    from alignkit.commands.online import OnlineRun

    for overrides in (["online.async={max_staleness: 1}", "online.rollout_correction=tis"],
                      ["online.rollout={engine: server, url: 'http://127.0.0.1:9'}"]):
        run = OnlineRun(_recipe(tmp_path, *overrides))
        run.check_processes(1, torch.device("cpu"))
        with pytest.raises(ValueError, match="start without --nproc"):
            run.check_processes(2, torch.device("cpu"))
