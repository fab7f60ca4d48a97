"""Reader for a folder holding a DICOM series (one file per slice, or multi-frame files).

Files are grouped by SeriesInstanceUID (0020,000E). The largest series is loaded unless one is
named; slices are ordered by their position along the slice normal (ImagePositionPatient
(0020,0032) . normal of ImageOrientationPatient (0020,0037)), falling back to InstanceNumber
(0020,0013) and then to the file name. File names are never trusted for order: PACS exports
name files by SOP Instance UID or by arrival order.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from lunglens.errors import (
    CorruptFile,
    ImageTooLarge,
    NoPixelData,
    ScanError,
    UnreadablePath,
    UnsupportedFile,
)
from lunglens.io.dicom_file import (
    DicomValues,
    check_pixel_data,
    collect_metadata,
    is_truncated,
    read_dataset,
    read_values,
)
from lunglens.io.dicom_voi import to_display
from lunglens.io.scan import Scan
from lunglens.io.sniff import (
    DEFAULT_MAX_PIXELS,
    check_pixels,
    read_head,
    skip_reason,
    sniff,
)
from lunglens.preprocess import Window

_NO_UID = "(no SeriesInstanceUID)"


@dataclass
class SeriesInfo:
    """One DICOM series found in a folder."""

    uid: str
    paths: list[Path]
    modality: str = ""
    description: str = ""
    n_images: int = 0  # frames over all files

    @property
    def n_files(self) -> int:
        """Number of files of the series."""
        return len(self.paths)


@dataclass
class FolderHeaders:
    """What a header pass over some files found (no pixel data read)."""

    images: list[tuple[Path, Dataset]] = field(default_factory=list)
    others: list[Path] = field(default_factory=list)  # raster / unknown content, for callers
    ignored: list[str] = field(default_factory=list)
    errors: list[tuple[str, ScanError]] = field(default_factory=list)


def list_files(
    folder: Path, recursive: bool = True, *, unreadable: list[OSError] | None = None
) -> list[Path]:
    """Regular files under ``folder`` in a stable order; symlinked folders are not followed.

    Sub-folders that cannot be listed (permission denied, I/O error) are appended to
    ``unreadable`` when it is given (the batch scorer writes one error row each); without it
    they raise only when nothing at all could be listed.
    """
    if not folder.is_dir():
        raise UnreadablePath(folder, "no such folder", "Check the path.")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise UnreadablePath(folder, "permission denied", "Make the folder readable.")
    out: list[Path] = []
    errors: list[OSError] = []
    if recursive:
        for root, dirs, files in os.walk(folder, onerror=errors.append):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out += [Path(root) / f for f in sorted(files)]
    else:
        try:
            out = sorted(p for p in folder.iterdir() if not p.is_dir())
        except OSError as exc:
            raise UnreadablePath(folder, f"cannot list it ({exc.strerror})") from None
    if unreadable is not None:
        unreadable.extend(errors)
    elif errors and not out:
        raise UnreadablePath(folder, f"cannot list it ({errors[0].strerror})")
    return out


def read_headers(paths: Iterable[Path]) -> FolderHeaders:
    """Sniff every file and read DICOM headers with ``stop_before_pixels`` (cheap).

    DICOM objects without an image (SR, KO, PR, DICOMDIR: no Rows (0028,0010)) are ignored with
    a note; unreadable files are returned as errors, never raised.
    """
    found = FolderHeaders()
    for path in paths:
        reason = skip_reason(path)
        if reason:
            found.ignored.append(f"ignored {path}: {reason}")
            continue
        try:
            kind = sniff(path, read_head(path))
            if kind != "dicom":
                found.others.append(path)
                continue
            ds = read_dataset(path, header_only=True)
        except ScanError as exc:
            found.errors.append((str(path), exc))
            continue
        if "Rows" not in ds:
            if is_truncated(ds):
                found.errors.append((str(path), CorruptFile(path, "DICOM header is truncated")))
                continue
            try:  # an image object (CT Image Storage, ...) cut before its image: an error
                check_pixel_data(ds, path)
            except CorruptFile as exc:
                found.errors.append((str(path), exc))
                continue
            except NoPixelData:  # SR, KO, PR, DICOMDIR: not a scan
                pass
            sop = str(ds.get("SOPClassUID", "")) or "unknown SOP class"
            found.ignored.append(f"ignored {path}: DICOM object without an image ({sop})")
            continue
        found.images.append((path, ds))
    return found


def group_series(images: Sequence[tuple[Path, Dataset]]) -> list[SeriesInfo]:
    """Group headers by SeriesInstanceUID (0020,000E), largest series first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lazily converted UIDs may warn about invalid VRs
        return _group_series(images)


