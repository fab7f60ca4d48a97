"""HTML summary and one-scan PDF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lunglens import DISCLAIMER
from lunglens.batch import score
from lunglens.inference import classify_scan, clear_engines
from lunglens.io.scan import Scan
from lunglens.models import get_model
from lunglens.models.registry import ModelInfo
from lunglens.report import scan_pdf, write_html_report
from onnx_fixtures import blob_image, make_models_dir, textured, write_png


@pytest.fixture
def mdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_engines()
    monkeypatch.setenv("LUNGLENS_DATA_DIR", str(tmp_path / "data"))
    return make_models_dir(tmp_path / "models")


def test_html_report_is_self_contained(tmp_path: Path, mdir: Path) -> None:
    info = get_model("synthetic-ct", mdir)
    for i, v in enumerate((0.95, 0.9, 0.2, 0.1)):
        write_png(tmp_path / "imgs" / f"s{i}<b>.png", v)
    (tmp_path / "imgs" / "junk.png").write_text("junk")
    out = tmp_path / "results.csv"
    list(score([tmp_path / "imgs"], info, out))
    html_path = write_html_report(out, info)
    assert html_path == tmp_path / "results.html"
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "src='http" not in html and "<script" not in html
    assert DISCLAIMER in html and info.sha256 in html and info.version in html
    assert "&lt;b&gt;" in html and "<b>" not in html  # file names are escaped
    assert "Flagged scans (2)" in html and "Errors (1)" in html and "CorruptFile" in html
    assert html.index("s0&lt;b&gt;") < html.index("s1&lt;b&gt;")  # sorted by probability
    # the same triage words as everywhere, and one threshold precision
    assert "Flagged for review - COVID-19 not ruled out (P 0.9" in html
    assert "0.500 on P(covid)" in html and "most suspicious slices (1 = first)" in html


def test_scan_pdf(tmp_path: Path, mdir: Path) -> None:
    info = get_model("synthetic-ct", mdir)
    stack = np.stack([blob_image(), textured(0.1, (64, 64))])
    scan = Scan("series-x", stack, modality="ct", kind="dicom-series")
    result = classify_scan(scan, info)
    pdf = scan_pdf(scan, result, tmp_path / "out" / "scan.pdf")
    data = pdf.read_bytes()
    pages = data.count(b"/Type /Page") - data.count(b"/Type /Pages")
    assert data.startswith(b"%PDF") and pages == 1
    no_cam = classify_scan(scan, info, with_cam=False)
    assert scan_pdf(scan, no_cam, tmp_path / "nocam.pdf").stat().st_size > 1000


def _pdf_text(pdf: Path) -> str:
    import shutil
    import subprocess

    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) not installed")
    return subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout


def test_scan_pdf_has_what_a_clinic_files(tmp_path: Path, mdir: Path) -> None:
    """Patient and study fields from the DICOM header (left out when anonymized), headline,
    threshold, every warning and note, CAM caveat, model identity, date and app version."""
    from conftest import SHARED_DATA
    from lunglens import __version__
    from lunglens.io import load_scan

    src = SHARED_DATA / "dicom" / "chest-ct-transfer-syntaxes" / "CTImage.dcm"
    if not src.exists():
        pytest.skip("shared DICOM data not available")
    scan = load_scan(src)
    scan.notes.append("a loader note that must reach the page")
    result = classify_scan(scan, get_model("synthetic-ct", mdir))
    result.notes.append("a result note that must reach the page too")
    text = _pdf_text(scan_pdf(scan, result, tmp_path / "full.pdf"))
    flat = " ".join(text.split())
    for expected in (
        "2178309",  # PatientID (0010,0020)
        "MISTER, CT",  # PatientName (0010,0010)
        "2001-01-05",  # StudyDate (0008,0020)
        "0000000001",  # AccessionNumber (0008,0050)
        "HELICAL CHEST",  # SeriesDescription (0008,103E)
        result.headline,
        "Threshold: 0.500 on P(covid)",
        "not a lesion outline",
        result.model_sha256,
        f"LungLens {__version__}",
        "a loader note that must reach the page",
        "a result note that must reach the page too",
    ):
        assert expected in flat, expected
    assert "synthetic-ct" in flat and "synthetic-cxr" not in flat  # the model that scored it
    anon = " ".join(
        _pdf_text(scan_pdf(scan, result, tmp_path / "anon.pdf", anonymize=True)).split()
    )
    for hidden in ("2178309", "MISTER", "2001-01-05", "0000000001"):
        assert hidden not in anon
    assert "left out (anonymized report)" in anon and "HELICAL CHEST" in anon


def test_pdf_names_the_scan_by_its_key(tmp_path: Path, mdir: Path) -> None:
    """A series key names its folder; a file whose own name holds ``#`` keeps its whole name."""
    from lunglens.report.pdf import result_lines

    info = get_model("synthetic-ct", mdir)
    hashed = write_png(tmp_path / "case#7.png", 0.9)
    for source, shown in (
        (str(hashed), "case#7.png"),
        (str(tmp_path / "series-x#1.2.840.1"), "series-x"),
    ):
        scan = Scan(source, blob_image(), modality="ct")
        lines = result_lines(scan, classify_scan(scan, info, with_cam=False))
        assert f"Scan:               {shown}" in lines


