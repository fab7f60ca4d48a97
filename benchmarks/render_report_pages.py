"""Render the one-scan PDF report to PNG pages for a person to look at (not a test).

Classifies real scans with the shipped models (a DICOM chest CT with patient and study fields,
a DICOM chest X-ray and the 2-frame head CT sample whose notes must all reach the page), writes
the PDF in full and anonymized, and converts each page with ``pdftoppm`` (poppler-utils), so the
layout (headline, patient block, CAM with its colour bar and caveat, notes, model identity) can
be checked by eye.

Usage::

    python benchmarks/render_report_pages.py [--out DIR] [--dpi 80]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SCANS = {
    "ct-dicom": SHARED / "dicom" / "chest-ct-transfer-syntaxes" / "CTImage.dcm",
    "cxr-dicom": SHARED / "dicom" / "chest-cr" / "RG1_J2KI.dcm",
    "head-ct-2frames": ROOT / "resources" / "samples" / "ct-dicom-enhanced-2frames-rle.dcm",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("report-pages"))
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args(argv)
    if shutil.which("pdftoppm") is None:
        print("pdftoppm not found: apt-get install -y poppler-utils", file=sys.stderr)
        return 1
    from lunglens.inference import classify_scan
    from lunglens.io import load_scan
    from lunglens.report import scan_pdf

    args.out.mkdir(parents=True, exist_ok=True)
    for name, path in SCANS.items():
        if not path.exists():
            print(f"skip {name}: {path} missing")
            continue
        scan = load_scan(path)
        result = classify_scan(scan)
        for variant, anonymize in (("full", False), ("anonymized", True)):
            pdf = scan_pdf(scan, result, args.out / f"{name}-{variant}.pdf", anonymize=anonymize)
            prefix = args.out / f"{name}-{variant}"
            subprocess.run(
                ["pdftoppm", "-png", "-r", str(args.dpi), str(pdf), str(prefix)], check=True
            )
            pages = sorted(args.out.glob(f"{name}-{variant}*.png"))
            print(f"{name} {variant}: {result.headline}; pages: {', '.join(map(str, pages))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
