"""Reader registry and the :func:`load_scan` entry point.

A reader is chosen by *content*: each registered :class:`Reader` has a ``sniff`` predicate over
the first bytes of the file. Folders always go to the DICOM series reader. New formats (e.g.
NIfTI) plug in with :func:`register_reader` without touching callers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lunglens.errors import ScanError, UnreadablePath
from lunglens.io import dicom_file, dicom_series, raster
from lunglens.io.scan import Scan
from lunglens.io.sniff import (
    DEFAULT_MAX_PIXELS,
    looks_like_bare_dicom,
    looks_like_dicom,
    raster_format,
    read_head,
    reject_unknown,
    resolve_window,
)
from lunglens.preprocess import Window


@dataclass(frozen=True)
class Reader:
    """A file reader: ``sniff(head, path)`` says whether it can read the file.

    ``load(path, window, max_pixels)`` returns a :class:`Scan` or raises a
    :class:`~lunglens.errors.ScanError`.
    """

    name: str
    sniff: Callable[[bytes, Path], bool]
    load: Callable[[Path, Window | str | None, int], Scan]


def _load_dicom(path: Path, window: Window | str | None, max_pixels: int) -> Scan:
    return dicom_file.load_dicom_file(path, window=window, max_pixels=max_pixels)


def _load_raster(path: Path, window: Window | str | None, max_pixels: int) -> Scan:
    scan = raster.load_raster(path, max_pixels=max_pixels)
    if window is not None:
        scan.notes.append("window ignored: a plain image has no modality values to window")
    return scan


#: Tried in order; the first whose ``sniff`` matches reads the file.
READERS: list[Reader] = [
    Reader("dicom", lambda head, _p: looks_like_dicom(head), _load_dicom),
    Reader("raster", lambda head, _p: raster_format(head) is not None, _load_raster),
    Reader("dicom", lambda head, _p: looks_like_bare_dicom(head), _load_dicom),
]


def register_reader(reader: Reader, *, first: bool = False) -> None:
    """Add a reader (``first=True`` puts it before the built-in ones)."""
    if first:
        READERS.insert(0, reader)
    else:
        READERS.append(reader)


def reader_for(path: Path) -> Reader:
    """The reader for a file, by content.

    Raises
    ------
    UnreadablePath, CorruptFile, UnsupportedFile
        Missing / unreadable / empty file, or content no reader recognises.
    """
    head = read_head(path)
    for reader in READERS:
        if reader.sniff(head, path):
            return reader
    reject_unknown(path)
    raise AssertionError("unreachable")  # reject_unknown always raises


def load_scan(
    path: str | Path,
    *,
    window: str | Window | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Scan:
    """Load a scan from an image file, a DICOM file or a folder holding a DICOM series.

    Parameters
    ----------
    path
        PNG / JPEG / TIFF / BMP, a DICOM file (any extension), or a folder (the largest
        DICOM series in it is loaded; see :func:`lunglens.io.list_series`).
    window
        CT window: a preset name (``"lung"``, ``"mediastinum"``, ``"bone"``) or a
        :class:`~lunglens.preprocess.Window`. ``None``: lung for CT; for X-ray the file's own
        VOI, else percentiles. Ignored for plain images (no modality values).
    max_pixels
        Refuse scans with more decoded pixels (all frames/slices) than this, checked from the
        header before decoding (decompression-bomb guard).

    Raises
    ------
    lunglens.errors.ScanError
        Always a typed subclass whose message names the file, the reason and what to do; library
        exceptions are wrapped. ``ValueError`` only for an unknown window preset name.
    """
    resolve_window(window)  # fail fast on a bad preset name
    p = Path(path).expanduser()
    try:
        is_dir = p.is_dir()
    except OSError as exc:
        raise UnreadablePath(p, f"cannot access it ({exc.strerror})") from None
    if is_dir:
        return dicom_series.load_dicom_series(p, window=window, max_pixels=max_pixels)
    reader = reader_for(p)
    try:
        return reader.load(p, window, max_pixels)
    except ScanError:
        raise
    except MemoryError as exc:
        raise ScanError(p, "not enough memory to load the scan", "Close other programs.") from exc
    except (
        OSError,
        ValueError,
        RuntimeError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
    ) as exc:  # last line of defence: never a bare traceback
        from lunglens.errors import CorruptFile

        raise CorruptFile(p, f"cannot read it ({type(exc).__name__}: {exc})") from exc
