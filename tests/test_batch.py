"""Batch scoring: CSV contract, bad inputs, cancel, resume (including after SIGKILL)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from lunglens.batch import (
    Finished,
    Progress,
    ResultsExist,
    ResumeConflict,
    Row,
    Started,
    columns,
    read_rows,
    repair_torn_tail,
    score,
)
from lunglens.inference import clear_engines
from lunglens.models import ModelInfo, get_model
from onnx_fixtures import NO_PIXEL_DICOM, make_models_dir, slow_env, write_bad_inputs, write_png

CONTRACT = [
    "path",
    "status",
    "error",
    "model",
    "model_version",
    "model_sha256",
    "prediction",
    "p_covid",
    "p_non-covid",
    "flagged",
    "threshold",
    "n_slices",
    "top_slices",
    "elapsed_ms",
    "scored_at",
    "notes",
]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_engines()
    mdir = make_models_dir(tmp_path / "models")
    monkeypatch.setenv("LUNGLENS_MODELS_DIR", str(mdir))
    monkeypatch.setenv("LUNGLENS_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture
def info(env: Path) -> ModelInfo:
    return get_model("synthetic-ct")


def _pngs(folder: Path, n: int) -> list[Path]:
    return [write_png(folder / f"sub{i % 3}" / f"img{i:03d}.png", (i % 10) / 9.0) for i in range(n)]


def _csv_records(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_csv_contract(env: Path, info: ModelInfo) -> None:
    files = _pngs(env / "imgs", 12)
    out = env / "results.csv"
    events = list(score([env / "imgs"], info, out))
    assert isinstance(events[0], Started) and events[0].total == 12
    assert isinstance(events[-1], Finished)
    assert sum(isinstance(e, Row) for e in events) == 12
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].done == progress[-1].total == 12 and progress[-1].rate > 0
    records = _csv_records(out)
    assert records[0] == CONTRACT == columns(info.labels)
    assert out.read_bytes().endswith(b"\n") and len(records) == 13
    rows = read_rows(out)
    assert {r["path"] for r in rows} == {str(f) for f in files}
    for r in rows:
        assert r["status"] == "ok" and r["error"] == ""
        assert (r["model"], r["model_version"], r["model_sha256"]) == (
            info.name,
            info.version,
            info.sha256,
        )
        p1, p2 = float(r["p_covid"]), float(r["p_non-covid"])
        assert 0 <= p1 <= 1 and abs(p1 + p2 - 1) < 1e-4
        assert r["flagged"] in ("true", "false")
        assert (r["flagged"] == "true") == (p1 >= info.threshold)
        # the triage headline, never a class name the model may rate low
        assert r["threshold"] == f"{info.threshold:.3f}"
        if r["flagged"] == "true":
            assert r["prediction"] == (
                f"Flagged for review - COVID-19 not ruled out (P {p1:.3f} >= threshold "
                f"{info.threshold:.3f})"
            )
        else:
            assert (
                r["prediction"] == f"Not flagged for COVID-19 (P {p1:.3f} < {info.threshold:.3f})"
            )
        assert int(r["n_slices"]) == 1 and r["top_slices"] == "1"  # slices count from 1
        assert float(r["elapsed_ms"]) >= 0
        assert datetime.fromisoformat(r["scored_at"]).utcoffset().total_seconds() == 0
    summary = events[-1].summary
    assert (summary.ok, summary.errors, summary.done) == (12, 0, 12)
    assert summary.flagged == sum(r["flagged"] == "true" for r in rows)
    audit = [json.loads(x) for x in (env / "data" / "audit.log").read_text().splitlines()]
    assert audit[-1]["event"] == "score" and audit[-1]["model_sha256"] == info.sha256
    assert audit[-1]["out_csv"] == str(out) and audit[-1]["ok"] == 12


def test_bad_inputs_become_error_rows(env: Path, info: ModelInfo) -> None:
    expected = write_bad_inputs(env / "bad")
    _pngs(env / "bad", 2)
    (env / "bad" / "sub0" / "notes.txt").write_text("ignored", encoding="utf-8")
    explicit = env / "sr.dcm"
    explicit.write_bytes(NO_PIXEL_DICOM.read_bytes())
    (env / "bad" / "report-sr.dcm").write_bytes(NO_PIXEL_DICOM.read_bytes())
    out = env / "bad.csv"
    events = list(score([env / "bad", explicit, env / "missing"], info, out, workers=2))
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    for name, code in expected.items():
        assert rows[name]["status"] == "error", name
        assert rows[name]["error"].startswith(f"{code}: "), rows[name]["error"]
        assert rows[name]["prediction"] == "" and rows[name]["p_covid"] == ""
    assert rows["sr.dcm"]["error"].startswith("NoPixelData: ")
    assert rows["missing"]["error"].startswith("UnreadablePath: ")
    assert sum(r["status"] == "ok" for r in rows.values()) == 2
    # a non-image DICOM object inside a folder (dose report, SR) is not a scan: no row
    assert "report-sr.dcm" not in rows
    summary = events[-1].summary  # type: ignore[attr-defined]
    assert any("report-sr.dcm" in note for note in summary.ignored)
    assert summary.errors == len(expected) + 2 and summary.ok == 2
    assert len(_csv_records(out)) == 1 + len(rows)  # every row once, no extras


def test_existing_csv_needs_resume_and_same_model(env: Path, info: ModelInfo) -> None:
    _pngs(env / "imgs", 3)
    out = env / "r.csv"
    list(score([env / "imgs"], info, out))
    with pytest.raises(ResultsExist, match="--resume"):
        list(score([env / "imgs"], info, out))
    other = get_model("synthetic-cxr")
    with pytest.raises(ResumeConflict, match="synthetic-ct"):
        list(score([env / "imgs"], other, out, resume=True))
    text = out.read_text()
    out.write_text(text.replace("p_non-covid", "p_normal", 1))
    with pytest.raises(ResumeConflict, match="columns") as other_labels:
        list(score([env / "imgs"], info, out, resume=True))
    assert "older LungLens" not in str(other_labels.value)
    # a file from before the notes column: the hint says why, not "another model"
    lines = text.splitlines(keepends=True)
    head = lines[0].replace(",notes\n", "\n")
    out.write_text(head + "".join(line.rsplit(",", 1)[0] + "\n" for line in lines[1:]))
    with pytest.raises(ResumeConflict, match="older LungLens, without the notes column"):
        list(score([env / "imgs"], info, out, resume=True))
    out.write_text(text)
    events = list(score([env / "imgs"], info, out, overwrite=True))
    assert events[-1].summary.done == 3  # type: ignore[attr-defined]


def test_torn_tail_is_repaired_on_resume(env: Path, info: ModelInfo) -> None:
    files = _pngs(env / "imgs", 6)
    out = env / "r.csv"
    list(score([env / "imgs"], info, out))
    lines = out.read_text().splitlines(keepends=True)
    # Simulate a kill mid-write: the last two rows are lost, the third-last is half written.
    out.write_text("".join(lines[:-3]) + lines[-3][:25])
    assert repair_torn_tail(out) == 25
    out.write_text("".join(lines[:-3]) + lines[-3][:25])
    events = list(score([env / "imgs"], info, out, resume=True))
    assert isinstance(events[0], Started) and events[0].skipped == 3 and events[0].total == 3
    keys = [r[0] for r in _csv_records(out)[1:]]
    assert sorted(keys) == sorted(str(f) for f in files) and len(keys) == len(set(keys))


def test_cancel_keeps_written_rows_valid(env: Path, info: ModelInfo) -> None:
    files = _pngs(env / "imgs", 40)
    out = env / "r.csv"
    cancel = threading.Event()
    events = []
    for ev in score([env / "imgs"], info, out, cancel=cancel, batch_size=4):
        events.append(ev)
        if isinstance(ev, Row) and sum(isinstance(e, Row) for e in events) == 5:
            cancel.set()
    summary = events[-1].summary  # type: ignore[attr-defined]
    assert summary.cancelled and 5 <= summary.done < 40
    rows = read_rows(out)
    assert len(rows) == summary.done == len(_csv_records(out)) - 1
    events = list(score([env / "imgs"], info, out, resume=True))
    assert events[0].skipped == summary.done  # type: ignore[attr-defined]
    keys = [r["path"] for r in read_rows(out)]
    assert sorted(keys) == sorted(str(f) for f in files)


def _ct_series(folder: Path, n: int = 4) -> Path:
    """``n`` copies of a real CT slice as one series, 5 mm apart (files ``s0.dcm`` ...)."""
    pydicom = pytest.importorskip("pydicom")
    ct = SHARED_DATA / "dicom" / "ct-misc" / "693_UNCI.dcm"
    if not ct.exists():
        pytest.skip("shared DICOM data not available")
    folder.mkdir()
    uid = pydicom.uid.generate_uid()
    for i in range(n):
        ds = pydicom.dcmread(ct)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i * 5)]
        ds.save_as(folder / f"s{i}.dcm")
    return folder


def test_series_rows_name_slices(env: Path, info: ModelInfo) -> None:
    series = _ct_series(env / "series")
    out = env / "r.csv"
    list(score([series], info, out))
    rows = read_rows(out)
    assert len(rows) == 1, rows
    assert rows[0]["status"] == "ok", rows[0]["error"]
    assert rows[0]["n_slices"] == "4" and len(rows[0]["top_slices"].split(";")) == 3
    # slice numbers count from 1 (as the app and the PDF show them): 1..4, never 0
    assert sorted(int(n) for n in rows[0]["top_slices"].split(";"))[0] >= 1
    assert {int(n) for n in rows[0]["top_slices"].split(";")} <= {1, 2, 3, 4}


def test_series_row_notes_a_slice_it_could_not_read(env: Path, info: ModelInfo) -> None:
    """A series scored without an unreadable slice says so in its row, as ``classify`` does:
    the reader must know the score came from fewer slices than the folder holds."""
    series = _ct_series(env / "series")
    torn = series / "s2.dcm"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    out = env / "r.csv"
    list(score([series], info, out))
    (row,) = read_rows(out)
    assert row["status"] == "ok" and row["n_slices"] == "3"
    notes = row["notes"].split(" | ")
    assert any(n.startswith("skipped slice: ") and "s2.dcm" in n for n in notes), notes


def test_series_is_judged_by_its_calibrated_threshold(env: Path) -> None:
    """A manifest's series threshold (calibrated on patients) judges series rows; single
    images keep the slice threshold; the CSV says which one each row was judged by."""
    pydicom = pytest.importorskip("pydicom")
    from onnx_fixtures import write_model

    series_agg = {"method": "top_k_mean", "k": 3, "threshold": 0.9}
    write_model(env / "models" / "series-ct", name="series-ct", series_aggregation=series_agg)
    info = get_model("series-ct", env / "models")
    assert info.series_threshold == 0.9 and info.threshold == 0.5
    folder = env / "scans"
    (folder / "series").mkdir(parents=True)
    uid = pydicom.uid.generate_uid()
    for i in range(3):
        ds = pydicom.dcmread(SHARED_DATA / "dicom" / "ct-misc" / "693_UNCI.dcm")
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, pydicom.uid.generate_uid()
        ds.InstanceNumber, ds.ImagePositionPatient = i + 1, [0.0, 0.0, float(i * 5)]
        ds.save_as(folder / "series" / f"s{i}.dcm")
    write_png(folder / "one.png", 0.2)
    out = env / "r.csv"
    list(score([folder], info, out))
    rows = {r["n_slices"]: r for r in read_rows(out)}
    assert rows["3"]["threshold"] == "0.900" and rows["1"]["threshold"] == "0.500"
    for r in rows.values():
        p, thr = float(r["p_covid"]), float(r["threshold"])
        assert r["flagged"] == ("true" if p >= thr else "false")


def _mixed_folder(root: Path) -> Path:
    """A real DICOM chest CT, a real DICOM chest X-ray (DX) and two plain images."""
    import shutil

    folder = root / "mixed"
    folder.mkdir()
    shutil.copy(SHARED_DATA / "dicom" / "chest-ct-transfer-syntaxes" / "CTImage.dcm", folder)
    shutil.copy(SHARED_DATA / "dicom" / "chest-cr" / "RG1_J2KI.dcm", folder)
    write_png(folder / "bright.png", 1.0)
    write_png(folder / "dark.png", 0.0)
    return folder


def test_auto_mode_routes_each_scan_to_its_modality_model(env: Path) -> None:
    """``info=None``: one results file, each row scored by its modality's default model with
    that model's name, version, hash and threshold; plain images need the modality check."""
    if not (SHARED_DATA / "dicom" / "chest-cr" / "RG1_J2KI.dcm").exists():
        pytest.skip("shared DICOM data not available")
    from onnx_fixtures import write_model

    # an X-ray model with other class names, as the shipped 3-class one
    write_model(
        env / "models" / "synthetic-cxr",
        name="synthetic-cxr",
        modality="cxr",
        labels=["covid", "normal"],
    )
    folder = _mixed_folder(env)
    ct, cxr = get_model("synthetic-ct"), get_model("synthetic-cxr")
    out = env / "auto.csv"
    events = list(score([folder], None, out))
    records = _csv_records(out)
    assert records[0] == columns(["covid", "non-covid", "normal"])  # union of the labels
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    for name, m in (("CTImage.dcm", ct), ("RG1_J2KI.dcm", cxr)):
        r = rows[name]
        assert r["status"] == "ok", r["error"]
        assert (r["model"], r["model_version"], r["model_sha256"]) == (m.name, m.version, m.sha256)
        assert r["threshold"] == f"{m.threshold:.3f}"
    assert rows["RG1_J2KI.dcm"]["p_non-covid"] == ""  # the X-ray model has no such class
    assert rows["CTImage.dcm"]["p_normal"] == "" and rows["RG1_J2KI.dcm"]["p_normal"] != ""
    # without a modality check a plain image cannot be routed: a typed error row, no score
    for name in ("bright.png", "dark.png"):
        assert rows[name]["status"] == "error" and rows[name]["p_covid"] == ""
        assert (
            rows[name]["error"].startswith("ModelNotFound: ") and "modality" in rows[name]["error"]
        )
    summary = events[-1].summary  # type: ignore[attr-defined]
    assert summary.model == "auto" and len(summary.models) == 2
    audit = json.loads((env / "data" / "audit.log").read_text().splitlines()[-1])
    assert {m["name"] for m in audit["models"]} == {"synthetic-ct", "synthetic-cxr"}


