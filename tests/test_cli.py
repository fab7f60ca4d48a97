"""Command line: exit codes, outputs and the audit log (in-process via ``main(argv)``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from lunglens import DISCLAIMER
from lunglens.cli import main
from lunglens.inference import clear_engines
from onnx_fixtures import blob_image, make_models_dir, write_modality_check, write_png


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_engines()
    monkeypatch.setenv("LUNGLENS_MODELS_DIR", str(make_models_dir(tmp_path / "models")))
    monkeypatch.setenv("LUNGLENS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    return tmp_path


def _audit(env: Path) -> list[dict]:
    return [json.loads(x) for x in (env / "data" / "audit.log").read_text().splitlines()]


def test_classify_text_cam_and_audit(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    img = env / "blob.png"
    Image.fromarray((blob_image() * 255).astype("uint8")).save(img)
    cam = env / "cam.png"
    assert main(["classify", str(img), "--cam", str(cam)]) == 0
    out, err = capsys.readouterr()
    assert "result:      Flagged for review - COVID-19 not ruled out (P " in out or (
        "result:      Not flagged for COVID-19 (P " in out
    )
    assert "prediction" not in out and DISCLAIMER in out
    assert "threshold:   0.500 on P(covid)" in out  # one precision for thresholds
    assert "no modality" in err and "synthetic-ct" in err  # plain image -> CT model, warned
    with Image.open(cam) as im:  # the 64 px image over its caption, which says whose map
        assert im.size[0] == 64 and im.size[1] > 64 and im.mode == "RGB"
        assert "where the model looked, not a lesion outline" in im.text["Description"]
        assert im.text["Model"].startswith("synthetic-ct ")
    line = _audit(env)[-1]
    assert line["event"] == "classify" and line["input"] == str(img)
    assert line["model"] == "synthetic-ct" and len(line["model_sha256"]) == 64
    assert line["outputs"] == [str(cam)]


def test_classify_json_and_model_choice(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = write_png(env / "bright.png", 0.95)
    assert (
        main(
            [
                "classify",
                str(img),
                "--model",
                "synthetic-cxr",
                "--json",
                "--cam-class",
                "non-covid",
                "--pdf",
                str(env / "r.pdf"),
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "synthetic-cxr" and data["flagged"] is True
    assert data["prediction"] == "covid" and data["cam_class"] == "non-covid"
    assert data["disclaimer"] == DISCLAIMER and "patient_id" not in data
    assert (env / "r.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["classify", "{bad}"], 3, "CorruptFile"),
        (["classify", "{missing}"], 3, "UnreadablePath"),
        (["classify", "{img}", "--model", "nope"], 4, "ModelNotFound"),
        (["classify", "{img}", "--cam-class", "flu"], 2, "--cam-class"),
        (["classify"], 2, "usage"),
        (["frobnicate"], 2, "invalid choice"),
        (["score", "{img}", "--out", "{out}", "--workers", "0"], 2, "--workers"),
    ],
)
def test_exit_codes(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    (env / "bad.png").write_text("not a png")
    paths = {
        "bad": env / "bad.png",
        "missing": env / "nope.png",
        "img": write_png(env / "ok.png", 0.5),
        "out": env / "o.csv",
    }
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_tampered_model_exits_4(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = Path(str(env / "models" / "synthetic-ct" / "model.onnx"))
    data = bytearray(onnx_path.read_bytes())
    data[100] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    img = write_png(env / "ok.png", 0.5)
    assert main(["classify", str(img)]) == 4
    assert "integrity check" in capsys.readouterr().err
    assert main(["models", "--verify"]) == 4
    out = capsys.readouterr().out
    assert "REFUSED" in out and "synthetic-cxr 0.0.1" in out
    assert main(["models"]) == 0  # listing alone does not hash
    assert main(["score", str(img), "--out", str(env / "r.csv")]) == 4
    assert not (env / "r.csv").exists()  # refused before anything is written


def test_score_exit_codes_and_report(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(4):
        write_png(env / "imgs" / f"{i}.png", i / 3)
    out = env / "res" / "results.csv"
    assert main(["score", str(env / "imgs"), "--out", str(out), "--model", "synthetic-ct"]) == 0
    stdout = capsys.readouterr().out
    assert "4 scored" in stdout and DISCLAIMER in stdout
    html = out.with_suffix(".html").read_text()
    assert "data:image/png;base64," in html and DISCLAIMER in html
    ct = ["--model", "synthetic-ct"]
    assert main(["score", str(env / "imgs"), "--out", str(out), *ct]) == 2  # exists, no --resume
    assert f"lunglens: ResultsExist: {out}: the results file already exists" in (
        capsys.readouterr().err
    )  # one line, with its code, as docs/cli.md says
    assert main(["score", str(env / "imgs"), "--out", str(out), "--resume", *ct]) == 0
    (env / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert (
        main(["score", str(env / "imgs"), "--out", str(out), "--resume", "--no-report", *ct]) == 1
    )  # one new scan errored
    assert "CorruptFile 1" in capsys.readouterr().out
    assert (
        main(
            ["score", str(env / "imgs"), "--out", str(out), "--resume", "--model", "synthetic-cxr"]
        )
        == 2
    )  # other model: resume refused
    runs = [a for a in _audit(env) if a["event"] == "score"]
    assert [a.get("error") for a in runs] == [None, "ResultsExist", None, None, "ResumeConflict"]


def test_models_listing(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    # both triage models verify, but without a modality check the install is not complete:
    # the chest-image gate would keep only its tag and pixel rules (as selftest says)
    assert main(["models", "--verify"]) == 4
    out = capsys.readouterr().out
    assert out.count("verified") == 2 and "missing: no modality-check model" in out
    write_modality_check(env / "models" / "synthetic-modality")
    assert main(["models", "--verify"]) == 0
    out = capsys.readouterr().out
    assert out.count("verified") == 3 and "missing" not in out
    assert main(["--models-dir", str(env / "empty"), "models"]) == 4


def test_demo_prints_table_without_display(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    res = env / "resources"
    write_png(res / "samples" / "bright.png", 0.95)
    write_png(res / "samples" / "dark.png", 0.05)
    (res / "samples" / "LICENSE.md").write_text(
        "| File | Kind | Label (source) |\n|---|---|---|\n"
        "| `bright.png` | chest X-ray | pneumonia (Pneumocystis) |\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("LUNGLENS_RESOURCES_DIR", str(res))
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["file", "known", "label", "modality", "model", "P(covid)", "result"]
    bright = next(line for line in out.splitlines() if line.startswith("bright.png"))
    # the known label of the sample beside the result; the number is P(covid), not a class
    assert "pneumonia (Pneumocystis)" in bright
    assert "Flagged for review - COVID-19 not ruled out (P " in bright
    dark = next(line for line in out.splitlines() if line.startswith("dark.png"))
    assert " ? " in dark and "Not flagged for COVID-19 (P " in dark
    assert "FLAGGED" not in out and DISCLAIMER in out
    monkeypatch.setenv("LUNGLENS_RESOURCES_DIR", str(env / "none"))
    assert main(["demo"]) == 1


def test_score_defaults_to_auto(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No --model: automatic mode; a plain image without a modality check gets an error row
    naming the reason instead of a CT score (it used to be scored by the CT model)."""
    write_png(env / "imgs" / "a.png", 0.9)
    out = env / "r.csv"
    assert main(["score", str(env / "imgs"), "--out", str(out)]) == 1
    assert "each with its modality's default model" in capsys.readouterr().err
    from lunglens.batch import read_rows

    (row,) = read_rows(out)
    assert row["status"] == "error" and row["error"].startswith("ModelNotFound: ")
    assert "no modality check" in row["error"] and row["p_covid"] == ""
    html = out.with_suffix(".html").read_text()
    assert "synthetic-ct" in html and "synthetic-cxr" in html  # every model of the run named


