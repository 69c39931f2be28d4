"""A process that stops answering (SIGSTOP) fails the others after distributed.timeout_s, naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_group import free_port

from alignkit.train.config import DistributedConfig

WORKER = Path(__file__).with_name("timeout_worker.py")


def test_the_timeout_is_a_recipe_setting_with_a_default_far_below_torchs():
    assert DistributedConfig().timeout_s == 600
    with pytest.raises(ValueError, match="timeout_s"):
        DistributedConfig(timeout_s=0)


@pytest.mark.slow
def test_a_frozen_process_is_named_after_the_timeout(tmp_path):
    group = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
             "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), "2"], cwd=tmp_path,
                              env={**group, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        started = time.monotonic()
        out, _ = procs[0].communicate(timeout=90)
        waited = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
    assert procs[0].returncode == 1, out
    assert "process 0 of 2 waited 2 s (distributed.timeout_s) at a collective: process 1 of 2 stopped answering" in out
    assert waited < 60
