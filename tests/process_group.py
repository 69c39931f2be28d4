"""Starting the processes of a process group by hand in tests (what torchrun does), and seeing them end."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on now, for a rendezvous on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(command: list[str], cwd: Path, env: dict[str, str], *, world_size: int = 2,
              timeout: float = 120) -> list[tuple[int, str]]:
    """Run ``command`` as ranks 0..world_size-1 of one process group; return each rank's exit code and output.

    Raises:
        AssertionError: a rank was still running after ``timeout`` seconds (left waiting at a collective);
            every rank is killed first, so a hang fails the test, not the suite.
    """
    group = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world_size)}
    procs = [subprocess.Popen(command, cwd=cwd, env={**group, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(world_size)]
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        hung = [rank for rank, proc in enumerate(procs) if proc.poll() is None]
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        logs = [proc.communicate()[0][-3000:] for proc in procs]
    assert not hung, f"ranks {hung} hung:\n" + "\n".join(logs)
    return [(proc.returncode, log) for proc, log in zip(procs, logs, strict=True)]
