"""One-page PDF for one scan (image, CAM overlay, probabilities, model facts, disclaimer)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from lunglens import DISCLAIMER, __version__
from lunglens.explain.cam import cam_map
from lunglens.explain.overlay import overlay
from lunglens.inference.result import ScanResult
from lunglens.io.scan import Scan
from lunglens.report.charts import prob_bars


def scan_pdf(scan: Scan, result: ScanResult, out_pdf: str | os.PathLike[str]) -> Path:
    """Write an A4 one-page PDF summarising ``result`` for ``scan``; return its path.

    Shows the representative slice, its CAM overlay (when the result has one), the class
    probabilities with the threshold, the model's name/version/hash and the disclaimer.
    """
    out = Path(out_pdf)
    image = scan.image[min(result.representative_slice, scan.n_slices - 1)]
    fig = Figure(figsize=(8.27, 11.69))
    fig.suptitle("LungLens - triage summary", fontsize=16, y=0.97)
    fig.text(
        0.5, 0.935, result.disclaimer, ha="center", fontsize=10, color="#c0392b", weight="bold"
    )
    ax_img = fig.add_axes((0.05, 0.52, 0.43, 0.38))
    ax_img.imshow(image, cmap="gray", vmin=0, vmax=1)
    slice_note = (
        f" (slice {result.representative_slice + 1} of {result.n_slices})"
        if result.n_slices > 1
        else ""
    )
    ax_img.set_title("image" + slice_note, fontsize=9)
    ax_img.axis("off")
    ax_cam = fig.add_axes((0.52, 0.52, 0.43, 0.38))
    if result.cam is not None:
        heat = cam_map(result, None, image.shape)
        ax_cam.imshow(overlay(image, heat))
        ax_cam.set_title(f"class activation map: {result.cam_class}", fontsize=9)
    else:
        ax_cam.text(0.5, 0.5, "no activation map", ha="center", va="center")
    ax_cam.axis("off")
    ax_bar = fig.add_axes((0.25, 0.38, 0.65, 0.1))
    prob_bars(ax_bar, result.probs, result.threshold, result.positive_label)
    verdict = "FLAGGED for priority review" if result.flagged else "not flagged"
    lines = [
        f"Scan: {Path(result.source).name}",
        f"Modality: {result.modality}    slices scored: {result.n_slices}",
        f"Result: {result.prediction} - p({result.positive_label}) = {result.positive_prob:.3f}"
        f" (threshold {result.threshold:.2f}) - {verdict}",
        "Most suspicious slices: " + ", ".join(str(i + 1) for i in result.top_slices)
        if result.n_slices > 1
        else "",
        f"Model: {result.model} {result.model_version}",
        f"Model SHA-256: {result.model_sha256}",
        f"Generated: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by LungLens {__version__}",
        *(f"Note: {n}" for n in result.notes),
    ]
    fig.text(
        0.06,
        0.33,
        "\n".join(line for line in lines if line),
        va="top",
        fontsize=9,
        family="monospace",
        wrap=True,
    )
    fig.text(0.5, 0.04, DISCLAIMER, ha="center", fontsize=9, color="#c0392b")
    out.parent.mkdir(parents=True, exist_ok=True)
    with PdfPages(out) as pdf:
        pdf.savefig(fig)
    return out
