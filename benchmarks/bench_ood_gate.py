"""Measure the chest-image gate: refusals on a non-chest corpus, acceptance of real chest images.

Prints, for the shipped models (``models/``): every non-chest file with the gate's decision and
reason; the acceptance of every ct-covid-binary and cxr-3class image (overall, per data set,
per source; these are the images the statistics were fitted on, the held-out numbers are in
the modality-check manifest) and of the real chest DICOM files of ``../shared/data``.

Run: ``python benchmarks/bench_ood_gate.py [MODELS_DIR]`` (about a minute on 2 cores; the
default is the shipped ``models/``, another folder compares a refitted gate).
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    sys.path.insert(0, str(REPO / "tests"))
    from lunglens.errors import ScanError
    from lunglens.inference.gate import check_chest
    from lunglens.io import load_scan
    from ood_corpus import CHEST_DICOM, hard_cases, non_chest_corpus, training_images

    models = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "models"

    def verdict(path: Path) -> tuple[bool, str]:
        try:
            scan = load_scan(path)
        except ScanError as exc:
            return False, f"{exc.code} at load: {exc.reason}"
        v = check_chest(scan, models)
        return v.accepted, v.reason or f"distance {v.distance:.1f} <= {v.threshold:.1f}"

    with tempfile.TemporaryDirectory() as tmp:
        corpus = non_chest_corpus(Path(tmp), models)
        print(f"non-chest corpus: {len(corpus)} files")
        scored = 0
        for kind, path in corpus:
            ok, why = verdict(path)
            scored += ok
            print(f"  {'SCORED ' if ok else 'refused'}  {kind:26s} {path.name[:40]:40s} {why}")
        print(f"non-chest files scored: {scored} of {len(corpus)}")
        print("hard cases: untagged grey medical images of other body parts (pixels only):")
        for kind, path in hard_cases(Path(tmp) / "hard"):
            ok, why = verdict(path)
            print(f"  {'SCORED ' if ok else 'refused'}  {kind:26s} {path.name[:40]:40s} {why}")
    ok_dicom = 0
    print("real chest DICOM files:")
    for path in CHEST_DICOM:
        ok, why = verdict(path)
        ok_dicom += ok
        print(f"  {'accepted' if ok else 'REFUSED '}  {path.name[:60]:60s} {why}")
    print(f"chest DICOM accepted: {ok_dicom} of {len(CHEST_DICOM)}")
    total: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    for dataset, source, path in training_images():
        ok, _ = verdict(path)
        for key in (dataset, f"{dataset}/{source}"):
            total[key] += 1
            accepted[key] += ok
    print("training images accepted:")
    for key in sorted(total):
        print(f"  {key:50s} {accepted[key] / total[key]:.4f} of {total[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
