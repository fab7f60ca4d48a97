"""Reader for one DICOM file (single- or multi-frame) and the DICOM pixel pipeline.

Pipeline (docs/architecture.md, "Scan pipeline")::

    decode (pydicom + pylibjpeg plugins; libjpeg directly for retired JPEG processes)
      -> modality LUT (RescaleSlope/Intercept or Modality LUT Sequence -> HU for CT)
      -> VOI: CT -> lung window W1500/L-600 unless asked otherwise;
              X-ray -> the file's VOI LUT, else its Window Center/Width, else 0.5/99.5 percentiles
      -> MONOCHROME1 inverted *after* VOI -> float32 [0, 1]

The series reader (:mod:`lunglens.io.dicom_series`) reuses :func:`read_values` and
:func:`to_display` so a folder and a file give identical pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID

from lunglens.errors import (
    CorruptFile,
    NoPixelData,
    ScanError,
    UnsupportedTransferSyntax,
)
from lunglens.io.raster import colourfulness
from lunglens.io.scan import Scan
from lunglens.io.sniff import DEFAULT_MAX_PIXELS, check_pixels, check_size, resolve_window
from lunglens.preprocess import WINDOW_PRESETS, Window

#: Modality (0008,0060) values of projection radiography: chest X-ray candidates.
XRAY_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
#: Captures / "other": chest only if the body part or a description says so.
CAPTURE_MODALITIES = frozenset({"SC", "OT", ""})
#: Words in BodyPartExamined (0018,0015) or descriptions that mean "chest".
CHEST_WORDS = ("CHEST", "THORAX", "THORAC", "TORAX", "THORAKS", "LUNG", "PULM", "CXR", "RIBS")
#: Retired JPEG processes pydicom has no plugin for but libjpeg (pylibjpeg-libjpeg) decodes:
#: 1.2.840.10008.1.2.4.52-.66 (e.g. .53 spectral selection, .55 full progression, 12-bit).
_LIBJPEG_FALLBACK = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in range(52, 67) if n != 57)
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")  # (7FE0,0010/0008/0009)


@dataclass
class DicomValues:
    """Modality values of one file plus what is needed to display and order them."""

    path: Path
    ds: Dataset
    values: np.ndarray  # float32 [F, H, W]: HU for CT, stored values after modality LUT else
    modality: str  # "ct" | "cxr" | "unknown"
    inverted: bool  # MONOCHROME1
    positions: list[float | None]
    labels: list[str]  # one per frame: "file" or "file#n" (1-based frame number)
    notes: list[str] = field(default_factory=list)
    colourfulness: float = 0.0  # of RGB / YBR / palette pixels before the grey conversion


@contextmanager
def _collect_warnings(notes: list[str]) -> Iterator[None]:
    """Turn pydicom/decoder warnings into (at most three) notes instead of console noise."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen: list[str] = []
    for w in caught:
        msg = str(w.message).splitlines()[0][:200]
        if msg not in seen and not issubclass(w.category, (DeprecationWarning, ResourceWarning)):
            seen.append(msg)
    notes.extend(f"warning while reading: {m}" for m in seen[:3])


def read_dataset(
    path: Path, *, header_only: bool = False, notes: list[str] | None = None
) -> Dataset:
    """Parse a DICOM file (with or without preamble), wrapping every library error.

    ``header_only`` stops before Pixel Data (7FE0,0010): cheap enough for discovery of
    thousand-file folders.
    """
    sink: list[str] = [] if notes is None else notes
    try:
        with _collect_warnings(sink):
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
    if any(tag in ds for tag in _PIXEL_TAGS):
        return
    if is_truncated(ds) or "Rows" in ds:
        raise CorruptFile(
            path,
            "the file has image attributes but no Pixel Data (7FE0,0010): it looks truncated",
            "Export or copy the file again.",
        )
    sop = ds.get("SOPClassUID")
    what = f"a {UID(str(sop)).name} object" if sop else "an object without an image"
    raise NoPixelData(
        path,
        f"no Pixel Data (7FE0,0010) in this DICOM file; it is {what}",
        "Open the image files of the series instead.",
    )


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _body_part(ds: Dataset) -> str:
    """BodyPartExamined (0018,0015), else the Anatomic Region Sequence (0008,2218) meaning."""
    part = _text(ds, "BodyPartExamined").upper()
    if part:
        return part
    for keyword in ("AnatomicRegionSequence",):
        seq = ds.get(keyword)
        if seq:
            return str(seq[0].get("CodeMeaning", "")).upper()
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        anat = shared[0].get("FrameAnatomySequence")
        if anat and anat[0].get("AnatomicRegionSequence"):
            return str(anat[0].AnatomicRegionSequence[0].get("CodeMeaning", "")).upper()
    return ""


