"""Hostile file names, files and models, and resource limits (issue 14).

The corpus test builds, in a temporary folder, files whose names break naive CSV/audit code
(bytes that are not UTF-8, newlines, spreadsheet formulas, quotes) and files that must be
refused (1x1, empty, truncated, a 2.5-gigapixel header, an unreadable folder), scores it twice
and checks that every file has exactly one row with the right status.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lunglens.batch import read_rows, score
from lunglens.batch import results_csv as rcsv
from lunglens.batch.lock import ResultsLock, lock_path
from lunglens.cli import main
from lunglens.errors import ImageTooLarge, ImageTooSmall, ModelRefused, UnreadablePath
from lunglens.inference import clear_engines, get_engine
from lunglens.io import DEFAULT_MAX_PIXELS, load_scan
from lunglens.io.raster import MAX_DECODED_SIDE
from lunglens.io.sniff import MIN_SCAN_SIDE
from lunglens.models import get_model, load_manifest
from onnx_fixtures import make_models_dir, rewrite_manifest, write_model, write_png

SAMPLE_CT_DICOM = Path(__file__).resolve().parents[1] / "resources/samples/ct-dicom-chest-j2k.dcm"

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_engines()
    monkeypatch.setenv("LUNGLENS_MODELS_DIR", str(make_models_dir(tmp_path / "models")))
    monkeypatch.setenv("LUNGLENS_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (100 bytes; nothing is allocated)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def _fs(name: bytes) -> str:
    """A file name given as bytes, as Python sees it (``surrogateescape`` for non-UTF-8)."""
    return os.fsdecode(name)


# ----------------------------------------------------------------------------- messages


def test_error_messages_keep_dot_dot_in_paths() -> None:
    err = UnreadablePath("../bad/zero.jpg", "the file is empty", "Copy it again.")
    assert str(err) == "../bad/zero.jpg: the file is empty. Copy it again."
    assert str(UnreadablePath("x.png", "ends with a stop.")) == "x.png: ends with a stop."


# ----------------------------------------------------------------------------- CSV cells


@pytest.mark.parametrize(
    ("raw", "written"),
    [
        ('=HYPERLINK("http://evil","x")', '\'=HYPERLINK("http://evil","x")'),
        ("+1", "'+1"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("'=x", "''=x"),  # an already-quoted name stays distinct from "=x"
        ("'plain", "'plain"),
        ("''x", "'" + "''x"),
        ("'", "'"),
        ("", ""),
        ("/scans/a.png", "/scans/a.png"),
        ("0.25", "0.25"),
    ],
)
def test_formula_escaping_is_owasp_and_reversible(raw: str, written: str) -> None:
    assert rcsv.escape_cell(raw) == written
    assert rcsv.unescape_cell(written) == raw


def test_torn_row_inside_a_quoted_newline_is_cut(tmp_path: Path) -> None:
    """A SIGKILL just after the newline of a name like ``a\\nb.png`` leaves a file that ends
    in ``\\n`` but mid-row; repair keeps only complete rows."""
    path = tmp_path / "r.csv"
    path.write_bytes(b'path,status\n"x\ny.png",ok\n"a\nb')
    assert rcsv.repair_torn_tail(path) == len(b'"a\nb')
    assert path.read_bytes() == b'path,status\n"x\ny.png",ok\n'
    assert rcsv.repair_torn_tail(path) == 0


# ----------------------------------------------------------------------------- corpus

GOOD_NAMES = [
    b"a_\xe9.png",  # Latin-1 byte: not UTF-8
    b"new\nline.png",
    b"cr\rname.png",
    b"=HYPERLINK(1,2).png",
    b"+plus.png",
    b"-minus.png",
    b"@at.png",
    b"\ttab.png",
    b"'quote.png",
    b'"double" quoted.png',
    b"comma, name.png",
    b"dots..name...png",
    "accent-é.png".encode(),
]


def _corpus(root: Path) -> tuple[set[str], dict[str, str]]:
    """Write the hostile corpus; return (good keys, {bad key: expected error code}), keys as
    scoring ``.`` inside ``root`` names them (relative, so a name is the start of its cell)."""
    import pydicom

    good = set()
    for name in GOOD_NAMES:
        write_png(root / _fs(name), 0.8, size=48)
        good.add(_fs(name))
    ds = pydicom.dcmread(SAMPLE_CT_DICOM)
    ds.PatientID = '=HYPERLINK("http://x","click")'
    ds.save_as(root / "pid.dcm")
    good.add("pid.dcm")
    Image.new("L", (1, 1), 200).save(root / "tiny-1x1.png")
    (root / "zero.png").write_bytes(b"")
    _png_header_only(root / "bomb.png", 50_000, 50_000)
    (root / "text.png").write_text("not an image\n")
    write_png(root / "locked" / "inside.png", 0.5)
    bad = {
        "tiny-1x1.png": "ImageTooSmall",
        "zero.png": "CorruptFile",
        "bomb.png": "ImageTooLarge",
        "text.png": "CorruptFile",
        "locked": "UnreadablePath",
    }
    return good, bad


def _deny(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``folder`` unlistable (chmod does not stop root, who runs CI containers)."""
    real = os.scandir

    def scandir(path: object = ".") -> object:
        if os.path.abspath(os.fspath(path)) == str(folder):  # type: ignore[call-overload]
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))  # type: ignore[call-overload]
        return real(path)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names (bytes, newlines)")