def _group_series(images: Sequence[tuple[Path, Dataset]]) -> list[SeriesInfo]:
    groups: dict[str, SeriesInfo] = {}
    for path, ds in images:
        uid = str(ds.get("SeriesInstanceUID", "") or _NO_UID)
        info = groups.setdefault(
            uid,
            SeriesInfo(uid, [], str(ds.get("Modality", "")), str(ds.get("SeriesDescription", ""))),
        )
        info.paths.append(path)
        info.n_images += int(ds.get("NumberOfFrames") or 1)
    return sorted(groups.values(), key=lambda s: (-s.n_images, -s.n_files, s.uid))


def list_series(folder: str | Path, recursive: bool = True) -> list[SeriesInfo]:
    """The DICOM image series under ``folder``, largest first (headers only, cheap).

    Raises
    ------
    UnreadablePath
        The folder does not exist or cannot be listed.
    """
    folder = Path(folder)
    return group_series(read_headers(list_files(folder, recursive)).images)


def _sort_slices(stack: list[tuple[DicomValues, int]], notes: list[str]) -> list[int]:
    """Order of the slices: by position, else InstanceNumber (0020,0013), else file name."""
    positions = [dv.positions[i] for dv, i in stack]
    if all(p is not None for p in positions):
        keyed = [(float(p or 0.0), n) for n, p in enumerate(positions)]
        order = [n for _, n in sorted(keyed)]
        dupes = len(positions) - len({round(float(p or 0.0), 3) for p in positions})
        if dupes:
            notes.append(f"{dupes} slices share a position with another slice")
        return order
    numbers = [dv.ds.get("InstanceNumber") for dv, _ in stack]
    if all(n is not None for n in numbers):
        notes.append("no ImagePositionPatient: slices ordered by InstanceNumber")
        keyed2 = [(int(numbers[n] or 0), i, n) for n, (_, i) in enumerate(stack)]
        return [n for *_, n in sorted(keyed2)]
    notes.append("no slice position or InstanceNumber: slices ordered by file name")
    return sorted(range(len(stack)), key=lambda n: (str(stack[n][0].path), stack[n][1]))


def _series_files(
    folder_or_paths: str | Path | Sequence[Path], source: str | None
) -> tuple[list[Path], str]:
    """The files to look at and the scan's name (``source``, else the folder)."""
    if isinstance(folder_or_paths, (str, Path)):
        folder = Path(folder_or_paths)
        files = list_files(folder, recursive=True)
        if not files:
            raise UnreadablePath(folder, "the folder is empty", "Choose a folder with DICOM files.")
        return files, source or str(folder)
    files = [Path(p) for p in folder_or_paths]
    folder = files[0].parent if files else Path(".")
    return files, source or str(folder)


def _choose_series(
    headers: FolderHeaders, n_files: int, name: str, series_uid: str | None, notes: list[str]
) -> SeriesInfo:
    """The series to load: ``series_uid``, else the largest (the others are noted)."""
    series = group_series(headers.images)
    if not series:
        if headers.errors and not headers.others:
            err = headers.errors[0][1]
            raise type(err)(name, f"no readable DICOM image ({err})")
        raise UnsupportedFile(
            name,
            f"no DICOM images in the folder ({n_files} files, {len(headers.others)} non-DICOM)",
            "Open a single image file, or score the folder with `lunglens score`.",
        )
    if series_uid is not None:
        picked = [s for s in series if s.uid == series_uid]
        if not picked:
            raise UnsupportedFile(name, f"no series with SeriesInstanceUID {series_uid}")
        chosen = picked[0]
    else:
        chosen = series[0]
    others = [s for s in series if s is not chosen]
    if others:
        listed = "; ".join(
            f"{s.uid} ({s.description or s.modality}, {s.n_files} files)" for s in others[:5]
        )
        notes.append(f"{len(others)} other series ignored (loaded the largest): {listed}")
    return chosen