def classify_modality(ds: Dataset, path: Path) -> tuple[str, list[str]]:
    """Map DICOM Modality (0008,0060) and body part to ``"ct"``, ``"cxr"`` or ``"unknown"``.

    This only picks the pixel pipeline (CT: Hounsfield units and the lung window; X-ray: the
    file's VOI) and the default model family. Whether the scan is a chest scan at all (MR, a
    BRAIN body part, a CT localizer...) is decided for every scan by
    :mod:`lunglens.inference.gate`, so the image of a refused file can still be displayed.
    """
    notes: list[str] = []
    modality = _text(ds, "Modality").upper()
    part = _body_part(ds)
    descriptions = " ".join(
        _text(ds, k).upper()
        for k in ("StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments")
    )
    says_chest = any(w in part or w in descriptions for w in CHEST_WORDS)
    if modality == "CT":
        return "ct", notes
    if modality in XRAY_MODALITIES:
        if not part:
            notes.append(f"{modality} without a body part; assumed to be a chest X-ray")
        return "cxr", notes
    if modality in CAPTURE_MODALITIES:
        if says_chest:
            return "cxr", notes
        notes.append(
            f"modality {modality or 'missing'} with no body part saying chest: modality unknown, "
            "check that this is a chest image"
        )
    return "unknown", notes