def test_scan_pdf_says_when_the_map_is_drawn_on_the_reference_scale(
    tmp_path: Path, mdir: Path
) -> None:
    from dataclasses import replace

    from lunglens.explain import FLOOR_NOTE
    from lunglens.io import Scan
    from onnx_fixtures import blob_image

    scan = Scan("blob", blob_image(96, 96)[None], modality="ct")
    result = classify_scan(scan, get_model("synthetic-ct", mdir), with_cam=True)
    quiet = replace(result, slice_threshold=1.01, cam_reference={result.cam_class: 1e6})
    flat = " ".join(_pdf_text(scan_pdf(scan, quiet, tmp_path / "quiet.pdf")).split())
    # the note is wrapped in the map's title, where the page's text layout may interleave it
    head, tail = "Not flagged: colours scaled to at least", "so weak evidence is faint"
    assert head in FLOOR_NOTE and tail in FLOOR_NOTE
    assert head in flat and tail in flat and "at least a typical flagged image's peak" in flat
    loud = replace(quiet, slice_threshold=0.0)
    flat = " ".join(_pdf_text(scan_pdf(scan, loud, tmp_path / "loud.pdf")).split())
    assert head not in flat and "relative to this map's maximum" in flat


def _row(info: ModelInfo, path: str, p: float, threshold: str, n_slices: int) -> dict[str, str]:
    """An ``ok`` row of ``info`` as the batch runner writes it (only what the report reads)."""
    return {
        "path": path,
        "status": "ok",
        "model": info.name,
        "model_version": info.version,
        "model_sha256": info.sha256,
        "prediction": "Not flagged",
        "p_covid": f"{p:.6f}",
        "p_non-covid": f"{1 - p:.6f}",
        "flagged": "true" if p >= float(threshold) else "false",
        "threshold": threshold,
        "n_slices": str(n_slices),
        "top_slices": "1",
    }


def test_html_report_states_the_threshold_each_row_was_judged_by(
    tmp_path: Path, mdir: Path
) -> None:
    """Series rows are judged by ``series_aggregation.threshold``; the report used to state
    only the slice threshold, and it listed a model of the run that scored nothing with
    "0 scans"."""
    from lunglens.batch.results_csv import open_results
    from onnx_fixtures import write_model

    agg = {"method": "top_k_mean", "k": 3, "threshold": 0.9, "rule": "calibrated on patients"}
    write_model(mdir / "series-ct", name="series-ct", series_aggregation=agg)
    info, unused = get_model("series-ct", mdir), get_model("synthetic-cxr", mdir)
    out = tmp_path / "results.csv"
    writer = open_results(out, [info, unused])
    for row in (
        _row(info, "one.png", 0.6, "0.500", 1),
        _row(info, "two.png", 0.2, "0.500", 1),
        _row(info, "series#1.2.3", 0.7, "0.900", 3),
    ):
        writer.write(row)
    writer.close()
    html = write_html_report(out, [info, unused]).read_text()
    assert "<th>Thresholds</th>" in html
    assert "0.500 on P(covid) for single images (2 scans) - fixed at 0.5 for tests" in html
    assert "0.900 on P(covid) for series (1 scan) - calibrated on patients" in html
    assert "series-ct 0.0.1 (synthetic brightness detector (tests only)), 3 scans" in html
    assert "0 scans" not in html and "1 scans" not in html
    assert f"synthetic-cxr 0.0.1 ({unused.short_hash}): scored no scan in this file" in html
    assert html.count("data:image/png;base64,") == 2  # one histogram (series-ct) + outcomes


def test_score_histogram_draws_the_threshold_of_each_group() -> None:
    """One dashed line per threshold the rows were judged by, labelled with its group; a
    single group keeps the plain "threshold 0.500" label."""
    from lunglens.report.charts import score_histogram

    fig = score_histogram([("single images", [0.6, 0.2], 0.5), ("series", [0.7], 0.9)], "covid")
    ax = fig.axes[0]
    assert sorted(float(line.get_xdata()[0]) for line in ax.get_lines()) == [0.5, 0.9]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "threshold 0.500 (single images)" in legend and "threshold 0.900 (series)" in legend
    assert "series" in legend and "single images" in legend  # the stacked bars' groups
    one = score_histogram([("single images", [0.6], 0.5)], "covid").axes[0]
    assert [t.get_text() for t in one.get_legend().get_texts()] == ["threshold 0.500"]