def _series_pixels(chosen: SeriesInfo, headers: FolderHeaders) -> int:
    """Rows (0028,0010) x Columns (0028,0011) x NumberOfFrames (0028,0008) over the series,
    from the headers: a bomb is refused before any pixel is decoded."""
    by_path = dict(headers.images)
    return sum(
        int(by_path[p].get("Rows") or 0)
        * int(by_path[p].get("Columns") or 0)
        * int(by_path[p].get("NumberOfFrames") or 1)
        for p in chosen.paths
    )


def _read_slices(paths: list[Path], max_pixels: int, notes: list[str]) -> list[DicomValues]:
    """Decode the files of a series; a bad slice is skipped with a note (all bad: its error),
    and slices of another size than most are dropped."""
    loaded: list[DicomValues] = []
    first_error: ScanError | None = None
    for path in paths:
        try:
            loaded.append(read_values(path, max_pixels=max_pixels))
        except ImageTooLarge:
            raise
        except ScanError as exc:
            first_error = first_error or exc
            notes.append(f"skipped slice: {exc}")
    if not loaded:
        assert first_error is not None
        raise first_error
    shapes = Counter(dv.values.shape[1:] for dv in loaded)
    shape = shapes.most_common(1)[0][0]
    for dv in loaded:
        if dv.values.shape[1:] != shape:
            notes.append(f"skipped {dv.path}: size {dv.values.shape[1:]} differs from {shape}")
    return [dv for dv in loaded if dv.values.shape[1:] == shape]


def load_dicom_series(
    folder_or_paths: str | Path | Sequence[Path],
    *,
    window: str | Window | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    series_uid: str | None = None,
    source: str | None = None,
) -> Scan:
    """Load one series from a folder (or an explicit file list) as a stack of slices.

    Parameters
    ----------
    folder_or_paths
        A folder (searched recursively) or the files of one series (as found by discovery).
    series_uid
        SeriesInstanceUID to load; default: the series with the most images (others noted).
    source
        Name for :attr:`Scan.source` (default: the folder).

    Raises
    ------
    UnreadablePath
        Missing, unreadable or empty folder.
    UnsupportedFile
        The folder holds no DICOM images.
    ImageTooLarge
        The series has more pixels than ``max_pixels`` (checked from headers, before decoding).
    """
    notes: list[str] = []
    files, name = _series_files(folder_or_paths, source)
    headers = read_headers(files)
    notes += headers.ignored
    notes += [f"ignored non-DICOM file {p}" for p in headers.others]
    notes += [f"ignored unreadable file: {err}" for _, err in headers.errors]
    chosen = _choose_series(headers, len(files), name, series_uid, notes)
    total = _series_pixels(chosen, headers)
    check_pixels(name, total, max_pixels, f"the series ({chosen.n_files} files)")
    loaded = _read_slices(chosen.paths, max_pixels, notes)
    stack = [(dv, i) for dv in loaded for i in range(dv.values.shape[0])]
    order = _sort_slices(stack, notes)
    raw = np.stack([stack[n][0].values[stack[n][1]] for n in order]).astype(np.float32)
    first = loaded[0]
    for dv in loaded:
        notes += [n for n in dv.notes if n not in notes]
    image, used = to_display(raw, first.ds, first.modality, first.inverted, window, notes)
    positions = [stack[n][0].positions[stack[n][1]] for n in order]
    metadata = collect_metadata(first.ds, used, max(dv.colourfulness for dv in loaded))
    metadata["frames"] = str(len(order))
    metadata["n_files"] = str(len(loaded))
    return Scan(
        source=name,
        image=image,
        modality=first.modality,
        kind="dicom-series",
        raw=raw,
        window=used,
        inverted=first.inverted,
        slice_paths=[stack[n][0].labels[stack[n][1]] for n in order],
        slice_positions=None
        if any(p is None for p in positions)
        else [float(p or 0.0) for p in positions],
        metadata=metadata,
        notes=notes,
    )
