"""One-page PDF for one scan, to be filed with the study.

Holds what a clinic needs to file and audit the result: the triage headline (same words as the
app, :mod:`lunglens.inference.wording`), who and what was scanned (patient ID and name, study
date, accession number, series description, modality and body part, when the DICOM header has
them; left out with ``anonymize``), the image and its class activation map with a colour bar and
the caveat that the map is not a lesion outline, the class probabilities with the threshold,
every warning and note of the loader and the classifier, the exact model (name, version, SHA-256)
and when and by which LungLens version the page was made.
"""

from __future__ import annotations

import os
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from lunglens import DISCLAIMER, __version__
from lunglens.explain.cam import FLOOR_NOTE, cam_map, result_floor
from lunglens.explain.overlay import overlay
from lunglens.inference.result import ScanResult
from lunglens.inference.wording import (
    FLAGGED_COLOR,
    NOT_FLAGGED_COLOR,
    format_threshold,
    slice_count,
    slice_numbers,
)
from lunglens.io.key import SourceKey
from lunglens.io.scan import Scan
from lunglens.report.charts import prob_bars

#: The caveat printed under every activation map (PDF and app).
CAM_CAVEAT = "The map shows where the model looked, not a lesion outline."
#: Characters per line of the text blocks (monospace, 8 pt, fits the A4 width).
WRAP = 98
#: Characters per line of the headline (12 pt bold): 80 left 3-6 mm of margin on A4.
HEADLINE_WRAP = 70

#: ``(label, metadata key)`` of the identifying fields, in print order; DICOM tags in comments.
PATIENT_FIELDS = (
    ("Patient ID", "patient_id"),  # (0010,0020)
    ("Patient name", "patient_name"),  # (0010,0010)
    ("Study date", "study_date"),  # (0008,0020)
    ("Accession number", "accession_number"),  # (0008,0050)
)
#: Fields that describe the scan without identifying anyone (kept when anonymized).
SCAN_FIELDS = (
    ("Series description", "series_description"),  # (0008,103E)
    ("Modality", "dicom_modality"),  # (0008,0060)
    ("Body part", "body_part"),  # (0018,0015)
)


def person_name(value: str) -> str:
    """DICOM PN ``Family^Given^Middle^Prefix^Suffix`` -> ``Family, Given Middle``."""
    parts = [p.strip() for p in value.split("^")]
    family, rest = parts[0], " ".join(p for p in parts[1:3] if p)
    return f"{family}, {rest}" if family and rest else family or rest


def dicom_date(value: str) -> str:
    """DICOM DA ``YYYYMMDD`` -> ``YYYY-MM-DD`` (other text unchanged)."""
    v = value.strip()
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if len(v) == 8 and v.isdigit() else v


def header_lines(scan: Scan, anonymize: bool = False) -> list[str]:
    """The patient/study lines of the report (what the DICOM header has; none for images)."""
    md = scan.metadata
    lines: list[str] = []
    if anonymize:
        lines.append("Patient details: left out (anonymized report)")
    else:
        for label, key in PATIENT_FIELDS:
            value = md.get(key, "")
            if key == "patient_name":
                value = person_name(value)
            elif key == "study_date":
                value = dicom_date(value)
            if value:
                lines.append(f"{label + ':':<20}{value}")
    for label, key in SCAN_FIELDS:
        if md.get(key):
            lines.append(f"{label + ':':<20}{md[key]}")
    if not lines:
        lines.append("Patient details: none in this file (not DICOM)")
    return lines


def _wrapped(lines: list[str], indent: str = "    ") -> list[str]:
    out: list[str] = []
    for line in lines:
        out += textwrap.wrap(line, WRAP, subsequent_indent=indent) or [""]
    return out


def _draw_header(fig: Figure, scan: Scan, result: ScanResult, anonymize: bool) -> None:
    """Title, disclaimer, the triage headline (red when flagged) and the patient/study lines."""
    fig.suptitle("LungLens - triage summary", fontsize=16, y=0.975)
    fig.text(0.5, 0.948, result.disclaimer, ha="center", fontsize=9, color="#c0392b", weight="bold")
    color = FLAGGED_COLOR if result.flagged else NOT_FLAGGED_COLOR
    fig.text(
        0.5,
        0.925,
        "\n".join(textwrap.wrap(result.headline, HEADLINE_WRAP)),
        ha="center",
        va="top",
        fontsize=12,
        weight="bold",
        color=color,
    )
    fig.text(
        0.06,
        0.885,
        "\n".join(_wrapped(header_lines(scan, anonymize))),
        va="top",
        fontsize=8,
        family="monospace",
    )


