"""The viewer's state and computation, without Qt (the model half of the desktop viewer).

napari keeps its viewer model (layers, dims, camera) apart from the Qt widgets that draw it;
LungLens does the same. :class:`~lunglens.viewer.state.ViewerState` holds what the window shows
(the open scan, its result, the slice, the display window, the CAM settings and the bounded CAM
cache) and answers every question about it as plain values (texts, arrays). The heavy parts are
plain functions (:mod:`lunglens.viewer.jobs`, :func:`~lunglens.viewer.cam.compute_heat`) that
:mod:`lunglens.gui` runs in its worker pool. Nothing here imports PySide6 or :mod:`lunglens.gui`
(an import-linter contract checks it), so the whole viewer logic is tested without a display.
"""

from lunglens.viewer.cam import (
    CAM_CACHE_SLICES,
    CamCache,
    CamSettings,
    HeatRequest,
    SliceHeat,
    compute_heat,
)
from lunglens.viewer.jobs import load_and_check, load_target, write_pdf
from lunglens.viewer.state import OverlayExport, ViewerState

__all__ = [
    "CAM_CACHE_SLICES",
    "CamCache",
    "CamSettings",
    "HeatRequest",
    "OverlayExport",
    "SliceHeat",
    "ViewerState",
    "compute_heat",
    "load_and_check",
    "load_target",
    "write_pdf",
]
