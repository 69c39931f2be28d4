"""Formatting only: what a run, an evaluation or a comparison measured, as tables, Markdown and plots.

- :mod:`alignkit.report.tables`: a run's report (terminal table, report.md, report.json, plots).
- :mod:`alignkit.report.judge`: the judged win rate's rows and Markdown section.
- :mod:`alignkit.report.compare_table`, :mod:`alignkit.report.compare_plots`: comparisons of objectives.
- :mod:`alignkit.report.frontier`: online runs and offline objectives on one reward-versus-KL plot.
- :mod:`alignkit.report.format`: the one way to print an estimate with its interval.

Nothing here computes a figure; it formats the dictionaries that training and evaluation wrote.
"""

__all__: list[str] = []
