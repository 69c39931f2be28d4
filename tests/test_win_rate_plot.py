"""win_rate.png: every value label is readable, clear of every bar and interval (the demo's 0.88 [0.80, 0.95]
once printed its label across its own error bar)."""

from __future__ import annotations

import pytest

from alignkit.report.plots import plot_win_rate, pyplot, win_rate_figure


def _evaluation(*intervals: tuple[float, float, float], length_controlled: bool = True) -> dict:
    baselines = []
    for i, (low, est, high) in enumerate(intervals):
        ci = {"estimate": est, "low": low, "high": high}
        section = {"baseline": f"b{i}", "n": 64, "win_rate": ci}
        if length_controlled:
            section["length_controlled_win_rate"] = {"estimate": max(est - 0.03, 0.0), "low": max(low - 0.05, 0.0),
                                                     "high": max(high - 0.01, 0.0)}
        baselines.append(section)
    return {"evaluation": 1, "judge": {"name": "reward"}, "baselines": baselines}


@pytest.mark.parametrize("intervals", [
    [(0.80, 0.88, 0.95), (0.66, 0.77, 0.86)],  # the demo's
    [(0.97, 0.99, 1.0), (0.0, 0.02, 0.05), (0.45, 0.5, 0.55)],  # at both ends and in the middle
])
def test_value_labels_clear_the_bars_and_their_intervals(intervals, tmp_path):
    fig, ax, labels = win_rate_figure([_evaluation(*intervals)])
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    drawn = [*ax.patches, *ax.lines, *ax.collections]  # bars, estimate markers and caps, interval lines
    right = max(artist.get_window_extent(renderer).x1 for artist in drawn)
    assert len(labels) == 2 * len(intervals)
    for label in labels:
        box = label.get_window_extent(renderer)
        assert box.x0 > right, (label.get_text(), box.x0, right)
        assert box.x1 <= fig.bbox.x1  # inside the picture, not cut off
    boxes = sorted((label.get_window_extent(renderer) for label in labels), key=lambda b: b.y0)
    assert all(a.y1 <= b.y0 for a, b in zip(boxes, boxes[1:], strict=False))  # labels do not overlap each other
    pyplot().close(fig)
    assert plot_win_rate([_evaluation(*intervals)], tmp_path / "win_rate.png").stat().st_size > 0