def _draw_cam_bar(fig: Figure, colormap: str, floored: bool = False) -> None:
    """Colour bar of the activation map and its caveat.

    The bar is the core overlay of a 0 -> 1 ramp over mid gray, so it shows exactly how each
    value is drawn, transparent low end included. ``floored``: the map of a slice or image that
    is not flagged, scaled to at least a typical flagged one's peak
    (:func:`lunglens.explain.display_floor`).
    """
    ax_bar = fig.add_axes((0.56, 0.445, 0.35, 0.012))
    ramp = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (8, 1))
    ax_bar.imshow(
        overlay(np.full_like(ramp, 0.5), ramp, colormap=colormap),
        aspect="auto",
        extent=(0.0, 1.0, 0.0, 1.0),
    )
    ax_bar.set_yticks([])
    ax_bar.set_xticks([0.0, 0.5, 1.0])
    ax_bar.set_xticklabels(["0 (none)", "0.5", "1 (strongest)"], fontsize=7)
    ax_bar.set_xlabel(
        "model attention, relative to at least a typical flagged image's peak"
        if floored
        else "model attention, relative to this map's maximum",
        fontsize=7,
    )
    fig.text(0.735, 0.405, CAM_CAVEAT, ha="center", fontsize=8, style="italic")


def _draw_images(fig: Figure, scan: Scan, result: ScanResult, colormap: str) -> None:
    """The representative slice beside its class activation map (when the result has one)."""
    rep = min(result.representative_slice, scan.n_slices - 1)
    image = scan.image[rep]
    ax_img = fig.add_axes((0.05, 0.47, 0.43, 0.30))
    ax_img.imshow(image, cmap="gray", vmin=0, vmax=1)
    slice_note = f" (slice {rep + 1} of {result.n_slices})" if result.n_slices > 1 else ""
    ax_img.set_title("image" + slice_note, fontsize=9)
    ax_img.axis("off")
    ax_cam = fig.add_axes((0.52, 0.47, 0.43, 0.30))
    if result.cam is not None:
        heat = cam_map(result, None, image.shape)
        ax_cam.imshow(overlay(image, heat, colormap=colormap))
        floored = result_floor(result, result.cam_class, rep) is not None
        title = f"class activation map for {result.cam_class}"
        # the note goes above the map: below it, the colour bar and the chart leave no room
        note = "\n" + textwrap.fill(FLOOR_NOTE, 56) if floored else ""
        ax_cam.set_title(title + note, fontsize=9 - floored)
        _draw_cam_bar(fig, colormap, floored=floored)
    else:
        ax_cam.text(0.5, 0.5, "no activation map", ha="center", va="center")
    ax_cam.axis("off")


def result_lines(scan: Scan, result: ScanResult) -> list[str]:
    """The text block under the probabilities: decision, threshold rule, scan, model identity,
    when and by which version the page was made, and every warning and note."""
    rule = "series: mean of its most suspicious slices" if result.n_slices > 1 else "one image"
    lines = [
        f"Result:             {result.headline}",
        f"Threshold:          {format_threshold(result.threshold)} on "
        f"P({result.positive_label}) ({rule})",
        f"Scan:               {SourceKey.parse(result.source).name}",
        f"Slices:             {slice_count(result)}",
    ]
    if result.n_slices > 1:
        lines.append(
            f"Most suspicious:    {'slice' if len(result.top_slices) == 1 else 'slices'} "
            + ", ".join(str(n) for n in slice_numbers(result.top_slices))
            + " (1 = first)"
        )
    lines += [
        f"Model:              {result.model} {result.model_version}",
        f"Model SHA-256:      {result.model_sha256}",
        f"Generated:          {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} "
        f"by LungLens {__version__}",
    ]
    warnings = [*scan.notes, *(n for n in result.notes if n not in scan.notes)]
    lines.append("")
    lines.append(
        f"Warnings and notes ({len(warnings)}):" if warnings else "Warnings and notes: none"
    )
    lines += [f"  - {w}" for w in warnings]
    return lines


def scan_pdf(
    scan: Scan,
    result: ScanResult,
    out_pdf: str | os.PathLike[str],
    *,
    anonymize: bool = False,
    colormap: str = "jet",
) -> Path:
    """Write an A4 one-page PDF summarising ``result`` for ``scan``; return its path.

    Parameters
    ----------
    scan, result
        The loaded scan and its classification (with ``cam`` for the activation map).
    out_pdf
        Where to write (folders are created).
    anonymize
        Leave out patient ID and name, study date and accession number (for teaching or
        sharing outside the clinic); series description, modality and body part stay.
    colormap
        Colour map of the activation map and its colour bar.
    """
    out = Path(out_pdf)
    fig = Figure(figsize=(8.27, 11.69))
    _draw_header(fig, scan, result, anonymize)
    _draw_images(fig, scan, result, colormap)
    ax_bar = fig.add_axes((0.25, 0.30, 0.65, 0.08))
    prob_bars(ax_bar, result.probs, result.threshold, result.positive_label)
    fig.text(
        0.06,
        0.265,
        "\n".join(_wrapped(result_lines(scan, result), " " * 20)),
        va="top",
        fontsize=8,
        family="monospace",
    )
    fig.text(0.5, 0.03, DISCLAIMER, ha="center", fontsize=9, color="#c0392b")
    out.parent.mkdir(parents=True, exist_ok=True)
    with PdfPages(out) as pdf:
        pdf.savefig(fig)
    return out
