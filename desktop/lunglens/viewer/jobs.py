"""Worker bodies of the viewer: opening a scan, the activation gallery, writing its PDF.

Plain functions with plain arguments, run by :mod:`lunglens.gui` in its worker pool (and
callable from tests as they are). The heat-map job is :func:`lunglens.viewer.cam.compute_heat`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lunglens.explain import ChannelMap, activation_maps, overlay
from lunglens.inference import (
    GateVerdict,
    ModalityCheck,
    ScanResult,
    check_chest,
    check_modality,
    get_engine,
    with_gate,
)
from lunglens.io import (
    SCORED_MODALITIES,
    Scan,
    SourceKey,
    discover_sources,
    load_scan,
    load_source,
)
from lunglens.models import ModelInfo

#: Colour map of the activation gallery (one per map, unlike the CAM's overlay on the image).
GALLERY_COLORMAP = "viridis"


def gallery_maps(info: ModelInfo, image2d: np.ndarray, output: str, top_n: int) -> list[ChannelMap]:
    """The ``top_n`` channel maps of one layer ``output`` (the cached engine, made on first use)."""
    return activation_maps(get_engine(info), image2d, output, top_n)


def map_rgb(channel: ChannelMap) -> np.ndarray:
    """One [0, 1] channel map coloured for display (the core overlay, on black)."""
    return overlay(np.zeros_like(channel.map), channel.map, alpha=1.0, colormap=GALLERY_COLORMAP)


def load_target(target: str) -> Scan:
    """Open a path, or a results key (``folder#SeriesInstanceUID``, ``file#frame``).

    A key names one scoring unit of the folder's discovery (:class:`~lunglens.io.SourceKey`);
    when the folder no longer holds it, the folder itself is opened.
    """
    key = SourceKey.parse(target)
    if key.part is None:
        return load_scan(target)
    sources, _errors = discover_sources(Path(key.path), recursive=False)
    for src in sources:
        if src.key == target:
            return load_source(src)
    return load_scan(key.path)


def load_and_check(
    target: str, models_dir: str | os.PathLike[str] | None = None
) -> tuple[Scan, ModalityCheck | None, GateVerdict]:
    """:func:`load_target`, the chest-image gate and, for a plain image, the modality check.

    A scan the gate refuses is still shown, with the reason, but never scored. Plain images
    carry no DICOM Modality (0008,0060), so the image-level check picks their default model
    family.
    """
    scan = load_target(target)
    verdict = check_chest(scan, models_dir)
    check = None
    if verdict.accepted and scan.modality not in SCORED_MODALITIES:
        check = with_gate(check_modality(scan, models_dir), verdict)
    return scan, check, verdict


def write_pdf(
    scan: Scan, result: ScanResult, out_pdf: str, anonymize: bool = False, colormap: str = "jet"
) -> Path:
    """The core one-page PDF of ``result`` (matplotlib takes a moment, hence a worker)."""
    from lunglens.report import scan_pdf

    return Path(scan_pdf(scan, result, out_pdf, anonymize=anonymize, colormap=colormap))
