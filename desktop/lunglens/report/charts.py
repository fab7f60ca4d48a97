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


def score_histogram(scores: Sequence[float], threshold: float, label: str) -> Figure:
    """Histogram of positive-class probabilities with the operating threshold marked."""
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    ax.hist(list(scores), bins=20, range=(0.0, 1.0), color="#4a7ab5", edgecolor="white")
    ax.axvline(
        threshold, color="#c0392b", linestyle="--", label=f"threshold {format_threshold(threshold)}"
    )
    ax.set_xlabel(f"P({label})")
    ax.set_ylabel("scans")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper center")
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