def test_hostile_corpus_scores_to_the_end_twice(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = env / "corpus"
    root.mkdir()
    good, bad = _corpus(root)
    _deny(monkeypatch, root / "locked")
    monkeypatch.chdir(root)
    out = env / "results.csv"
    cmd = ["score", ".", "--out", str(out), "--model", "synthetic-ct", "--include-ids"]
    assert main(cmd) == 1  # errors -> exit 1, never a crash
    first = read_rows(out)
    by_path = {r["path"]: r for r in first}
    assert len(first) == len(by_path) == len(good) + len(bad)
    assert set(by_path) == good | set(bad)  # names round-trip exactly (bytes, newlines, =)
    for key in good:
        assert by_path[key]["status"] == "ok", by_path[key]["error"]
    for key, code in bad.items():
        row = by_path[key]
        assert row["status"] == "error" and row["error"].startswith(code + ":"), row
    assert "1x1 pixels" in by_path["tiny-1x1.png"]["error"]
    assert "2,500,000,000 pixels" in by_path["bomb.png"]["error"]
    assert "cannot list this folder" in by_path["locked"]["error"]
    assert by_path["pid.dcm"]["patient_id"] == '=HYPERLINK("http://x","click")'
    raw = out.read_bytes()
    assert b"\na_\xe9.png," in raw  # the file's own bytes, at the start of its row
    assert b'\n"new\nline.png",' in raw  # a real newline, quoted (RFC 4180)
    assert b'\n"cr\rname.png",' in raw
    for cell in (b"'=HYPERLINK(1,2).png", b"'+plus.png", b"'-minus.png", b"'@at.png"):
        assert b"\n" + cell in raw or b'\n"' + cell in raw, cell  # OWASP: leading quote
    assert b'\'=HYPERLINK(""http://x""' in raw  # the DICOM PatientID escaped too
    assert "Traceback" not in capsys.readouterr().err
    audit = (env / "data" / "audit.log").read_text(encoding="utf-8").splitlines()
    assert json.loads(audit[-1])["event"] == "score"
    assert (env / "results.html").is_file()

    assert main([*cmd, "--resume"]) == 0  # nothing left to do: no row added, no crash
    assert read_rows(out) == first
    assert capsys.readouterr().out.startswith("0 processed: 0 scored")


def test_classify_non_utf8_name_exits_0(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(_fs(os.fsencode(env) + b"/a_\xe9.png"))
    write_png(path, 0.9)
    assert main(["classify", str(path), "--model", "synthetic-ct"]) == 0
    out = capsys.readouterr().out
    assert "a_\\udce9.png" in out or "a_\udce9.png" in out
    line = (env / "data" / "audit.log").read_text(encoding="utf-8").splitlines()[-1]
    assert json.loads(line)["input"] == str(path)  # same string back from the JSON


# ----------------------------------------------------------------------------- sizes


def test_too_small_images_are_refused_with_their_size(tmp_path: Path) -> None:
    path = tmp_path / "pixel.png"
    Image.new("RGB", (1, 1)).save(path)
    with pytest.raises(ImageTooSmall, match=rf"1x1 pixels; a scan has at least {MIN_SCAN_SIDE}"):
        load_scan(path)
    ok = tmp_path / "smallest.png"
    Image.new("L", (MIN_SCAN_SIDE, 61)).save(ok)
    assert load_scan(ok).image.shape == (1, 61, MIN_SCAN_SIDE)


def test_one_pixel_limit_with_true_counts(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    assert PILImage.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS
    # 190 M pixels: above Pillow's default bomb error (179 M), below nothing else: our limit
    # (200 M) lets the header through, so the decode fails as a truncated file, not as a bomb.
    with pytest.raises(Exception) as info:
        load_scan(_png_header_only(tmp_path / "190m.png", 19_000, 10_000))
    assert not isinstance(info.value, ImageTooLarge), info.value
    with pytest.raises(ImageTooLarge) as big:
        load_scan(_png_header_only(tmp_path / "2g5.png", 50_000, 50_000))
    msg = str(big.value)
    assert "2,500,000,000 pixels" in msg and "200,000,000" in msg
    assert "--max-pixels" not in msg and "max_pixels" not in msg


@pytest.mark.parametrize(("fmt", "name"), [("PNG", "wide.png"), ("JPEG", "wide.jpg")])
def test_large_images_are_decoded_reduced(tmp_path: Path, fmt: str, name: str) -> None:
    width = 2 * MAX_DECODED_SIDE + 200
    rgb = np.zeros((64, width, 3), np.uint8)
    rgb[:, : width // 2] = (200, 100, 50)
    path = tmp_path / name
    Image.fromarray(rgb).save(path, fmt)
    scan = load_scan(path)
    assert MAX_DECODED_SIDE // 2 <= max(scan.image.shape[1:]) <= MAX_DECODED_SIDE
    assert any("reduced while decoding" in n for n in scan.notes)
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    assert scan.image[0, 10, 10] == pytest.approx(luma, abs=0.02)


# ----------------------------------------------------------------------------- models


def test_manifest_file_is_confined_to_its_folder(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "models" / "m")
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(folder / "model.onnx", outside)
    manifest = json.loads((folder / "manifest.json").read_text())
    for target in ("../../elsewhere.onnx", str(outside), "/etc/hostname"):
        data = Path(target if target.startswith("/") else outside).read_bytes()
        manifest.update(file=target, sha256=hashlib.sha256(data).hexdigest())
        rewrite_manifest(folder, manifest)
        with pytest.raises(ModelRefused, match="outside the model folder"):
            load_manifest(folder)
    (folder / "link.onnx").symlink_to(outside)
    manifest.update(file="link.onnx")
    rewrite_manifest(folder, manifest)
    with pytest.raises(ModelRefused, match="outside the model folder"):
        load_manifest(folder)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"input": {"size": [64, 64], "shape": [1, 64, 64]}}, "input 'image' has shape"),
        ({"labels": ["covid", "normal", "pneumonia"]}, "'probs' has shape"),
        (
            {"outputs": {"gallery": [{"output": "act_9", "layer": "x", "shape": [1]}]}},
            "gallery outputs",
        ),
    ],
)
def test_graph_must_match_its_manifest(tmp_path: Path, change: dict, expected: str) -> None:
    clear_engines()
    folder = write_model(tmp_path / "m", **change)
    with pytest.raises(ModelRefused, match=expected):
        get_engine(load_manifest(folder))


