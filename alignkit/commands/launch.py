"""`alignkit run --nproc N`: start N processes on this machine with torchrun, each running the same command.

The recipe is checked here first, so a bad recipe or a layout the processes cannot share is one clear error
(exit 2) rather than N of them; a process that fails makes torchrun stop the others, and its exit code
becomes the command's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

from alignkit.models.precision import resolve_phases
from alignkit.online.parallel import check_world_size
from alignkit.recipe import RecipeError, load_recipe
from alignkit.recipe.online import is_online_recipe, load_online_recipe
from alignkit.workflow.environment import resolve_device
from alignkit.workflow.sharded_run import check_process_layout, training_sections

__all__ = ["launch_processes", "strip_nproc"]


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
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "alignkit.cli",
                                         *strip_nproc(argv)])
    try:
        run(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()  # the root cause; the others were stopped after it
        console.print(f"[bold red]error:[/] process {rank} of {nproc} exited with code {failure.exitcode} "
                      "(its message is above); the others were stopped")
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0
