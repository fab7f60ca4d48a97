"""DICOM display: modality values -> a [0, 1] image (VOI, then MONOCHROME1 inversion).

Values of Interest (PS3.3 C.11.2): CT is shown in a preset window (the lung window
W1500/L-600 unless asked otherwise); an X-ray uses the file's VOI LUT Sequence (0028,3010),
else its Window Center/Width (0028,1050/1051) with the VOI LUT Function (0028,1056), else the
0.5-99.5 percentiles of its values. MONOCHROME1 (0028,0004) is inverted *after* VOI.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_voi_lut

from lunglens.io.dicom_common import frame_value
from lunglens.io.scan import Modality
from lunglens.io.sniff import resolve_window
from lunglens.preprocess import WINDOW_PRESETS, Window


def _first(value: Any) -> Any:
    """First item of a multi-valued element (MultiValue / list), or the value itself."""
    if isinstance(value, (str, bytes)):
        return value
    try:
        return value[0]
    except (TypeError, IndexError, KeyError):
        return value


def file_window(ds: Dataset, frame: int = 0) -> tuple[Window | None, str]:
    """First WindowCenter (0028,1050) / WindowWidth (0028,1051) of the file (or frame).

    Returns the window (``None`` when absent or unreadable) and the VOI LUT Function
    (0028,1056), upper case (``"LINEAR"`` by default).
    """
    center = frame_value(ds, frame, "FrameVOILUTSequence", "WindowCenter")
    width = frame_value(ds, frame, "FrameVOILUTSequence", "WindowWidth")
    if center is None or width is None:
        return None, "LINEAR"
    try:
        c, w = float(_first(center)), float(_first(width))
    except (TypeError, ValueError, IndexError):
        return None, "LINEAR"
    function = str(frame_value(ds, frame, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR")
    return Window(c, w, "file"), function.upper()


def percentile_window(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> Window:
    """Window spanning the 0.5th-99.5th percentile of the values (robust to burnt-in text)."""
    step = max(1, int(np.sqrt(values.size / 1_000_000)))  # ~1 M samples are plenty
    sample = values[..., ::step, ::step]
    lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    return Window((lo + hi) / 2.0, max(hi - lo, 1e-6), "percentile")


def to_display(
    values: np.ndarray,
    ds: Dataset,
    modality: str,
    inverted: bool,
    window: str | Window | None,
    notes: list[str],
) -> tuple[np.ndarray, Window | None]:
    """Modality values -> float32 [0, 1] display image (VOI, then MONOCHROME1 inversion).

    Returns the image and the window used (``None`` when a VOI LUT Sequence was applied).
    """
    chosen = resolve_window(window)
    if modality == Modality.CT:
        win = chosen or WINDOW_PRESETS["lung"]
        return win.apply(values, invert=inverted), win
    if isinstance(window, str):
        notes.append(f"window preset {window!r} is for CT (Hounsfield units); ignored for X-ray")
        chosen = None
    if chosen is not None:
        return chosen.apply(values, invert=inverted), chosen
    if "VOILUTSequence" in ds:  # (0028,3010): a lookup table chosen by the modality
        out = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float32)
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float32)
        lo, hi = float(lut.min()), float(lut.max())
        out = np.clip((out - lo) / max(hi - lo, 1.0), 0.0, 1.0)
        notes.append("VOI LUT Sequence (0028,3010) of the file applied")
        return (1.0 - out if inverted else out).astype(np.float32), None
    file_win, function = file_window(ds)
    if file_win is not None and file_win.width > 0:
        if function == "SIGMOID":  # VOI LUT Function (0028,1056), PS3.3 C.11.2.1.3.1
            z = -4.0 * (values.astype(np.float64) - file_win.center) / file_win.width
            sig = (1.0 / (1.0 + np.exp(np.clip(z, -60.0, 60.0)))).astype(np.float32)
            return (1.0 - sig if inverted else sig), file_win
        return file_win.apply(values, invert=inverted), file_win
    win = percentile_window(values)
    notes.append("no VOI in the file: window from the 0.5-99.5 percentiles")
    return win.apply(values, invert=inverted), win