def _check_transfer_syntax(ds: Dataset, path: Path) -> UID:
    """Refuse a Transfer Syntax (0002,0010) no installed decoder handles, before decoding."""
    from pydicom.pixels.decoders.base import get_decoder

    meta = getattr(ds, "file_meta", None)
    tsyntax = (
        UID(str(meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")))
        if meta
        else UID("1.2.840.10008.1.2")
    )
    name = tsyntax.name if tsyntax.is_transfer_syntax else "unknown"
    if str(tsyntax) in _LIBJPEG_FALLBACK:
        try:
            import libjpeg  # noqa: F401
        except ImportError:
            raise UnsupportedTransferSyntax(
                path,
                f"transfer syntax {tsyntax} ({name}) needs pylibjpeg-libjpeg",
                "Install pylibjpeg-libjpeg.",
            ) from None
        return tsyntax
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise UnsupportedTransferSyntax(
            path,
            f"transfer syntax {tsyntax} ({name}) cannot be decoded",
            "Convert it to an uncompressed or JPEG/JPEG 2000 syntax (e.g. dcmdjpeg, gdcmconv).",
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise UnsupportedTransferSyntax(
            path,
            f"no decoder installed for transfer syntax {tsyntax} ({name})",
            f"Install a plugin: {missing}",
        )
    return tsyntax


def _decode_libjpeg(ds: Dataset, n_frames: int) -> np.ndarray:
    """Decode retired JPEG processes frame by frame with libjpeg (full ISO 10918-1 codec)."""
    import libjpeg
    from pydicom.encaps import generate_frames

    frames = [
        np.asarray(libjpeg.decode(bytes(f)))
        for f in generate_frames(ds.PixelData, number_of_frames=n_frames)
    ]
    arr = np.stack(frames)
    bits = int(ds.get("BitsStored", 16))
    if int(ds.get("PixelRepresentation", 0)) == 1 and bits < 32:  # two's complement at BitsStored
        arr = arr.astype(np.int32)
        arr = np.where(arr >= 2 ** (bits - 1), arr - 2**bits, arr)
    return arr


def _frame_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """Item of a functional group macro for one frame: per-frame first, then shared."""
    for groups, index in (
        (ds.get("PerFrameFunctionalGroupsSequence"), frame),
        (ds.get("SharedFunctionalGroupsSequence"), 0),
    ):
        if groups and index < len(groups):
            seq = groups[index].get(sequence)
            if seq:
                item: Dataset = seq[0]
                return item
    return None


def _frame_value(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    item = _frame_item(ds, frame, sequence)
    if item is not None and keyword in item:
        return item.get(keyword)
    return ds.get(keyword)


def modality_values(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """Apply the modality LUT per frame -> float32 ``[F, H, W]`` (Hounsfield units for CT).

    Enhanced CT keeps RescaleSlope (0028,1053) / RescaleIntercept (0028,1052) in the Pixel
    Value Transformation Sequence (0028,9145) of the per-frame or shared functional groups, so
    each frame gets its own; classic images carry them at the top level.
    """
    if "ModalityLUTSequence" in ds:  # (0028,3000)
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    out = np.empty(pixels.shape, dtype=np.float32)
    for i in range(pixels.shape[0]):
        slope = _frame_value(ds, i, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _frame_value(ds, i, "PixelValueTransformationSequence", "RescaleIntercept")
        tmp = Dataset()
        if slope is not None and intercept is not None:
            tmp.RescaleSlope = slope
            tmp.RescaleIntercept = intercept
        out[i] = apply_modality_lut(pixels[i], tmp)
    return out


def _to_grey_frames(
    ds: Dataset, arr: np.ndarray, n_frames: int, notes: list[str]
) -> tuple[np.ndarray, float]:
    """Shape any decoded array as ``[F, H, W]``; colour (RGB / YBR / palette) -> BT.601 luma.

    Palette colour (PALETTE COLOR, PS3.3 C.7.6.3.1.5) goes through its lookup tables first
    (``apply_color_lut``). Returns the frames and the colourfulness of the colour pixels (0 for
    grey images), which the chest-image gate uses to refuse colour photographs.
    """
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        samples = 3
    colour = 0.0
    if samples == 3:
        if arr.ndim == 3:
            arr = arr[None]
        scale = 255.0 / max(float(arr.max(initial=0)), 255.0)  # 16-bit palettes: 0..65535
        colour = colourfulness(arr[arr.shape[0] // 2, ..., :3].astype(np.float32) * scale)
        notes.append(f"colour image ({photometric}) converted to grey")
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif arr.ndim == 2:
        arr = arr[None]
    if arr.shape[0] != n_frames:
        raise CorruptFile(None, f"decoded {arr.shape[0]} frames, header says {n_frames}")
    return arr, colour


def _positions(ds: Dataset, n_frames: int) -> list[float | None]:
    """Position of each frame along the slice normal (mm).

    ImagePositionPatient (0020,0032) dotted with the normal = row x column direction cosines
    of ImageOrientationPatient (0020,0037); Enhanced objects keep both in the Plane Position /
    Plane Orientation Sequences (0020,9113 / 0020,9116).
    """
    out: list[float | None] = []
    for i in range(n_frames):
        ipp = _frame_value(ds, i, "PlanePositionSequence", "ImagePositionPatient")
        iop = _frame_value(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient")
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
    tsyntax = _check_transfer_syntax(ds, path)
    try:
        with _collect_warnings(notes):
            if str(tsyntax) in _LIBJPEG_FALLBACK:
                arr = _decode_libjpeg(ds, n_frames)
                notes.append(f"decoded {tsyntax.name} with libjpeg")
            else:
                arr = ds.pixel_array
            frames, colour = _to_grey_frames(ds, np.asarray(arr), n_frames, notes)
            values = modality_values(ds, frames) if samples == 1 else frames.astype(np.float32)
    except ScanError as exc:
        raise type(exc)(path, exc.reason, exc.hint) from exc
    except MemoryError as exc:
        raise CorruptFile(path, "not enough memory to decode the pixel data") from exc
    except Exception as exc:  # ValueError (short pixel data), RuntimeError (codec), ...
        raise CorruptFile(
            path,
            f"cannot decode the pixel data ({tsyntax.name}); the file is truncated or damaged "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            "Export or copy the file again.",
        ) from exc
    photometric = _text(ds, "PhotometricInterpretation").upper()
    labels = [str(path)] if n_frames == 1 else [f"{path}#{i + 1}" for i in range(n_frames)]
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


def _first(value: Any) -> Any:
    """First item of a multi-valued element (MultiValue / list), or the value itself."""
    if isinstance(value, (str, bytes)):
        return value
    try:
        return value[0]
    except (TypeError, IndexError, KeyError):
        return value


def _file_window(ds: Dataset, frame: int = 0) -> tuple[Window | None, str]:
    """First WindowCenter (0028,1050) / WindowWidth (0028,1051) of the file (or frame)."""
    center = _frame_value(ds, frame, "FrameVOILUTSequence", "WindowCenter")
    width = _frame_value(ds, frame, "FrameVOILUTSequence", "WindowWidth")
    if center is None or width is None:
        return None, "LINEAR"
    try:
        c, w = float(_first(center)), float(_first(width))
    except (TypeError, ValueError, IndexError):
        return None, "LINEAR"
    function = str(_frame_value(ds, frame, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR")
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
    if modality == "ct":
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
    file_win, function = _file_window(ds)
    if file_win is not None and file_win.width > 0:
        if function == "SIGMOID":  # VOI LUT Function (0028,1056), PS3.3 C.11.2.1.3.1
            z = -4.0 * (values.astype(np.float64) - file_win.center) / file_win.width
            sig = (1.0 / (1.0 + np.exp(np.clip(z, -60.0, 60.0)))).astype(np.float32)
            return (1.0 - sig if inverted else sig), file_win
        return file_win.apply(values, invert=inverted), file_win
    win = percentile_window(values)
    notes.append("no VOI in the file: window from the 0.5-99.5 percentiles")
    return win.apply(values, invert=inverted), win


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return ",".join(f"{float(v):g}" if _is_number(v) else str(v) for v in value)
    return str(value).strip()


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _image_type(ds: Dataset) -> str:
    """Image Type (0008,0008) values joined by backslashes, as DICOM writes them."""
    value = ds.get("ImageType")
    if value is None:
        return ""
    items = [value] if isinstance(value, str) else list(value)
    return "\\".join(str(v).strip() for v in items)


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
    spacing = _frame_value(ds, 0, "PixelMeasuresSequence", "PixelSpacing")  # (0028,0030)
    thickness = _frame_value(ds, 0, "PixelMeasuresSequence", "SliceThickness")  # (0018,0050)
    file_win, _ = _file_window(ds)
    md = {
        "dicom_modality": _text(ds, "Modality"),  # (0008,0060)
        "body_part": _body_part(ds),  # (0018,0015)
        "image_type": _image_type(ds),  # (0008,0008)
        "study_uid": _text(ds, "StudyInstanceUID"),  # (0020,000D)
        "series_uid": _text(ds, "SeriesInstanceUID"),  # (0020,000E)
        "series_description": _text(ds, "SeriesDescription"),  # (0008,103E)
        "study_description": _text(ds, "StudyDescription"),  # (0008,1030)
        "sop_class": UID(_text(ds, "SOPClassUID")).name if _text(ds, "SOPClassUID") else "",
        "pixel_spacing": _fmt(spacing),
        "slice_thickness": _fmt(thickness),
        "rows": _text(ds, "Rows"),
        "columns": _text(ds, "Columns"),
        "frames": _text(ds, "NumberOfFrames") or "1",
        "manufacturer": _text(ds, "Manufacturer"),  # (0008,0070)
        "patient_id": _text(ds, "PatientID"),  # (0010,0020)
        "patient_name": _text(ds, "PatientName"),  # (0010,0010), DICOM PN "Family^Given"
        "study_date": _text(ds, "StudyDate"),  # (0008,0020), YYYYMMDD
        "accession_number": _text(ds, "AccessionNumber"),  # (0008,0050)
        "photometric": _text(ds, "PhotometricInterpretation"),  # (0028,0004)
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