def test_auto_mode_routes_plain_images_by_the_modality_check_and_resumes(env: Path) -> None:
    if not (SHARED_DATA / "dicom" / "chest-cr" / "RG1_J2KI.dcm").exists():
        pytest.skip("shared DICOM data not available")
    from onnx_fixtures import write_modality_check

    write_modality_check(env / "models" / "synthetic-modality")
    folder = _mixed_folder(env)
    out = env / "auto.csv"
    cancel = threading.Event()
    first = []
    for ev in score([folder], None, out, cancel=cancel, batch_size=1, workers=1):
        first.append(ev)
        if isinstance(ev, Row):
            cancel.set()  # stop after the first row(s)
    done = first[-1].summary.done  # type: ignore[attr-defined]
    assert first[-1].summary.cancelled and 1 <= done < 4  # type: ignore[attr-defined]
    events = list(score([folder], None, out, resume=True))
    assert events[0].skipped == done  # type: ignore[attr-defined]
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    assert len(rows) == 4 == len(_csv_records(out)) - 1
    # bright "looks like" an X-ray to the synthetic check, dark like a CT slice
    assert rows["bright.png"]["model"] == "synthetic-cxr"
    assert rows["dark.png"]["model"] == "synthetic-ct"
    assert all(r["status"] == "ok" for r in rows.values()), rows
    # a chosen model cannot resume an automatic file that holds another model's rows
    with pytest.raises(ResumeConflict, match="synthetic-cxr"):
        list(score([folder], get_model("synthetic-ct"), out, resume=True))