# ----------------------------------------------------------------------------- resources


def test_second_run_on_a_locked_results_file_exits_2(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = env / "in"
    for i in range(3):
        write_png(folder / f"{i}.png", 0.7)
    out = env / "results.csv"
    with ResultsLock(out):
        assert main(["score", str(folder), "--out", str(out), "--model", "synthetic-ct"]) == 2
        err = capsys.readouterr().err
        assert f"process {os.getpid()}" in err and "another LungLens run" in err
        assert not out.exists()
    assert not lock_path(out).exists()  # released and removed
    assert main(["score", str(folder), "--out", str(out), "--model", "synthetic-ct"]) == 0
    assert len(read_rows(out)) == 3 and not lock_path(out).exists()


def test_disk_full_says_where_and_resume_continues(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = env / "in"
    for i in range(6):
        write_png(folder / f"{i}.png", 0.7)
    out = env / "results.csv"
    real = rcsv._append
    calls = {"n": 0}

    def full_after_3(fh: object, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fh, data)  # type: ignore[arg-type]

    monkeypatch.setattr(rcsv, "_append", full_after_3)
    cmd = ["score", str(folder), "--out", str(out), "--model", "synthetic-ct", "--no-report"]
    assert main(cmd) == 1
    err = capsys.readouterr().err
    assert "OutputError" in err and "disk is full" in err and str(out) in err
    assert "--resume" in err and "unexpected" not in err
    assert len(read_rows(out)) == 3
    monkeypatch.setattr(rcsv, "_append", real)  # space freed
    assert main([*cmd, "--resume"]) == 0
    rows = read_rows(out)
    assert len(rows) == len({r["path"] for r in rows}) == 6


def test_selftest_reports_telemetry_off(capsys: pytest.CaptureFixture[str]) -> None:
    from lunglens import selftest

    selftest.run(gui=False)
    out = capsys.readouterr().out
    assert "ok    onnxruntime telemetry" in out and "ORT_DISABLE_TELEMETRY=1" in out


def test_lock_is_released_when_the_run_is_refused(env: Path) -> None:
    """A run refused after taking the lock (results exist, no --resume) leaves it free."""
    info = get_model("synthetic-ct")
    out = env / "r.csv"
    png = write_png(env / "a.png", 0.5)
    list(score([png], info, out))
    with pytest.raises(rcsv.ResultsExist):
        list(score([png], info, out))
    assert not lock_path(out).exists()
    list(score([png], info, out, overwrite=True))  # not blocked by a stale lock
    assert len(read_rows(out)) == 1
