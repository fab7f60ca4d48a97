"""Content sniffing and the checks every reader shares.

Readers are chosen by what a file *contains* (DICOM preamble, image magic bytes), not by its
name: exports from PACS often have no extension, and users rename files. The extension is only
used to tell "junk that claims to be an image" (:class:`~lunglens.errors.CorruptFile`) from
"not an image at all" (:class:`~lunglens.errors.UnsupportedFile`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lunglens.errors import (
    CorruptFile,
    ImageTooLarge,
    ImageTooSmall,
    UnreadablePath,
    UnsupportedFile,
)
from lunglens.preprocess import WINDOW_PRESETS, Window

#: The one limit on decoded pixels for one scan (all frames / slices together), also given to
#: Pillow as its ``MAX_IMAGE_PIXELS`` (:mod:`lunglens.io.raster`). 200 M pixels is a 600-slice
#: 512x512 CT with room to spare, and still bounds memory (float32 ``raw`` + ``image`` = 8 bytes
#: per pixel, 1.6 GB) so a crafted header cannot make a laptop swap to death.
DEFAULT_MAX_PIXELS = 200_000_000

#: Smallest side, in pixels, of an image that can be a scan. The smallest image of the training
#: data is a 148x61 CT crop; a 1x1 or 16x16 file is a tracking pixel or an icon, and a model
#: would still give it a probability.
MIN_SCAN_SIDE = 32

#: Bytes needed to sniff: 128-byte preamble + ``DICM`` (PS3.10 7.1).
SNIFF_BYTES = 132

RASTER_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".dib"}
)
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic", ".ima"})

#: Magic numbers of the raster formats LungLens reads (Pillow decodes them).
_RASTER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)


def read_head(path: Path, n: int = SNIFF_BYTES) -> bytes:
    """Return the first ``n`` bytes of a regular file, or raise a typed error.

    Refuses anything that is not a regular file *before* opening it: opening a FIFO or a
    device named ``scan.png`` would block forever.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UnreadablePath(path, "no such file or folder", "Check the path.") from None
    except OSError as exc:
        raise UnreadablePath(
            path, f"cannot access it ({exc.strerror})", "Check permissions."
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsupportedFile(path, "not a regular file (device, pipe or socket)")
    if not os.access(path, os.R_OK):
        raise UnreadablePath(path, "permission denied", "Make the file readable for your user.")
    if st.st_size == 0:
        raise CorruptFile(path, "the file is empty (0 bytes)", "Copy or export it again.")
    try:
        with path.open("rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise UnreadablePath(
            path, f"cannot read it ({exc.strerror})", "Check permissions."
        ) from None


def looks_like_dicom(head: bytes) -> bool:
    """True for a PS3.10 file (``DICM`` at offset 128)."""
    return len(head) >= SNIFF_BYTES and head[128:132] == b"DICM"


def looks_like_bare_dicom(head: bytes) -> bool:
    """True for a DICOM data set without the 128-byte preamble (old ACR-NEMA style exports).

    Such files start with an element of group 0x0002 (file meta) or 0x0008 (identifying
    group) in little-endian, followed either by an explicit VR (two upper-case letters) or an
    implicit 4-byte length. Checking the group *and* the plausibility of what follows keeps
    random bytes from being mistaken for DICOM.
    """
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    implicit_len = int.from_bytes(head[4:8], "little")
    return implicit_len < 1024


def raster_format(head: bytes) -> str | None:
    """Name of the raster format the magic bytes announce, else ``None``."""
    for magic, name in _RASTER_MAGIC:
        if head.startswith(magic):
            return name
    return None


def sniff(path: Path, head: bytes) -> str:
    """Classify a file by content: ``"dicom"``, ``"raster"`` or ``"unknown"``.

    A file without a DICOM preamble counts as DICOM when its name says so and its first bytes
    are a plausible data element, or when no name hint exists but the bytes are unambiguous.
    """
    if looks_like_dicom(head):
        return "dicom"
    if raster_format(head) is not None:
        return "raster"
    if looks_like_bare_dicom(head):
        return "dicom"
    return "unknown"


def reject_unknown(path: Path) -> None:
    """Raise the right error for a file no reader recognised.

    Its name claims an image or DICOM format -> :class:`CorruptFile` (damaged or mislabelled);
    otherwise -> :class:`UnsupportedFile`.
    """
    suffix = path.suffix.lower()
    if suffix in RASTER_EXTENSIONS or suffix in DICOM_EXTENSIONS:
        raise CorruptFile(
            path,
            f"named {suffix} but its content is not a readable image or DICOM file "
            "(corrupt or random bytes)",
            "Export or copy the scan again.",
        )
    raise UnsupportedFile(
        path,
        "not an image or DICOM file",
        "LungLens reads DICOM (.dcm), PNG, JPEG, TIFF and BMP.",
    )


def check_pixels(path: Path | str, n_pixels: int, max_pixels: int, what: str) -> None:
    """Decompression-bomb guard: refuse ``n_pixels`` above ``max_pixels`` *before* decoding."""
    if n_pixels > max_pixels:
        raise ImageTooLarge(
            path,
            f"{what} has {n_pixels:,} pixels, more than LungLens' limit of {max_pixels:,} "
            "(it bounds memory; a crafted header can claim billions)",
            "If the scan is genuine, export it at a lower resolution or with fewer slices.",
        )


def check_size(path: Path | str, rows: int, columns: int, what: str) -> None:
    """Refuse an image with a side under :data:`MIN_SCAN_SIDE` (not a scan), from its header."""
    if min(rows, columns) < MIN_SCAN_SIDE:
        raise ImageTooSmall(
            path,
            f"{what} is {columns}x{rows} pixels; a scan has at least {MIN_SCAN_SIDE} pixels "
            "on each side (this looks like an icon or a thumbnail)",
            "Open the full-size image or DICOM file.",
        )


def resolve_window(window: str | Window | None) -> Window | None:
    """Turn a preset name into a :class:`Window`; ``None`` means "reader default".

    Raises
    ------
    ValueError
        For an unknown preset name (a caller error, not a file error).
    """
    if window is None or isinstance(window, Window):
        return window
    try:
        return WINDOW_PRESETS[window.lower()]
    except KeyError:
        names = ", ".join(WINDOW_PRESETS)
        raise ValueError(f"unknown window preset {window!r} (choose one of {names})") from None


#: Extensions that are never scans; discovery skips them with an "ignored" note.
SKIP_EXTENSIONS = frozenset(
    {
        ".txt",
        ".csv",
        ".tsv",
        ".json",
        ".md",
        ".rst",
        ".xml",
        ".html",
        ".htm",
        ".pdf",
        ".log",
        ".yaml",
        ".yml",
        ".ini",
        ".cfg",
        ".toml",
        ".py",
        ".sh",
        ".bat",
        ".ps1",
        ".zip",
        ".gz",
        ".tar",
        ".7z",
        ".rar",
        ".db",
        ".sqlite",
        ".xls",
        ".xlsx",
        ".doc",
        ".docx",
        ".rtf",
        ".exe",
        ".dll",
        ".so",
        ".onnx",
        ".pt",
        ".pth",
        ".npy",
        ".npz",
        ".lock",
        ".tmp",
        ".part",
    }
)
#: File names (or name stems before a dot, e.g. ``LICENSE.pydicom-data``) that are never scans.
SKIP_NAMES = frozenset(
    {
        "license",
        "licence",
        "copying",
        "notice",
        "readme",
        "authors",
        "changelog",
        "dicomdir",
        "thumbs.db",
        "desktop.ini",
        "manifest",
    }
)


def skip_reason(path: Path) -> str | None:
    """Why a file is obviously not a scan (hidden, text/archive extension, licence), else None.

    Deliberately narrow: a file named like an image is *not* skipped even if it is junk, so the
    batch scorer reports it as an error row instead of silently dropping it.
    """
    name = path.name
    if name.startswith(".") or name.startswith("~$"):
        return "hidden file"
    if path.suffix.lower() in SKIP_EXTENSIONS:
        return f"{path.suffix.lower()} file"
    lowered = name.lower()
    if lowered in SKIP_NAMES or lowered.split(".", 1)[0] in SKIP_NAMES:
        return "not a scan (licence/readme/index file)"
    return None
