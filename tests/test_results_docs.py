"""Published figures against the files they come from: a stale figure in a results README fails the suite.

Every decimal figure quoted in a ``docs/results/*/README.md`` must be one of the numbers of that folder's
kept files (``report.md``, ``comparison.md``, ``report.json``, ``metrics.jsonl``), or of the files and
folders it links to, at the precision quoted (``6.1`` matches a report's ``6.105``); so must every figure of
the README's demo section, against the files that section links to. A figure no kept file holds is written in
a "Not backed by a kept file:" paragraph, which says so to the reader. Each results folder says in its
"Data" section which of the run's files were kept, and one without a ``report.json`` says its figures are
not backed by data.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
FOLDERS = sorted(p for p in RESULTS.iterdir() if p.is_dir())
DATA_SUFFIXES = (".md", ".json", ".jsonl")
NOT_BACKED = "Not backed by a kept file:"

# Version strings (2.13.0+cpu, driver 580.159.04, Python 3.12) are not figures of a run.
_VERSIONS = re.compile(r"\b\d+\.\d+\.\d+\S*|\b(?:Python|torch|PyTorch|transformers|pydantic|datasets)\s+\d+\.\d+")
# A minus sign only where it starts the number ("-0.076"), not in a range ("0.49-0.72").
_DECIMAL = re.compile(r"(?:(?<![\w.-])-)?(?<![\w.])\d+\.\d+(?![\w.]*\d)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")
_LINK = re.compile(r"\]\(([^)#\s]+)")


def quoted_figures(text: str) -> list[str]:
    """The decimal figures of a text, without version strings."""
    return _DECIMAL.findall(_VERSIONS.sub(" ", text))


def _data_files(target: Path) -> list[Path]:
    """A kept file, or a folder's kept files (a README stands for its folder)."""
    if target.is_file() and target.name == "README.md":
        target = target.parent
    files = [target] if target.is_file() else sorted(target.rglob("*")) if target.is_dir() else []
    return [f for f in files if f.is_file() and f.suffix in DATA_SUFFIXES and f.name != "README.md"]


def data_numbers(files: list[Path]) -> set[Decimal]:
    out = set()
    for path in files:
        for token in _NUMBER.findall(path.read_text(encoding="utf-8")):
            try:
                out.add(Decimal(token.replace(",", "")))
            except InvalidOperation:
                continue
    return out


def backed(figure: str, numbers: set[Decimal]) -> bool:
    """Whether a kept number rounds to ``figure`` at the precision it is quoted with."""
    step = Decimal(1).scaleb(-len(figure.split(".")[1]))
    value = Decimal(figure)
    return any(n.quantize(step, ROUND_HALF_UP) == value for n in numbers if abs(n) < 10**12)


def declared_unbacked(text: str) -> set[str]:
    """The figures of the "Not backed by a kept file:" paragraphs."""
    out: set[str] = set()
    for paragraph in text.split("\n\n"):
        if paragraph.lstrip().startswith(NOT_BACKED):
            out |= set(_DECIMAL.findall(paragraph))
    return out


def unbacked_figures(text: str, base: Path, extra: list[Path] = ()) -> list[str]:
    """Figures of ``text`` that neither the kept files (``extra`` and every file ``text`` links to, relative to
    ``base``) hold nor a "Not backed" paragraph lists."""
    files = list(extra)
    for link in _LINK.findall(text):
        files += _data_files((base / link).resolve())
    numbers, declared = data_numbers(files), declared_unbacked(text)
    return [f for f in quoted_figures(text) if f not in declared and not backed(f, numbers)]


def readme_results_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = text.index("<!-- results:"), text.index("<!-- results end -->")
    return text[start:end]


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_figure_of_a_results_readme_is_in_its_kept_files(folder):
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert unbacked_figures(text, folder, _data_files(folder)) == []


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_results_folder_says_which_files_were_kept(folder):
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert "## Data" in text
    data = text.split("## Data", 1)[1]
    if not list(folder.rglob("report.json")):
        assert "not backed by data" in " ".join(data.split())
    for name in ("report.json", "metrics.jsonl"):
        assert name in data, f"{folder.name}: the Data section does not say whether {name} was kept"


def test_every_figure_of_the_readme_demo_section_is_in_the_files_it_links():
    assert unbacked_figures(readme_results_section(), ROOT) == []


def test_a_stale_figure_fails():
    folder = RESULTS / "all_methods_h200"
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert "0.609 after" in text
    assert unbacked_figures(text.replace("0.609 after", "0.619 after"), folder, _data_files(folder)) == ["0.619"]
    section = readme_results_section()
    assert unbacked_figures(section.replace("KL 7.9\n", "KL 7.6\n").replace("KL 7.9 ", "KL 7.6 "), ROOT) == ["7.6"]


def test_rounding_and_versions():
    numbers = {Decimal("6.105"), Decimal("0.5938")}
    assert backed("6.1", numbers) and backed("0.594", numbers) and not backed("6.2", numbers)
    assert quoted_figures("torch 2.13.0+cpu, Python 3.12, driver 580.159.04: KL 4.10 nats") == ["4.10"]
    assert quoted_figures("from -0.076 to 0.259, 0.49-0.72") == ["-0.076", "0.259", "0.49", "0.72"]