def _score_cmd(folder: Path, out: Path) -> list[str]:
    """``lunglens score`` in a child process (the kill tests signal it)."""
    return [
        sys.executable,
        "-m",
        "lunglens",
        "score",
        str(folder),
        "--out",
        str(out),
        "--model",
        "synthetic-ct",
        "--no-report",
    ]


def _wait_for_lines(out: Path, n: int, timeout: float = 60) -> None:
    """Poll until the results file holds ``n`` lines (header included) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_resume_after_sigkill(env: Path, info: ModelInfo) -> None:
    files = _pngs(env / "imgs", 60)
    out = env / "results.csv"
    cmd = _score_cmd(env / "imgs", out)
    proc = subprocess.Popen(
        cmd, env=slow_env(env, 0.05), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _wait_for_lines(out, 18)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before = out.read_bytes().count(b"\n") - 1
    assert 17 <= done_before < 60, "the run finished before it could be killed"
    # Also simulate the worst case, a kill in the middle of a row.
    with open(out, "ab") as fh:
        fh.write(str(files[0]).encode()[:10])
    rerun = subprocess.run(
        [*cmd, "--resume"], env=dict(os.environ), capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    records = _csv_records(out)
    assert records[0] == CONTRACT
    keys = [r[0] for r in records[1:]]
    assert sorted(keys) == sorted(str(f) for f in files)  # every file exactly once
    assert all(len(r) == len(CONTRACT) for r in records)
    assert out.read_bytes().endswith(b"\n")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"]
)
def test_ctrl_c_or_sigterm_stops_cleanly_and_resumes(env: Path, signum: int, code: int) -> None:
    """A stop (Ctrl-C, or SIGTERM from a service manager or a shutdown) writes the rows in
    hand, releases the lock and exits 130 (Ctrl-C) or 143 (SIGTERM, as the shell counts it);
    ``--resume`` finishes the run."""
    files = _pngs(env / "imgs", 40)
    out = env / "results.csv"
    cmd = _score_cmd(env / "imgs", out)
    proc = subprocess.Popen(
        cmd, env=slow_env(env, 0.05), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_lines(out, 3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "--resume" in err
    records = _csv_records(out)
    assert all(len(r) == len(CONTRACT) for r in records) and len(records) < 41
    assert not out.with_name(out.name + ".lock").exists()  # released, not left stale
    rerun = subprocess.run(
        [*cmd, "--resume"], env=dict(os.environ), capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(r[0] for r in _csv_records(out)[1:]) == sorted(str(f) for f in files)


def test_error_code_is_the_text_before_the_first_colon() -> None:
    """Counts per code (run summary, HTML report) survive messages that hold colons (paths)."""
    from lunglens.batch import error_text
    from lunglens.batch.results_csv import error_code
    from lunglens.errors import CorruptFile

    text = error_text(CorruptFile("C:/scans/a.dcm", "truncated: 12 bytes", "Re-export it."))
    assert text.startswith("CorruptFile: ") and error_code(text) == "CorruptFile"
    assert error_code(error_text(ValueError("x: y"))) == "ValueError"


def test_runs_that_do_not_finish_are_audited_by_the_runner(env: Path, info: ModelInfo) -> None:
    """The app's batch dock calls the runner directly: a run refused by an error, or stopped
    by its caller after a few rows, leaves one audit line with its outcome and counts, not
    only runs that finish."""
    _pngs(env / "imgs", 6)
    out = env / "r.csv"
    list(score([env / "imgs"], info, out))
    with pytest.raises(ResultsExist):
        list(score([env / "imgs"], info, out))
    events = score([env / "imgs"], info, out, overwrite=True, batch_size=2)
    assert isinstance(next(events), Started)
    while not isinstance(next(events), Row):
        pass
    events.close()  # the caller stops reading (an exception in its loop does the same)
    lines = [json.loads(x) for x in (env / "data" / "audit.log").read_text().splitlines()]
    finished, refused, abandoned = lines[-3:]
    assert "outcome" not in finished and finished["ok"] == 6
    assert refused["outcome"] == "error" and refused["error"] == "ResultsExist"
    assert refused["out_csv"] == str(out) and refused["model"] == info.name
    assert abandoned["outcome"] == "abandoned" and abandoned["done"] == 1
    assert abandoned["total"] == 6 and abandoned["model_sha256"] == info.sha256
