"""`make demo` twice: the second run succeeds with the same command, and its output reads well in a log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from workflow.demo_recipe import DEMO_RECIPE, ROOT, demo_command, tiny_demo_overrides, tiny_llama_folder

from alignkit.cli import main

# A plain progress line off a terminal: "<step>: done/total (N s)".
PLAIN_LINES = [r"sentiment pairs \(train\): sampling: 16/16 \(\d+ s\)", r"reference log-probs: (\d+)/\1 \(\d+ s\)",
               r"preference 1/1 ", r"eval: reference samples: 4/4 \(\d+ s\)", r"eval: policy samples: 4/4 \(\d+ s\)",
               r"judge: sampling the policy: 4/4 \(\d+ s\)", r"judge: 8 comparisons against reference done in"]


def test_the_demo_command_runs_twice(tmp_path, capsys):
    """The Makefile's command, as written, on the demo recipe made tiny: both runs succeed, the second
    replaces the first run in the same folder and reuses the cached pairs. Off a terminal (captured here),
    every long step prints plain progress lines and no bar."""
    args = demo_command()
    assert args[:2] == ["run", DEMO_RECIPE]
    out = tmp_path / "run"
    overrides = tiny_demo_overrides(tiny_llama_folder(tmp_path / "base"), out)
    assert main([*args, *overrides]) == 0
    first_err = capsys.readouterr().err
    for line in PLAIN_LINES:
        assert re.search(line, first_err), line
    assert "━" not in first_err.split("dpo_smollm2_sentiment: dpo")[0]  # no bar before the report's tables
    first = json.loads((out / "report.json").read_text())
    assert main([*args, *overrides]) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps lines at its width
    assert "replacing the run it held" in err
    assert "(cached," in err  # the pairs were not sampled again
    second = json.loads((out / "report.json").read_text())
    assert second["train_pairs"] == first["train_pairs"]
    # Without the Makefile's flag the same rerun is refused: the test runs what `make demo` runs.
    plain = [a for a in args if a != "--overwrite"]
    assert main([*plain, *overrides]) == 2


def _alignkit(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "alignkit.cli", *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)


@pytest.mark.slow
def test_a_redirected_run_prints_plain_lines_and_no_bars(tmp_path):
    """`make demo > log 2>&1`: the log has the progress lines and none of the redraws of a bar, the
    model-loading bars of transformers included (which a load does draw into a pipe when not told)."""
    base = tiny_llama_folder(tmp_path / "base")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    env.pop("TQDM_DISABLE", None)  # set, like the line above, by an earlier in-process CLI call of the session
    result = _alignkit([*demo_command(), *tiny_demo_overrides(base, tmp_path / "run")], env)
    assert result.returncode == 0, result.stdout[-3000:]
    log = result.stdout
    for line in PLAIN_LINES:
        assert re.search(line, log), line
    assert "\r" not in log and "\x1b[" not in log and "Loading weights" not in log and "━━" not in log.split(
        "dpo_smollm2_sentiment: dpo")[0]
    # The control: the same load, left to transformers, draws its bar into the pipe.
    code = ("from transformers import AutoModelForCausalLM; import sys; "
            f"AutoModelForCausalLM.from_pretrained({str(base)!r})")
    shown = subprocess.run([sys.executable, "-c", code], env=env, text=True, stderr=subprocess.PIPE, timeout=300)
    assert "Loading weights" in shown.stderr
