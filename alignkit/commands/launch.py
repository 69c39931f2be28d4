"""`alignkit run --nproc N`: start N processes on this machine with torchrun, each running the same command.

The recipe is checked here first, so a bad recipe or a layout the processes cannot share is one clear error
(exit 2) rather than N of them; a process that fails makes torchrun stop the others, and its exit code
becomes the command's.

The processes are started by this Python, with the folder that holds alignkit first on their import path
and the current folder not on it (a ``rich.py`` lying there is not imported). SIGTERM or Ctrl-C on the
launcher stops them and exits 143 or 130; a launcher killed outright (SIGKILL) is noticed by each process
(:func:`watch_launcher`), which then stops too.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

from alignkit.models.precision import resolve_phases
from alignkit.online.parallel import check_world_size
from alignkit.recipe import RecipeError, load_recipe
from alignkit.recipe.online import is_online_recipe, load_online_recipe
from alignkit.workflow.environment import resolve_device
from alignkit.workflow.sharded_run import check_process_layout, training_sections

__all__ = ["LAUNCHER_PID_VARIABLE", "launch_processes", "strip_nproc", "watch_launcher", "worker_command"]

# Set in each started process: the launcher's pid, which the process watches (see watch_launcher).
LAUNCHER_PID_VARIABLE = "ALIGNKIT_LAUNCHER_PID"

# What each process runs: the folder holding alignkit replaces the current folder on the import path ('' and
# any relative entry, such as PYTHONPATH=., name a place relative to the current folder).
_WORKER_CODE = ("import os, sys; sys.path[:] = [p for p in sys.path if os.path.isabs(p)]; sys.path.insert(0, {root!r}); "
                "from alignkit.cli import main; sys.exit(main())")


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N`` (what each started process runs)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line of one started process: this Python, importing alignkit from where this one did and
    nothing from the current folder, running ``alignkit <argv>``."""
    root = str(Path(__file__).resolve().parents[2])
    return [sys.executable, "-u", "-c", _WORKER_CODE.format(root=root), *argv]


def watch_launcher(poll_s: float = 0.5) -> None:
    """In a started process: stop (SIGTERM to itself) once the launcher that started it is gone.

    A launcher killed outright cannot stop its processes, which run in sessions of their own; each one sees
    its parent change instead. Does nothing in a process not started by :func:`launch_processes`.
    """
    launcher = os.environ.get(LAUNCHER_PID_VARIABLE, "")
    if not launcher.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(launcher):
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="alignkit-launcher-watch", daemon=True).start()


@contextmanager
def _launcher_environment() -> Iterator[None]:
    """While the processes run: they inherit this process's pid to watch, and torchrun's own log lines
    (which processes it is signalling, and why) stay quiet; our messages say what happened."""
    elastic = logging.getLogger("torch.distributed.elastic")
    level, before = elastic.level, os.environ.get(LAUNCHER_PID_VARIABLE)
    os.environ[LAUNCHER_PID_VARIABLE] = str(os.getpid())
    elastic.setLevel(logging.ERROR)
    try:
        yield
    finally:
        elastic.setLevel(level)
        if before is None:
            os.environ.pop(LAUNCHER_PID_VARIABLE, None)
        else:
            os.environ[LAUNCHER_PID_VARIABLE] = before


def _check(recipe_path: str, overrides: Sequence[str], plugins: Sequence[str], nproc: int) -> None:
    online = is_online_recipe(recipe_path)
    recipe: Any = (load_online_recipe if online else load_recipe)(recipe_path, list(overrides), list(plugins))
    check_process_layout(recipe.distributed, training_sections(recipe), nproc)
    if online:
        check_world_size(recipe.train.prompts_per_step, nproc)
    else:
        # precision auto measures the machine once and caches it: here, before the processes start, so that
        # every process reads the same measurement (measured apart, a close call could split them bf16/fp32)
        resolve_phases(recipe.train.precision, resolve_device(recipe.train.device))


def launch_processes(nproc: int, argv: Sequence[str], recipe_path: str, overrides: Sequence[str],
                     plugins: Sequence[str], console: Console) -> int:
    """Run ``alignkit <argv>`` in ``nproc`` processes (torchrun, one machine); return the exit code."""
    if nproc < 1:
        raise RecipeError(f"--nproc must be at least 1, got {nproc}")
    _check(recipe_path, overrides, plugins, nproc)
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--no-python",
                                         *worker_command(strip_nproc(argv))])
    try:
        with _launcher_environment():
            run(args)
    except SignalException as err:  # torchrun has stopped the processes already
        console.print(f"[yellow]stopped[/]: {err.sigval.name} received; the {nproc} processes were stopped "
                      "(rerun with --resume to continue from the last checkpoint)")
        return 128 + int(err.sigval)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()  # the root cause; the others were stopped after it
        console.print(f"[bold red]error:[/] process {rank} of {nproc} exited with code {failure.exitcode} "
                      "(its message is above); the others were stopped")
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0
