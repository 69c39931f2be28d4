"""The judged win rates in the report: table rows and Markdown sections (from report.json's ``judged``).

``judged`` is a list of evaluations (one per judge run: the end of `alignkit run`, then each `alignkit eval`),
each with one section per baseline, the judge's position bias, its agreement with the data set's labels
where measured, and its warnings. A report written before that list existed has a single ``judge`` section,
read here as the first evaluation. The "before" column of a judged row is empty: a win rate is only
measured for the tuned policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignkit.report.format import format_interval

__all__ = ["flagged_win_rate", "judge_markdown", "judge_report_rows", "judged_evaluations", "latest_win_rate",
           "latest_win_rate_section", "unreliable_flag"]

_AGAINST = {
    "base": "the untuned model's samples",
    "reference": "the reference model's samples (the SFT model when an SFT stage ran)",
    "chosen": "the data set's chosen responses",
}


def judged_evaluations(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every judged evaluation of a report, oldest first (a legacy ``judge`` section as the first)."""
    out = [e for e in report.get("judged") or [] if isinstance(e, dict)]
    legacy = report.get("judge")
    if isinstance(legacy, dict) and legacy:
        out.insert(0, {"evaluation": 1, "judge": legacy.get("judge") or {}, "baselines": [legacy], "warnings": [],
                       "agreement": None, "agreement_note": "not measured"})
    return out


