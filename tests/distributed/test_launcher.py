"""`--nproc N`: the processes import nothing from the current folder, and stop with their launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignkit.commands.launch import worker_command

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_data import tiny_recipe  # noqa: E402

PLANTED = "open({marker!r}, 'w').write('imported')\nraise SystemExit('planted rich.py imported')\n"


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ALIGNKIT_CACHE": str(tmp_path / "cache")}


def test_a_started_process_imports_nothing_from_the_current_folder(tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "rich.py").write_text(PLANTED.format(marker=str(marker)))
    proc = subprocess.run(worker_command(["losses"]), cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dpo" in proc.stdout and not marker.exists()
    # What the processes were started as before (`python -m alignkit.cli`) imports the planted module.
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", "losses"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and marker.exists()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_the_processes_stop_with_their_launcher(tmp_path, sig):
    recipe = tiny_recipe(tmp_path)
    log = (tmp_path / "launcher.log").open("w")
    launcher = subprocess.Popen([sys.executable, "-P", "-m", "alignkit.cli", "run", recipe, "--nproc", "2",
                                 "train.max_steps=100000", "train.eval_every=null", "train.save_every=null", "data.test_size=4"],
                                cwd=tmp_path, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    workers: list[int] = []
    try:
        # Training has started once both processes wrote a metrics line (the main one writes them).
        metrics = tmp_path / "run" / "preference" / "metrics.jsonl"
        _wait(lambda: launcher.poll() is not None or (metrics.is_file() and metrics.stat().st_size > 0), 240)
        assert launcher.poll() is None and metrics.is_file(), \
            (tmp_path / "launcher.log").read_text()[-3000:]
        workers = _children(launcher.pid)
        assert len(workers) == 2
        launcher.send_signal(sig)
        code = launcher.wait(timeout=120)
        assert _wait(lambda: not any(_alive(w) for w in workers), 30), "workers outlived their launcher"
    finally:
        for pid in [launcher.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
    out = (tmp_path / "launcher.log").read_text()
    assert out.count("| parameters |") == 1, out[-3000:]  # progress from the main process only
    if sig != signal.SIGKILL:
        assert code == 128 + sig, out[-3000:]
        assert f"stopped: {sig.name} received" in " ".join(out.split())
        assert "Traceback" not in out and "SignalException" not in out, out[-3000:]
