"""Bad input: every case gives a typed error naming the file and the reason, never a traceback."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from lunglens.errors import (
    CorruptFile,
    ImageTooLarge,
    NoPixelData,
    ScanError,
    UnreadablePath,
    UnsupportedFile,
    UnsupportedTransferSyntax,
)
from lunglens.io import load_scan

DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
CT = DICOM / "chest-ct-transfer-syntaxes"
CT_EXPLICIT = CT / "CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm"
CT_J2K = CT / "CTImage.dcm_JPEG2000LosslessOnlyTransferSyntax_1.2.840.10008.1.2.4.90.dcm"
needs_data = pytest.mark.skipif(not DICOM.is_dir(), reason="shared DICOM data not available")


def _png_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, size[::-1], np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (256, 256), np.uint8)).save(
        buf, "JPEG"
    )
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but holds no image data: a bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    )


def _retagged(tmp: Path, name: str, src: Path = CT_EXPLICIT, **attrs: object) -> Path:
    ds = pydicom.dcmread(src)
    for key, value in attrs.items():
        if key == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        else:
            setattr(ds, key, value)
    out = tmp / name
    ds.save_as(out, enforce_file_format=True)
    return out


def _cut_file(path: Path, n: int) -> Path:
    """``path`` cut to its first ``n`` bytes, in place."""
    path.write_bytes(path.read_bytes()[:n])
    return path


def _write(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        p = tmp / name
        p.write_bytes(data() if callable(data) else data)
        return p

    return make


def _cut(src: Path, name: str, frac: float | int) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        raw = src.read_bytes()
        n = int(len(raw) * frac) if isinstance(frac, float) else frac
        (tmp / name).write_bytes(raw[:n])
        return tmp / name

    return make


RANDOM = np.random.default_rng(42).integers(0, 256, 4096, dtype=np.uint8).tobytes()

# (id, factory(tmp_path) -> path, expected error type, keyword in the message, needs shared data)
CASES = [
    ("zero-byte png", _write("empty.png", b""), CorruptFile, "empty", False),
    ("zero-byte dcm", _write("empty.dcm", b""), CorruptFile, "empty", False),
    (
        "truncated png",
        _write("cut.png", lambda: _png_bytes()[:200]),
        CorruptFile,
        "truncated",
        False,
    ),
    (
        "truncated jpeg",
        _write("cut.jpg", lambda: _jpeg_bytes()[:1500]),
        CorruptFile,
        "truncated",
        False,
    ),
    ("random bytes .png", _write("noise.png", RANDOM), CorruptFile, "content", False),
    ("random bytes .dcm", _write("noise.dcm", RANDOM), CorruptFile, "content", False),
    ("random bytes no ext", _write("noise.bin", RANDOM), UnsupportedFile, "not an image", False),
    ("text file", _write("notes.txt", b"hello\n" * 50), UnsupportedFile, "not an image", False),
    (
        "png bomb header",
        _write("bomb.png", _png_header_only(60000, 60000)),
        ImageTooLarge,
        "pixels",
        False,
    ),
    ("truncated dicom pixels", _cut(CT_EXPLICIT, "cut.dcm", 0.5), CorruptFile, "truncated", True),
    (
        "truncated dicom header",
        _cut(CT_EXPLICIT, "cuthdr.dcm", 1500),
        CorruptFile,
        "truncated",
        True,
    ),
    ("truncated j2k dicom", _cut(CT_J2K, "cutj2k.dcm", 0.6), CorruptFile, "truncated", True),
    (
        # a chest DX ("Digital X-Ray Image Storage - For Presentation") cut before Rows
        "dx dicom cut before its image attributes",
        lambda tmp: _cut_file(
            _retagged(tmp, "dx.dcm", CT_EXPLICIT, SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1"),
            3000,
        ),
        CorruptFile,
        "always holds pixel data",
        True,
    ),
    (
        # cut before Rows: a CT Image Storage object without pixels is cut short, not a report
        "dicom cut before its image attributes",
        _cut(CT_EXPLICIT, "cut3k.dcm", 3000),
        CorruptFile,
        "always holds pixel data",
        True,
    ),
    (
        "no pixel data",
        lambda tmp: DICOM / "ct-misc" / "no-pixel-data.dcm",
        NoPixelData,
        "pixel data",
        True,
    ),
    (
        "made-up transfer syntax",
        lambda tmp: _retagged(tmp, "madeup.dcm", TransferSyntaxUID="1.2.826.0.1.3680043.9.9999.1"),
        UnsupportedTransferSyntax,
        "transfer syntax",
        True,
    ),
    (
        "mpeg2",
        lambda tmp: _retagged(
            tmp, "mpeg2.dcm", CT_J2K, TransferSyntaxUID="1.2.840.10008.1.2.4.100"
        ),
        UnsupportedTransferSyntax,
        "mpeg2",
        True,
    ),
    (
        "dicom bomb header",
        lambda tmp: _retagged(tmp, "bomb.dcm", Rows=65535, Columns=65535, NumberOfFrames=100),
        ImageTooLarge,
        "pixels",
        True,
    ),
    ("missing file", lambda tmp: tmp / "nope.dcm", UnreadablePath, "no such", False),
    (
        "empty folder",
        lambda tmp: (tmp / "emptydir").mkdir() or tmp / "emptydir",
        UnreadablePath,
        "empty",
        False,
    ),
    (
        "folder without dicom",
        lambda tmp: (
            (tmp / "txtdir").mkdir()
            or ((tmp / "txtdir" / "a.txt").write_text("x") and tmp / "txtdir")
        ),
        UnsupportedFile,
        "no dicom",
        False,
    ),
]


@pytest.mark.parametrize(
    ("make", "etype", "keyword", "data"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_gives_typed_error(tmp_path: Path, make, etype, keyword: str, data: bool) -> None:
    if data and not DICOM.is_dir():
        pytest.skip("shared DICOM data not available")
    path = make(tmp_path)
    with pytest.raises(ScanError) as info:
        load_scan(path)
    err = info.value
    assert type(err) is etype, f"{type(err).__name__}: {err}"
    assert path.name in str(err)
    assert keyword in str(err).lower(), str(err)
    assert err.code == etype.__name__


def test_raster_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png_bytes((1200, 1000)))
    with pytest.raises(ImageTooLarge, match="1,200,000 pixels"):
        load_scan(path, max_pixels=1_000_000)
    assert load_scan(path, max_pixels=1_200_000).image.shape == (1, 1000, 1200)


@needs_data
def test_dicom_limit_counts_frames(tmp_path: Path) -> None:
    path = DICOM / "ct-misc" / "eCT_Supplemental.dcm"
    with pytest.raises(ImageTooLarge, match="524,288"):  # 512 x 512 x 2 frames
        load_scan(path, max_pixels=512 * 512 + 1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(_png_bytes())
    path.chmod(0)
    with pytest.raises(UnreadablePath, match="permission"):
        load_scan(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedFile, match="regular file"):
        load_scan(fifo)


@needs_data
def test_a_folder_reports_an_image_file_cut_before_its_image_as_an_error(tmp_path: Path) -> None:
    """In a folder (batch discovery reads headers only), a CT Image Storage file cut before
    its image attributes is an error row, not "ignored: DICOM object without an image"; a
    report without an image (Basic Text SR) is still only ignored."""
    from lunglens.io import discover_sources

    folder = tmp_path / "in"
    folder.mkdir()
    _cut(CT_EXPLICIT, "cut3k.dcm", 3000)(folder)
    (folder / "report.dcm").write_bytes((DICOM / "ct-misc" / "no-pixel-data.dcm").read_bytes())
    ignored: list[str] = []
    sources, errors = discover_sources(folder, ignored=ignored)
    assert not sources
    assert [(Path(p).name, type(e)) for p, e in errors] == [("cut3k.dcm", CorruptFile)]
    assert "always holds pixel data" in str(errors[0][1]).lower()
    assert len(ignored) == 1 and "report.dcm" in ignored[0]