def latest_win_rate(report: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The latest evaluation with a section, and its section against the reference (else its first)."""
    for evaluation in reversed(judged_evaluations(report)):
        sections = evaluation.get("baselines") or []
        if sections:
            return evaluation, next((s for s in sections if s.get("baseline") == "reference"), sections[0])
    return None


def latest_win_rate_section(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The section of :func:`latest_win_rate`; None without any."""
    found = latest_win_rate(report)
    return found[1] if found is not None else None


# The checks of alignkit.eval.position_bias.judge_warnings, by words of their sentence, and their short names.
_CHECKS = (("near-constant", "near-constant verdicts"), ("position-biased", "position-biased"),
           ("agrees with the dataset's labels", "chance-level agreement with the labels"))


def unreliable_flag(evaluation: Mapping[str, Any]) -> str:
    """``"UNRELIABLE judge: <failed checks>"`` when the evaluation's judge checks warned, else ``""``.

    A win rate from such a judge is never shown without it (:func:`flagged_win_rate`).
    """
    warnings = [str(w) for w in evaluation.get("warnings") or []]
    if not warnings:
        return ""
    names = [next((short for words, short in _CHECKS if words in w), w.split(":")[0][:60]) for w in warnings]
    return "UNRELIABLE judge: " + ", ".join(dict.fromkeys(names))


def flagged_win_rate(text: str, evaluation: Mapping[str, Any]) -> str:
    """A win-rate cell: ``text`` followed by the judge's :func:`unreliable_flag` when it has one."""
    flag = unreliable_flag(evaluation)
    return f"{text} ({flag})" if flag else text


def _who(evaluation: Mapping[str, Any]) -> str:
    return f"{(evaluation.get('judge') or {}).get('name', 'judge')} judge #{evaluation.get('evaluation', 1)}"


def _rate(value: Any, of: Any = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" of {of}" if of is not None else "")


def judge_report_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """Rows of (metric, before, after) for the report table: each evaluation's win rates and agreement."""
    rows = []
    for evaluation in judged_evaluations(report):
        who = _who(evaluation)
        for section in evaluation.get("baselines") or []:
            # judge_run never writes a section without a win rate; an edited or foreign report.json may lack one.
            win_rate = format_interval(section["win_rate"]) if section.get("win_rate") else "none (no valid verdict)"
            rows.append([f"win rate vs {section['baseline']} ({who}, 95% CI)", "", flagged_win_rate(win_rate, evaluation)])
        agreement = evaluation.get("agreement")
        if agreement:
            rows.append([f"judge agreement with the data set's labels ({who}, 95% CI)", "",
                         format_interval(agreement["agreement"])])
        if evaluation.get("warnings"):
            rows.append([f"judge warnings ({who})", "", f"{len(evaluation['warnings'])}: see the judge check"])
    return rows


def _section_markdown(evaluation: Mapping[str, Any], section: Mapping[str, Any]) -> list[str]:
    desc = ", ".join(f"{k}={v}" for k, v in (evaluation.get("judge") or {}).items())
    rule = ("the two orders' probabilities averaged" if evaluation.get("pair_rule") == "mean_probability"
            else "disagreement = tie")
    baseline = section["baseline"]
    rows = [
        ["win rate (95% CI)", flagged_win_rate(format_interval(section["win_rate"]) if section.get("win_rate")
                                               else "none (no valid verdict)", evaluation)],
        ["length-controlled win rate (95% CI)",
         flagged_win_rate(format_interval(section.get("length_controlled_win_rate")), evaluation)],
        ["wins / ties / losses", f"{section['wins']} / {section['ties']} / {section['losses']}"],
    ]
    if section.get("invalid_verdicts"):
        rows.append(["invalid verdicts (counted as ties)", f"{section['invalid_verdicts']} of {2 * section['n']}"])
    length = section.get("length")
    if length:
        rows.append([f"mean judged response {length['unit']} (baseline / policy)",
                     f"{length['baseline_mean']:.1f} / {length['policy_mean']:.1f}"])
    if section.get("order_consistency") is not None:
        rows.append(["order consistency", f"{section['order_consistency']:.3f}"])
    if section.get("mean_policy_probability") is not None:
        rows.append(["mean P(policy better), both orders", f"{section['mean_policy_probability']:.3f}"])
    rows += _bias_rows(section.get("position_bias"))
    return [
        f"## Judged win rate: policy vs {baseline} (evaluation {evaluation.get('evaluation', 1)})", "",
        f"Policy versus {_AGAINST.get(baseline, baseline)} on {section['n']} held-out prompts, each pair judged in "
        f"both orders ({rule}). Judge: {desc}.", "",
        "| metric | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows], "",
    ]


def _bias_rows(bias: Mapping[str, Any] | None) -> list[list[str]]:
    if not bias:
        return []
    return [
        ["verdict flips when the responses swap places", _rate(bias.get("flip_rate"), f"{bias.get('pairs')} pairs")],
        ["verdicts naming the first response", _rate(bias.get("first_position_rate"))],
        ["most common verdict (share)", f"{bias.get('most_common')} ({_rate(bias.get('same_verdict_rate'))})"],
    ]


def _check_markdown(evaluation: Mapping[str, Any]) -> list[str]:
    agreement = evaluation.get("agreement")
    rows = []
    if agreement:
        rows.append([f"agreement with the data set's labels ({agreement['n']} pairs, 95% CI)",
                     format_interval(agreement["agreement"])])
        rows.append(["label preferred in both orders / other preferred in both orders",
                     f"{agreement['agree_both_orders']:.3f} / {agreement['disagree_both_orders']:.3f}"])
    else:
        rows.append(["agreement with the data set's labels", f"not measured ({evaluation.get('agreement_note', '')})"])
    rows += _bias_rows(evaluation.get("position_bias"))
    warnings = [f"> **Warning:** {w}" for w in evaluation.get("warnings") or []]
    return [f"## Judge check (evaluation {evaluation.get('evaluation', 1)})", "",
            *([*warnings, ""] if warnings else []),
            "| metric | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows], ""]


def judge_markdown(report: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """Markdown sections for each judged evaluation (a section per baseline, then the judge check) and plots."""
    lines: list[str] = []
    for evaluation in judged_evaluations(report):
        for section in evaluation.get("baselines") or []:
            lines += _section_markdown(evaluation, section)
        if evaluation.get("position_bias") or evaluation.get("agreement") or evaluation.get("warnings"):
            lines += _check_markdown(evaluation)
    if plots:
        lines += ["## Plots", "", *[f"![{Path(p).stem}]({p})" for p in plots], ""]
    return "\n".join(lines)
