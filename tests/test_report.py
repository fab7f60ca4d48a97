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
from lunglens.report import scan_pdf, write_html_report
from onnx_fixtures import blob_image, make_models_dir, write_png


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


def test_scan_pdf(tmp_path: Path, mdir: Path) -> None:
    info = get_model("synthetic-ct", mdir)
    stack = np.stack([blob_image(), np.full((64, 64), 0.1, np.float32)])
    scan = Scan("series-x", stack, modality="ct", kind="dicom-series")
    result = classify_scan(scan, info)
    pdf = scan_pdf(scan, result, tmp_path / "out" / "scan.pdf")
    data = pdf.read_bytes()
    pages = data.count(b"/Type /Page") - data.count(b"/Type /Pages")
    assert data.startswith(b"%PDF") and pages == 1
    no_cam = classify_scan(scan, info, with_cam=False)
    assert scan_pdf(scan, no_cam, tmp_path / "nocam.pdf").stat().st_size > 1000
