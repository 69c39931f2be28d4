"""A long step's progress: plain lines off a terminal (start, each tenth, every minute, end), a bar on one."""

from __future__ import annotations

import io

from rich.console import Console

from alignkit.progress import StepProgress, quiet_library_bars


def _lines(console: Console) -> list[str]:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue().splitlines()


def test_off_a_terminal_a_line_at_the_start_each_tenth_and_the_end():
    console = Console(file=io.StringIO(), width=100)
    now = [0.0]
    with StepProgress(console, "pairs", 100, clock=lambda: now[0]) as progress:
        for done in range(1, 101):
            now[0] += 0.1
            progress.update(done)
    lines = _lines(console)
    assert lines[0] == "pairs: 0/100 (0 s)" and lines[-1] == "pairs: 100/100 (10 s)"
    assert [line.split()[1] for line in lines] == [f"{d}/100" for d in range(0, 101, 10)]  # no repeated end line


def test_a_slow_step_prints_every_minute_between_tenths():
    console = Console(file=io.StringIO(), width=100)
    now = [0.0]
    with StepProgress(console, "judge", 1000, clock=lambda: now[0], every_seconds=60) as progress:
        for done in range(1, 51):  # 50 units of 1000, 30 s each: never a new tenth
            now[0] += 30
            progress.update(done)
    assert [line.split()[1] for line in _lines(console)] == ["0/1000", *(f"{d}/1000" for d in range(2, 51, 2))]


def test_on_a_terminal_a_bar_and_no_plain_lines():
    console = Console(file=io.StringIO(), width=100, force_terminal=True)
    with StepProgress(console, "pairs", 10) as progress:
        for done in range(1, 11):
            progress.update(done)
    assert "pairs: 0/10 (" not in console.file.getvalue() and "10/10" in console.file.getvalue()


def test_library_bars_are_switched_off_only_off_a_terminal(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # restored afterwards: later tests' processes keep tqdm

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert not quiet_library_bars(Tty())
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert quiet_library_bars(io.StringIO())
    import transformers.utils.logging

    assert not transformers.utils.logging.is_progress_bar_enabled()
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # the user's own choice is kept
    assert not quiet_library_bars(io.StringIO())


def test_plain_tqdm_bars_are_switched_off_off_a_terminal():
    """transformers' GGUF conversion draws a plain tqdm bar on the demo's first run: off a terminal, nothing."""
    import subprocess
    import sys

    code = ("import io, os\n"
            "os.environ.pop('TQDM_DISABLE', None); os.environ.pop('HF_HUB_DISABLE_PROGRESS_BARS', None)\n"
            "from alignkit.progress import quiet_library_bars\n"
            "import sys; quiet = sys.argv[1] == 'quiet'\n"
            "if quiet: quiet_library_bars(io.StringIO())\n"
            "from tqdm.auto import tqdm\n"
            "for _ in tqdm(range(3), desc='Converting'): pass\n")
    runs = {how: subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, check=True).stderr
            for how in ("quiet", "loud")}
    assert "Converting" in runs["loud"]  # the check can fail: tqdm does draw into a pipe when left alone
    assert runs["quiet"] == ""
