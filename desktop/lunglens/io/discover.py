"""Find the scoring units under a folder, cheaply, for the batch scorer.

One :class:`ScanSource` per raster file, per single DICOM file and per multi-file DICOM series
(files grouped by folder and SeriesInstanceUID (0020,000E)). Only headers are read
(``stop_before_pixels``), so discovering thousands of files takes seconds, and nothing is
raised: problems come back as ``(path, error)`` pairs the scorer writes as error rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lunglens.errors import ScanError, UnreadablePath
from lunglens.io.dicom_series import group_series, list_files, load_dicom_series, read_headers
from lunglens.io.key import SourceKey
from lunglens.io.registry import load_scan
from lunglens.io.scan import Scan
from lunglens.io.sniff import DEFAULT_MAX_PIXELS, DICOM_EXTENSIONS
from lunglens.preprocess import Window

#: ScanSource.kind values.
SOURCE_KINDS = ("raster", "dicom", "dicom-series")


@dataclass(frozen=True)
class ScanSource:
    """One scoring unit.

    Attributes
    ----------
    key
        Stable identity used in results files and by ``--resume``: the file path, or
        ``folder#SeriesInstanceUID`` for a multi-file series.
    kind
        ``"raster"`` (also used for files with an image name but unrecognised content, so that
        loading them reports the error), ``"dicom"`` or ``"dicom-series"``.
    paths
        The file(s); a series' files in name order (slices are ordered at load time).
    """

    key: str
    kind: str
    paths: list[Path] = field(default_factory=list)


def discover_sources(
    root: Path | str, recursive: bool = True, *, ignored: list[str] | None = None
) -> tuple[list[ScanSource], list[tuple[str, ScanError]]]:
    """List the scoring units under ``root`` (a folder or a single file). Never raises.

    Parameters
    ----------
    root
        Folder to search, or one file.
    recursive
        Descend into sub-folders (symlinked folders are not followed, so no loops).
    ignored
        If given, receives one human-readable note per skipped file (hidden, text, licence,
        DICOM objects without an image such as SR/KO/DICOMDIR).

    Returns
    -------
    tuple
        ``(sources, errors)``: sources sorted by key; errors are files discovery itself could
        not read (permission denied, truncated DICOM header) and a missing/empty ``root``.
    """
    notes = ignored if ignored is not None else []
    root = Path(root).expanduser()
    errors: list[tuple[str, ScanError]] = []
    try:
        if root.is_file():
            files = [root]
        elif root.is_dir():
            unlisted: list[OSError] = []
            files = list_files(root, recursive, unreadable=unlisted)
            for exc in unlisted:  # never silently dropped: one error per unreadable folder
                where = Path(exc.filename) if exc.filename else root
                errors.append(
                    (
                        str(where),
                        UnreadablePath(
                            where,
                            f"cannot list this folder ({exc.strerror}); its scans were not scored",
                            "Make it readable, then rerun with --resume.",
                        ),
                    )
                )
            if not files and not errors:
                return [], [(str(root), UnreadablePath(root, "the folder is empty"))]
        else:
            return [], [(str(root), UnreadablePath(root, "no such file or folder"))]
    except ScanError as exc:
        return [], [(str(root), exc)]
    except OSError as exc:
        return [], [(str(root), UnreadablePath(root, f"cannot access it ({exc.strerror})"))]

    found = read_headers(files)
    notes.extend(found.ignored)
    errors.extend(found.errors)
    sources: list[ScanSource] = [ScanSource(str(p), "raster", [p]) for p in found.others]
    by_folder: dict[Path, list[tuple[Path, object]]] = {}
    for path, ds in found.images:
        by_folder.setdefault(path.parent, []).append((path, ds))
    for folder, images in by_folder.items():
        for series in group_series(images):  # type: ignore[arg-type]
            if series.n_files == 1:
                path = series.paths[0]
                sources.append(ScanSource(str(path), "dicom", [path]))
            else:
                key = str(SourceKey(str(folder), series.uid))
                sources.append(ScanSource(key, "dicom-series", sorted(series.paths)))
    # unknown content is kept only when the name claims an image; else it is noted as ignored
    kept: list[ScanSource] = []
    for src in sources:
        path = src.paths[0]
        if src.kind == "raster" and not _claims_image(path):
            notes.append(f"ignored {path}: not an image or DICOM file")
            continue
        kept.append(src)
    kept.sort(key=lambda s: s.key)
    return kept, errors


def _claims_image(path: Path) -> bool:
    """Raster magic bytes, or an image/DICOM extension (junk named .png -> error row)."""
    from lunglens.io.sniff import RASTER_EXTENSIONS, raster_format, read_head

    if path.suffix.lower() in RASTER_EXTENSIONS or path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        return raster_format(read_head(path, 16)) is not None
    except ScanError:
        return True


def load_source(
    source: ScanSource,
    *,
    window: str | Window | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Scan:
    """Load one discovered unit (same pixels as :func:`lunglens.io.load_scan`).

    Raises
    ------
    lunglens.errors.ScanError
        As :func:`~lunglens.io.load_scan`; the scorer turns it into an error row.
    """
    if source.kind == "dicom-series":
        return load_dicom_series(
            source.paths,
            window=window,
            max_pixels=max_pixels,
            series_uid=SourceKey.parse(source.key).series_uid,
            source=source.key,
        )
    return load_scan(source.paths[0], window=window, max_pixels=max_pixels)
