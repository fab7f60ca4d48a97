"""Matplotlib charts rendered off-screen (Agg) to PNG bytes or embedded in reports.

Uses the object-oriented ``Figure`` API, never ``pyplot``: no global figure registry (no leaks in a
long-running app) and no interference with the GUI's Qt backend.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lunglens.inference.wording import format_prob, format_threshold


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for self-contained HTML."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


#: (bar, line) colours of the groups of :func:`score_histogram`, in order.
GROUP_COLORS = (("#4a7ab5", "#c0392b"), ("#e5a35b", "#6c3483"), ("#7dbb8a", "#1b4f72"))


def score_histogram(groups: Sequence[tuple[str, Sequence[float], float]], label: str) -> Figure:
    """Histogram of positive-class probabilities with the threshold each scan was judged by.

    ``groups`` are ``(name, scores, threshold)``, e.g. ``single images`` and ``series`` of a
    CT model, which are judged by different thresholds: their bars are stacked in one colour
    each and each threshold is a dashed line of its own, labelled with its group, so no bar is
    read against a cut that was not applied to it.
    """
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    colors = [GROUP_COLORS[i % len(GROUP_COLORS)] for i in range(len(groups))]
    named = len(groups) > 1
    ax.hist(
        [list(scores) for _, scores, _ in groups],
        bins=20,
        range=(0.0, 1.0),
        stacked=True,
        color=[bar for bar, _ in colors],
        edgecolor="white",
        label=[name for name, _, _ in groups] if named else None,
    )
    for (name, _, threshold), (_, line) in zip(groups, colors, strict=True):
        what = f" ({name})" if named else ""
        ax.axvline(
            threshold,
            color=line,
            linestyle="--",
            label=f"threshold {format_threshold(threshold)}{what}",
        )
    ax.set_xlabel(f"P({label})")
    ax.set_ylabel("scans")
    ax.set_xlim(0, 1)
    ax.legend(loc="best", fontsize=8 if named else None)
    fig.tight_layout()
    return fig


def count_bars(counts: Mapping[str, int]) -> Figure:
    """Horizontal bars: scans per outcome (flagged, not flagged, error)."""
    fig = Figure(figsize=(6, 1.8))
    ax = fig.add_subplot()
    names = list(counts)
    values = [counts[n] for n in names]
    colors = {"flagged": "#c0392b", "not flagged": "#27ae60", "error": "#7f8c8d"}
    ax.barh(names, values, color=[colors.get(n, "#4a7ab5") for n in names])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v}", va="center")
    ax.set_xlim(0, max([1, *values]) * 1.15)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def prob_bars(ax: object, probs: Mapping[str, float], threshold: float, positive: str) -> None:
    """Draw per-class probability bars on ``ax`` (the threshold marks the positive class)."""
    labels = list(probs)
    values = [probs[k] for k in labels]
    colors = ["#c0392b" if k == positive else "#4a7ab5" for k in labels]
    ax.barh(labels, values, color=colors)  # type: ignore[attr-defined]
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1)  # type: ignore[attr-defined]
    for y, v in enumerate(values):
        ax.text(min(v, 0.8), y, f" {format_prob(v)}", va="center")  # type: ignore[attr-defined]
    ax.set_xlim(0, 1)  # type: ignore[attr-defined]
    ax.invert_yaxis()  # type: ignore[attr-defined]
    ax.set_title(  # type: ignore[attr-defined]
        f"class probabilities (dashed: threshold {format_threshold(threshold)} on P({positive}))",
        fontsize=9,
    )
