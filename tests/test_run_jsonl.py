"""A run folder's JSON-lines files (metrics.jsonl and the like) are read strictly: a NaN, an Infinity, a line of
garbage or a line that is not an object is a one-line error naming the file and the line, wherever the file is
read (a frontier's proxy-versus-true series, a comparison's metrics, a resumed run's log)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.jsonio import RunFileError, read_jsonl
from alignkit.train.metrics import MetricsWriter

GOOD = '{"stage": "online", "step": 1, "kl": 0.5, "reward": 1.0, "true_reward": 0.25}'
BAD_LINES = {
    "NaN": ('{"stage": "online", "step": 2, "kl": NaN, "reward": 1.0, "true_reward": 0.5}', "NaN is not a JSON"),
    "Infinity": ('{"step": 2, "kl": -Infinity}', "-Infinity is not a JSON"),
    "garbage": ("step 2: kl=0.5", "Expecting value"),
    "a list": ("[1, 2]", "a JSON list where an object belongs"),
    "a huge integer": ('{"step": 1' + "0" * 5000 + "}", "integer string conversion"),
}


def _refused(path: Path, text: str, message: str, read) -> None:
    """``read(path)`` of a file holding ``text`` raises a RunFileError whose message matches ``message``."""
    path.write_text(text)
    with pytest.raises(RunFileError, match=message):
        read(path)


def _plant(path: Path, bad: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{GOOD}\n\n{bad}\n{GOOD}\n")
    return path


@pytest.mark.parametrize("kind", BAD_LINES)
def test_read_jsonl_names_the_file_and_the_line(tmp_path, kind):
    bad, why = BAD_LINES[kind]
    path = _plant(tmp_path / "metrics.jsonl", bad)
    with pytest.raises(RunFileError) as caught:
        read_jsonl(path, what="a metrics record")
    message = str(caught.value)
    assert message.startswith(f"{path}:3: not a metrics record: ") and why in message and "\n" not in message


def test_read_jsonl_reads_what_to_json_wrote(tmp_path):
    """The same records back, blank lines skipped; a U+2028 inside a string is not a line break."""
    records = [{"step": 1, "text": "a\u2028b", "kl": None}, {"step": 2, "loss": 0.1 + 0.2}]
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert read_jsonl(path) == records


def test_only_a_torn_last_line_is_forgiven(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(f'{GOOD}\n{{"step": 2, "lo')
    assert read_jsonl(path, torn_tail=True) == [json.loads(GOOD)]
    with pytest.raises(RunFileError, match=rf"^{path}:2: "):
        read_jsonl(path)
    path.write_text(f'{GOOD}\n{{"step": 2, "lo\n{GOOD}\n')  # torn in the middle: not a kill's doing
    with pytest.raises(RunFileError, match=rf"^{path}:2: "):
        read_jsonl(path, torn_tail=True)
    path.write_text(f'{GOOD}\n{{"step": 2, "kl": NaN}}')  # a whole record with NaN at the end is not torn either
    with pytest.raises(RunFileError, match=rf"^{path}:2: .*NaN"):
        read_jsonl(path, torn_tail=False)


def test_the_proxy_vs_true_series_refuses_a_nan_line(tmp_path):
    from alignkit.report.frontier import proxy_true_series

    path = _plant(tmp_path / "run" / "online" / "metrics.jsonl", BAD_LINES["NaN"][0])
    with pytest.raises(RunFileError, match=rf"^{path}:3: not a metrics record: NaN"):
        proxy_true_series(tmp_path / "run")
    path.write_text(f"{GOOD}\n")
    assert proxy_true_series(tmp_path / "run") == {"kl": [0.5], "reward": [1.0], "true_reward": [0.25]}


def test_a_comparison_reads_its_runs_metrics_strictly(tmp_path):
    from alignkit.commands.compare import read_metrics

    path = _plant(tmp_path / "preference" / "metrics.jsonl", BAD_LINES["garbage"][0])
    with pytest.raises(RunFileError, match=rf"^{path}:3: not a metrics record: Expecting value"):
        read_metrics(tmp_path)


def test_a_comparison_file_with_no_rows_is_named(tmp_path):
    from alignkit.report.frontier import rows_from_comparison

    path = tmp_path / "comparison.json"
    _refused(path, '{"rows": [{"label": "dpo", "kl": NaN}]}', rf"^{path}: not a comparison: NaN", rows_from_comparison)
    _refused(path, '{"rows": 3}', rf"^{path}: not a comparison: 'rows' is not a list", rows_from_comparison)
    _refused(path, '{"rows": [], "online_rows": [1]}', rf"^{path}: not a comparison: 'online_rows' is not a list",
             rows_from_comparison)


def test_a_resumed_log_drops_a_torn_tail_but_refuses_a_planted_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n{"step": 3, "loss": 0.1}\n{"step": 4, "lo')
    MetricsWriter(path, resume_from_step=2)
    assert path.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n'
    path.write_text('{"step": 1, "loss": NaN}\n{"step": 2, "loss": 0.25}\n')
    with pytest.raises(RunFileError, match=rf"^{path}:1: not a metrics record: NaN"):
        MetricsWriter(path, resume_from_step=2)
    assert path.read_text() == '{"step": 1, "loss": NaN}\n{"step": 2, "loss": 0.25}\n'  # left for the user to see


def test_the_cli_prints_it_as_one_line(tmp_path, capsys):
    from alignkit.cli import main

    comparison = tmp_path / "comparison.json"
    comparison.write_text('{"rows": [{"label": "dpo", "kl": Infinity}]}')
    code = main(["frontier", "--comparison", str(comparison), "--out", str(tmp_path / "front.png")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{comparison}: not a comparison: Infinity is not a JSON number" in err.replace("\n", "")
    assert "Traceback" not in err


def test_the_judge_cache_drops_a_torn_tail_and_names_a_planted_line(tmp_path):
    from alignkit.eval.judges.cache import VerdictCache

    path = tmp_path / "verdicts.jsonl"
    path.write_text('{"key": "a", "raw": "A"}\n{"key": "b", "raw": "B"}\n{"key": "c", "ra')
    cache = VerdictCache(path)  # an interrupted write: that answer is asked for again
    assert (len(cache), cache.get("a"), cache.get("b"), cache.get("c")) == (2, "A", "B", None)
    _refused(path, '{"key": "a", "raw": "A"}\n{"key": "b", "raw": NaN}\n{"key": "c", "raw": "C"}\n',
             rf"^{path}:2: not a judge's cached answer: NaN", VerdictCache)
    _refused(path, '{"key": "a", "raw": 3}\n', rf"^{path}: not a judge's cached answer: .* remove the file",
             VerdictCache)
