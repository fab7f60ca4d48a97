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
from onnx_fixtures import blob_image, make_models_dir, write_png


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
        "result:      Not flagged (P " in out
    )
    assert "prediction" not in out and DISCLAIMER in out
    assert "threshold:   0.500 on P(covid)" in out  # one precision for thresholds
    assert "no modality" in err and "synthetic-ct" in err  # plain image -> CT model, warned
    with Image.open(cam) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
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
    assert [a["event"] for a in _audit(env)].count("score") == 3


def test_models_listing(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--verify"]) == 0
    out = capsys.readouterr().out
    assert out.count("verified") == 2
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
    assert " ? " in dark and "Not flagged (P " in dark
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
