"""Reader for one DICOM file (single- or multi-frame): parse, check, decode, display.

Pipeline (docs/architecture.md, "Scan pipeline")::

    parse (pydicom, header first) -> Pixel Data present -> modality family (dicom_rules)
      -> size limits -> decode to modality values (dicom_pixels: transfer syntax, photometric
         interpretation, modality LUT -> HU for CT)
      -> VOI and MONOCHROME1 inversion -> float32 [0, 1] (dicom_voi)

The series reader (:mod:`lunglens.io.dicom_series`) reuses :func:`read_values` and
:func:`~lunglens.io.dicom_voi.to_display` so a folder and a file give identical pixels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from lunglens.errors import CorruptFile, NoPixelData
from lunglens.io.dicom_common import collect_warnings, frame_value, text
from lunglens.io.dicom_pixels import PIXEL_TAGS, decode_values
from lunglens.io.dicom_rules import body_part, classify_modality, image_type
from lunglens.io.dicom_voi import file_window, to_display

# re-exported: the viewer imports it from here
from lunglens.io.dicom_voi import percentile_window as percentile_window
from lunglens.io.key import SourceKey
from lunglens.io.scan import Modality, Scan
from lunglens.io.sniff import DEFAULT_MAX_PIXELS, check_pixels, check_size
from lunglens.preprocess import Window


@dataclass
class DicomValues:
    """Modality values of one file plus what is needed to display and order them."""

    path: Path
    ds: Dataset
    values: np.ndarray  # float32 [F, H, W]: HU for CT, stored values after modality LUT else
    modality: Modality
    inverted: bool  # MONOCHROME1
    positions: list[float | None]
    labels: list[str]  # one per frame: "file" or "file#n" (1-based frame number)
    notes: list[str] = field(default_factory=list)
    colourfulness: float = 0.0  # of RGB / YBR / palette pixels before the grey conversion


def read_dataset(
    path: Path, *, header_only: bool = False, notes: list[str] | None = None
) -> Dataset:
    """Parse a DICOM file (with or without preamble), wrapping every library error.

    ``header_only`` stops before Pixel Data (7FE0,0010): cheap enough for discovery of
    thousand-file folders.
    """
    sink: list[str] = [] if notes is None else notes
    try:
        with collect_warnings(sink):
            return pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
    except InvalidDicomError as exc:
        raise CorruptFile(path, f"not a valid DICOM file ({exc})", "Export it again.") from exc
    except Exception as exc:  # EOFError, struct.error, zlib.error, ValueError, ...
        raise CorruptFile(
            path,
            f"cannot parse the DICOM data set; truncated or damaged ({type(exc).__name__}: {exc})",
            "Export or copy the file again.",
        ) from exc


def is_truncated(ds: Dataset) -> bool:
    """True when the last element's declared length exceeds the bytes present.

    pydicom stops silently at end-of-file, so a file cut inside its header parses "fine".
    """
    tags = list(ds.keys())
    if not tags:
        return True
    raw = ds.get_item(tags[-1])
    length = getattr(raw, "length", None)
    value = getattr(raw, "value", None)
    if isinstance(length, int) and length != 0xFFFFFFFF and isinstance(value, bytes):
        return len(value) < length
    return False


def check_pixel_data(ds: Dataset, path: Path) -> None:
    """Raise :class:`NoPixelData` (or :class:`CorruptFile` for a cut file) without pixels."""
    if any(tag in ds for tag in PIXEL_TAGS):
        return
    if is_truncated(ds) or "Rows" in ds:
        raise CorruptFile(
            path,
            "the file has image attributes but no Pixel Data (7FE0,0010): it looks truncated",
            "Export or copy the file again.",
        )
    sop = ds.get("SOPClassUID")
    what = f"a {UID(str(sop)).name} object" if sop else "an object without an image"
    # an image IOD always holds pixels (names such as "Digital X-Ray Image Storage - For
    # Presentation" go on after "Image Storage"): cut short
    if " Image Storage" in what:
        raise CorruptFile(
            path,
            f"it is {what}, which always holds Pixel Data (7FE0,0010), but the file ends "
            "before it: it looks truncated",
            "Export or copy the file again.",
        )
    raise NoPixelData(
        path,
        f"no Pixel Data (7FE0,0010) in this DICOM file; it is {what}",
        "Open the image files of the series instead.",
    )


def _positions(ds: Dataset, n_frames: int) -> list[float | None]:
    """Position of each frame along the slice normal (mm).

    ImagePositionPatient (0020,0032) dotted with the normal = row x column direction cosines
    of ImageOrientationPatient (0020,0037); Enhanced objects keep both in the Plane Position /
    Plane Orientation Sequences (0020,9113 / 0020,9116).
    """
    out: list[float | None] = []
    for i in range(n_frames):
        ipp = frame_value(ds, i, "PlanePositionSequence", "ImagePositionPatient")
        iop = frame_value(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient")
        try:
            o = np.asarray([float(v) for v in iop], dtype=np.float64)
            p = np.asarray([float(v) for v in ipp], dtype=np.float64)
            normal = np.cross(o[:3], o[3:6])
            out.append(float(p @ normal) if p.size == 3 and np.any(normal) else None)
        except (TypeError, ValueError):
            out.append(None)
    return out


def read_values(
    path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, ds: Dataset | None = None
) -> DicomValues:
    """Parse, check and decode a DICOM file up to modality values (no windowing yet).

    Order of checks: pixel data present -> modality family -> header sizes within
    ``max_pixels`` (Rows (0028,0010) x Columns (0028,0011) x NumberOfFrames (0028,0008) x
    SamplesPerPixel (0028,0002)) -> transfer syntax decodable -> decode.
    """
    notes: list[str] = []
    if ds is None or "PixelData" not in ds:
        ds = read_dataset(path, notes=notes)
    check_pixel_data(ds, path)
    modality, mod_notes = classify_modality(ds, path)
    notes += mod_notes
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        n_frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise CorruptFile(path, f"missing or invalid image size attributes ({exc})") from exc
    if rows <= 0 or cols <= 0 or n_frames <= 0:
        raise CorruptFile(path, f"invalid image size {rows}x{cols}x{n_frames}")
    check_pixels(path, rows * cols * n_frames * samples, max_pixels, "the DICOM image")
    check_size(path, rows, cols, "the DICOM image")
    values, colour = decode_values(ds, path, n_frames, samples, notes)
    photometric = text(ds, "PhotometricInterpretation").upper()
    # a frame is named by its 1-based number after the file (lunglens.io.key)
    labels = (
        [str(path)]
        if n_frames == 1
        else [str(SourceKey(str(path), str(i + 1))) for i in range(n_frames)]
    )
    return DicomValues(
        path=path,
        ds=ds,
        values=values,
        modality=modality,
        inverted=photometric == "MONOCHROME1",
        positions=_positions(ds, n_frames),
        labels=labels,
        notes=notes,
        colourfulness=colour,
    )


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return ",".join(f"{float(v):g}" if _is_number(v) else str(v) for v in value)
    return str(value).strip()


def _spacing_text(spacing: Any) -> str:
    """PixelSpacing (0028,0030) as shown; a spacing of zero (some CR exports write 0\\0 for
    "unknown") is said to be no spacing rather than shown as a size."""
    shown = _fmt(spacing)
    if shown and all(_is_number(v) and float(v) == 0.0 for v in shown.split(",")):
        return f"{shown} (zero: not given)"
    return shown


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def collect_metadata(ds: Dataset, window: Window | None, colour: float = 0.0) -> dict[str, str]:
    """Selected attributes as strings (results files copy identifiers only on opt-in).

    ``colour`` is the colourfulness of colour pixels (see :func:`lunglens.io.raster.colourfulness`),
    recorded only when non-zero.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lazily converted values may warn about invalid VRs
        md = _collect_metadata(ds, window)
    if colour > 0:
        md["colourfulness"] = f"{colour:.1f}"
    return md