def test_demo_prints_text_when_qt_cannot_start(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A display that cannot be opened (as with missing X libraries) must not abort the
    process with SIGABRT (exit 134): the demo falls back to its text summary."""
    pytest.importorskip("PySide6")
    res = env / "resources"
    write_png(res / "samples" / "bright.png", 0.95)
    monkeypatch.setenv("LUNGLENS_RESOURCES_DIR", str(res))
    monkeypatch.setenv("DISPLAY", ":9876")  # no X server there
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    assert main(["demo"]) == 0
    out, err = capsys.readouterr()
    assert "Qt could not be started" in err and "printing the demo as text" in err
    assert "bright.png" in out and "P(covid)" in out


def test_gui_missing_is_a_clear_message(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "lunglens.gui.app", None)  # import fails
    assert main([]) == 1
    assert "desktop app cannot start" in capsys.readouterr().err


def test_help_documents_exit_codes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lunglens", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for code in ("130", "model refused", "usage error"):
        assert code in proc.stdout


CT_DICOM = SHARED_DATA / "dicom" / "ct-misc" / "693_UNCI.dcm"


@pytest.mark.skipif(not CT_DICOM.exists(), reason="shared DICOM data not available")
def test_patient_id_only_when_asked(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", str(CT_DICOM), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["modality"] == "ct" and data["model"] == "synthetic-ct"  # chosen by modality
    assert "patient_id" not in data
    assert main(["classify", str(CT_DICOM), "--json", "--include-ids"]) == 0
    pid = json.loads(capsys.readouterr().out)["patient_id"]
    assert pid
    out = env / "r.csv"
    assert main(["score", str(CT_DICOM), "--out", str(out), "--no-report"]) == 0
    assert "patient_id" not in out.read_text().splitlines()[0]
    out2 = env / "r2.csv"
    assert main(["score", str(CT_DICOM), "--out", str(out2), "--include-ids", "--no-report"]) == 0
    assert out2.read_text().splitlines()[0].endswith(",patient_id")
    assert out2.read_text().splitlines()[1].endswith("," + pid)
    assert pid not in out.read_text() and pid not in (env / "data" / "audit.log").read_text()


def test_resume_and_overwrite_exclude_each_other(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``[--resume | --overwrite]``: both at once used to be accepted and overwrite silently
    dropped the rows --resume was meant to keep."""
    img = write_png(env / "imgs" / "a.png", 0.5)
    out = env / "r.csv"
    argv = ["score", str(img), "--out", str(out), "--model", "synthetic-ct"]
    assert main([*argv, "--resume", "--overwrite"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    assert main([*argv, "--overwrite"]) == 0 and main([*argv, "--resume"]) == 0


def test_resume_says_when_the_rows_in_the_file_match_none_of_the_inputs(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys are compared as written: the same folder given as a relative and as an absolute
    path makes other keys, so ``--resume`` scores everything again. It says so."""
    write_png(env / "imgs" / "a.png", 0.5)
    write_png(env / "imgs" / "b.png", 0.5)
    monkeypatch.chdir(env)
    out = env / "r.csv"
    common = ["--out", str(out), "--model", "synthetic-ct", "--no-report"]
    assert main(["score", "imgs", *common]) == 0
    capsys.readouterr()
    assert main(["score", "imgs", *common, "--resume"]) == 0  # same spelling: nothing to say
    assert "match none" not in capsys.readouterr().err
    assert main(["score", str(env / "imgs"), *common, "--resume"]) == 0
    assert f"note: 2 rows already in {out} match none of these inputs" in capsys.readouterr().err


def _unreadable_inputs(env: Path) -> dict[Path, str]:
    """Inputs ``classify`` cannot read as a scan, each with its error code."""
    from onnx_fixtures import write_bad_inputs

    folder = env / "bad"
    found = {folder / name: code for name, code in write_bad_inputs(folder).items()}
    (folder / "notes.dcm").write_text("a text file named .dcm\n", encoding="utf-8")
    found[folder / "notes.dcm"] = "CorruptFile"
    found[folder / "missing.dcm"] = "UnreadablePath"
    if CT_DICOM.exists():
        data = CT_DICOM.read_bytes()
        (folder / "truncated.dcm").write_bytes(data[: len(data) // 2])
        found[folder / "truncated.dcm"] = "CorruptFile"
    return found


def test_unreadable_input_is_answered_like_a_refusal(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An input that cannot be read as a scan used to print nothing on stdout and leave no
    audit line: stdout now says it was refused and why (JSON or text), stderr keeps the error
    line, the exit code stays 3 and the audit log records it."""
    for path, code in _unreadable_inputs(env).items():
        assert main(["classify", str(path), "--json"]) == 3, path
        out, err = capsys.readouterr()
        data = json.loads(out)
        assert data["source"] == str(path) and data["status"] == "refused", out
        assert data["error"] == code and data["reason"] and str(path) not in data["reason"]
        assert f"{code}: " in err and "Traceback" not in err
        line = _audit(env)[-1]
        assert line["event"] == "classify" and line["input"] == str(path)
        assert line["outcome"] == "refused" and line["error"] == code
        assert "refused" not in line  # a decoder's words may quote the file: the code only
        assert main(["classify", str(path)]) == 3
        text = capsys.readouterr().out.splitlines()
        assert text[:2] == [f"file:        {path}", f"refused:     {data['reason']}"]
        assert text[2] == "score:       none (the input could not be read as a scan)"
        assert text[3] == DISCLAIMER


def test_refusals_keep_their_own_score_line(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A scan of the other modality keeps its hint; only unreadable input reads as such."""
    from lunglens.cli.classify import _print_refusal
    from lunglens.errors import ModalityMismatch, NotChestImage

    img = write_png(env / "ok.png", 0.5)

    _print_refusal(NotChestImage(img, "not a chest scan: a colour picture"), str(img), False)
    assert "chest CT slices and chest X-rays only" in capsys.readouterr().out
    mismatch = ModalityMismatch(img, "a chest X-ray given to a CT model", "Use --model auto.")
    _print_refusal(mismatch, str(img), False)
    assert "score:       none; use --model auto." in capsys.readouterr().out


def _series(folder: Path, n: int = 4) -> Path:
    """A CT series of ``n`` slices from one real slice, each slice brighter than the last
    (RescaleIntercept raised), so the synthetic brightness model ranks the last one first."""
    pydicom = pytest.importorskip("pydicom")
    folder.mkdir(parents=True)
    uid = pydicom.uid.generate_uid()
    for i in range(n):
        ds = pydicom.dcmread(CT_DICOM)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, pydicom.uid.generate_uid()
        ds.InstanceNumber, ds.ImagePositionPatient = i + 1, [0.0, 0.0, float(i * 5)]
        ds.RescaleIntercept = float(ds.get("RescaleIntercept", -1024)) + 300 * i
        ds.save_as(folder / f"s{i}.dcm")
    return folder


@pytest.mark.skipif(not CT_DICOM.exists(), reason="shared DICOM data not available")
def test_classify_json_numbers_slices_from_1(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--json`` used to give 0-based ``top_slices``/``representative_slice`` while the text,
    the CSV and the PDF count from 1: all now name the same slices the same way."""
    series = _series(env / "series")
    assert main(["classify", str(series)]) == 0
    text = capsys.readouterr().out
    shown = next(line for line in text.splitlines() if "most suspicious (1 = first)" in line)
    numbers = [int(n) for n in shown.split(":", 2)[2].split(",")]
    assert main(["classify", str(series), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_slices"] == 4 and data["top_slices"] == numbers
    assert data["top_slices"][0] == 4  # the brightest slice is the fourth, not "3"
    assert data["representative_slice"] == 4 and len(data["slice_probs"]) == 4


def test_failed_runs_are_audited(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs stopped by an error used to leave no audit line; now each leaves one with its
    ``outcome`` and error code (never the message), in the shape of a normal line."""
    import errno

    from lunglens.batch import results_csv

    imgs = env / "imgs"
    for i in range(3):
        write_png(imgs / f"{i}.png", i / 2)
    real_append = results_csv._append
    calls = []

    def full_after_one(fh: object, data: bytes) -> None:
        calls.append(data)
        if len(calls) > 1:  # one row fits, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(fh, data)  # type: ignore[arg-type]

    monkeypatch.setattr(results_csv, "_append", full_after_one)
    out = env / "r.csv"
    argv = ["score", str(imgs), "--out", str(out), "--model", "synthetic-ct", "--workers", "1"]
    assert main(argv) == 1
    assert "OutputError" in capsys.readouterr().err
    (line,) = [a for a in _audit(env) if a["event"] == "score"]
    assert line["outcome"] == "error" and line["error"] == "OutputError"
    assert line["inputs"] == [str(imgs)] and line["out_csv"] == str(out)
    assert line["model"] == "synthetic-ct" and len(line["model_sha256"]) == 64
    assert line["total"] == 3 and line["done"] == 1 and line["resume"] is False
    monkeypatch.setattr(results_csv, "_append", real_append)

    onnx_path = env / "models" / "synthetic-ct" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:-4] + b"evil")
    clear_engines()  # the run above holds the verified engine
    assert main(["classify", str(imgs / "0.png"), "--model", "synthetic-ct"]) == 4
    assert main([*argv, "--resume"]) == 4
    classify_line, score_line = _audit(env)[-2:]
    assert classify_line == {
        "event": "classify",
        "at": classify_line["at"],
        "input": str(imgs / "0.png"),
        "outcome": "error",
        "error": "ModelRefused",
    }
    assert score_line["event"] == "score" and score_line["error"] == "ModelRefused"
    assert score_line["outcome"] == "error" and score_line["resume"] is True


def test_scored_classify_line_says_scored(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = write_png(env / "ok.png", 0.5)
    assert main(["classify", str(img), "--model", "synthetic-ct"]) == 0
    assert _audit(env)[-1]["outcome"] == "scored"


MODALITY_CHECK = Path(__file__).resolve().parents[1] / "models" / "modality-check"


def test_models_verify_checks_the_gate_statistics(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``models --verify`` used to say "verified" for a modality check whose ``ood.npz`` was
    modified, which ``classify`` then refused: it now makes the same check (exit code 4)."""
    import shutil

    shutil.copytree(MODALITY_CHECK, env / "models" / "modality-check")
    # the gate's CT feature check is fitted on this model's features: without it, refused
    assert main(["models", "--verify"]) == 4
    refused = next(
        line for line in capsys.readouterr().out.splitlines() if "modality-check" in line
    )
    assert "REFUSED" in refused and "needs the model 'efficientnet-lite-ct'" in refused
    shutil.copytree(MODALITY_CHECK.parent / "efficientnet-lite-ct", env / "models" / "lite")
    assert main(["models", "--verify"]) == 0
    assert capsys.readouterr().out.count("verified") == 4
    stats = env / "models" / "modality-check" / "ood.npz"
    stats.write_bytes(stats.read_bytes()[:-8] + b"tampered")
    assert main(["models", "--verify"]) == 4
    out = capsys.readouterr().out
    refused = next(line for line in out.splitlines() if "modality-check" in line)
    assert "REFUSED" in refused and "gate statistics failed their integrity check" in refused
    assert out.count("verified") == 3  # the triage models are fine


def test_summary_counts_read_as_english(capsys: pytest.CaptureFixture[str]) -> None:
    from lunglens.batch import Summary
    from lunglens.cli.score import _print_summary

    one = Summary(Path("r.csv"), "m", "1", "x", total=2, done=2, ok=1, errors=1, ignored=("a",))
    _print_summary(one, automatic=False)
    out = capsys.readouterr().out
    assert "2 processed: 1 scored (0 flagged for review), 1 not scored (0 skipped" in out
    assert "1 file ignored (not scans), e.g. a" in out
    two = Summary(Path("r.csv"), "m", "1", "x", total=2, done=2, errors=2, ignored=("a", "b"))
    _print_summary(two, automatic=False)
    out = capsys.readouterr().out
    assert "2 not scored (" in out and "2 files ignored" in out