def _collect_metadata(ds: Dataset, window: Window | None) -> dict[str, str]:
    meta_ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    spacing = frame_value(ds, 0, "PixelMeasuresSequence", "PixelSpacing")  # (0028,0030)
    thickness = frame_value(ds, 0, "PixelMeasuresSequence", "SliceThickness")  # (0018,0050)
    file_win, _ = file_window(ds)
    md = {
        "dicom_modality": text(ds, "Modality"),  # (0008,0060)
        "body_part": body_part(ds),  # (0018,0015)
        "image_type": image_type(ds),  # (0008,0008)
        "study_uid": text(ds, "StudyInstanceUID"),  # (0020,000D)
        "series_uid": text(ds, "SeriesInstanceUID"),  # (0020,000E)
        "series_description": text(ds, "SeriesDescription"),  # (0008,103E)
        "study_description": text(ds, "StudyDescription"),  # (0008,1030)
        "sop_class": UID(text(ds, "SOPClassUID")).name if text(ds, "SOPClassUID") else "",
        "pixel_spacing": _spacing_text(spacing),
        "slice_thickness": _fmt(thickness),
        "rows": text(ds, "Rows"),
        "columns": text(ds, "Columns"),
        "frames": text(ds, "NumberOfFrames") or "1",
        "manufacturer": text(ds, "Manufacturer"),  # (0008,0070)
        "patient_id": text(ds, "PatientID"),  # (0010,0020)
        "patient_name": text(ds, "PatientName"),  # (0010,0010), DICOM PN "Family^Given"
        "study_date": text(ds, "StudyDate"),  # (0008,0020), YYYYMMDD
        "accession_number": text(ds, "AccessionNumber"),  # (0008,0050)
        "photometric": text(ds, "PhotometricInterpretation"),  # (0028,0004)
        "transfer_syntax": f"{meta_ts} ({UID(str(meta_ts)).name})" if meta_ts else "",
        "file_window": f"W{file_win.width:g}/L{file_win.center:g}" if file_win else "",
        "window": "VOI LUT"
        if window is None
        else f"{window.name} W{window.width:g}/L{window.center:g}",
    }
    return {k: v for k, v in md.items() if v}


def load_dicom_file(
    path: Path, *, window: str | Window | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Scan:
    """Load one DICOM file; multi-frame (e.g. Enhanced CT) frames become slices.

    Frames are ordered by position along the slice normal when every frame has one, else
    kept in stored order.

    Raises
    ------
    NoPixelData, ImageTooLarge, UnsupportedTransferSyntax, CorruptFile
        See :mod:`lunglens.errors`; messages name the file.
    """
    dv = read_values(path, max_pixels=max_pixels)
    order = list(range(dv.values.shape[0]))
    positions = dv.positions
    if len(order) > 1 and all(p is not None for p in positions):
        order.sort(key=lambda i: (positions[i], i))
    values = dv.values[order]
    image, used = to_display(values, dv.ds, dv.modality, dv.inverted, window, dv.notes)
    pos = [positions[i] for i in order]
    return Scan(
        source=str(path),
        image=image,
        modality=dv.modality,
        kind="dicom",
        raw=values,
        window=used,
        inverted=dv.inverted,
        slice_paths=[dv.labels[i] for i in order],
        slice_positions=None if any(p is None for p in pos) else [float(p or 0.0) for p in pos],
        metadata=collect_metadata(dv.ds, used, dv.colourfulness),
        notes=dv.notes,
    )
