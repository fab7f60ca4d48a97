"""Measure the series slice filter: non-chest slices left out of a CT series' score.

A CT series is scored from its slices that pass the chest-image gate's CT feature check
(:mod:`lunglens.inference.slice_filter`). This prints, for the shipped models (``models/``):

1. each untagged head CT slice of ``../shared/data/dicom`` as a series slice (loader's lung
   window): its P(covid) from the default CT model, its feature distance, kept or left out;
2. every patient group of ct-covid-binary with at least 3 slices scored as one series (up to
   40 slices), alone and with three copies of each head slice appended (a series that runs past
   the lungs): flagged share by label without and with the filter, chest slices left out, and
   groups whose decision the filter changes ("refused": no slice passes, no score). The shipped
   model has seen these slices in training, so the levels are in-sample: read the changes;
3. time per slice of scoring a 48-slice series: no filter, the filter on the scoring pass
   (the check's own model), and the filter as a second pass (``squeezenet-light-ct``).

Run: ``python benchmarks/bench_series_filter.py [MODELS_DIR]`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import csv
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
HEADS = [
    SHARED / "dicom" / "chest-ct-transfer-syntaxes" / "CT2_J2KR",
    SHARED / "dicom" / "ct-misc" / "693_J2KR.dcm",
]
MIN_SLICES, MAX_SLICES = 3, 40


def _groups(size: int) -> dict[tuple[str, str, str], np.ndarray]:
    """``(source, group, label) -> [S, size, size]`` slices of each ct-covid-binary group."""
    import cv2
    from PIL import Image

    root = SHARED / "ct-covid-binary"
    paths: dict[tuple[str, str, str], list[Path]] = defaultdict(list)
    with open(root / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            paths[(row["source"], row["group"], row["label"])].append(root / row["path"])
    out = {}
    for key, files in paths.items():
        ims = [np.asarray(Image.open(p).convert("L"), np.float32) / 255.0 for p in files]
        if len(ims) >= MIN_SLICES:
            out[key] = np.stack([cv2.resize(im, (size, size)) for im in ims[:MAX_SLICES]])
    return out


def _decision(info, probs: np.ndarray, unscored: tuple[int, ...]) -> tuple[float, bool]:
    from lunglens.inference.classify import result_from_probs

    r = result_from_probs(info, "bench", probs, unscored=unscored)
    return r.positive_prob, r.flagged


def main() -> int:
    from lunglens.inference.classify import _score_slices
    from lunglens.inference.engine import get_engine
    from lunglens.inference.gate_feature_check import load_feature_check
    from lunglens.inference.slice_filter import left_out
    from lunglens.io import load_scan
    from lunglens.models import get_model, modality_checker

    models = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "models"
    gate = modality_checker(models)
    check = load_feature_check(gate, models) if gate is not None else None
    if check is None:
        print("no CT feature check installed: nothing to measure")
        return 1
    ct = check.model
    engine = get_engine(ct)
    threshold = float(check.stats.threshold[0])
    print(f"models: {models}; CT model {ct.name} {ct.version}; feature threshold {threshold:.1f}")

    heads = np.stack([load_scan(p).image[0] for p in HEADS])
    hp, hd = _score_slices(engine, heads, check)
    assert hd is not None
    dist = check.stats.distances(hd)[:, 0]
    print("1. untagged head CT slices as series slices:")
    for p, d, path in zip(hp[:, ct.positive_index], dist, HEADS, strict=True):
        what = "left out" if d > threshold else "KEPT"
        print(f"   {path.name:14s} P(covid) {p:.3f}  feature distance {d:5.1f}  {what}")

    side = heads.shape[-1]
    groups = _groups(side)
    extra = np.concatenate([heads] * 3)
    counts: Counter[str] = Counter()
    flagged: Counter[tuple[str, str]] = Counter()
    changed, dropped, total = [], 0, 0
    start = time.perf_counter()
    for (source, group, label), chest in groups.items():
        counts[label] += 1
        for name, images in (("chest", chest), ("chest+head", np.concatenate([chest, extra]))):
            probs, desc = _score_slices(engine, images, check)
            assert desc is not None
            try:
                unscored = left_out(check, desc, group)
            except Exception:  # no slice passes: no score, so not flagged
                unscored = tuple(range(len(images)))
            before = _decision(ct, probs, ())
            refused = len(unscored) == len(images)
            after = (float("nan"), False) if refused else _decision(ct, probs, unscored)
            flagged[(label, f"{name} unfiltered")] += before[1]
            flagged[(label, f"{name} filtered")] += after[1]
            if name == "chest":
                dropped += len(unscored)
                total += len(images)
                if before[1] != after[1]:
                    then = "refused" if refused else f"P {after[0]:.3f}"
                    changed.append(f"{source}/{group} ({label}): P {before[0]:.3f} -> {then}")
    took = time.perf_counter() - start
    print(f"2. {sum(counts.values())} patient groups as series ({took:.0f} s):")
    for label in sorted(counts):
        for name in ("chest", "chest+head"):
            a = flagged[(label, f"{name} unfiltered")]
            b = flagged[(label, f"{name} filtered")]
            n = counts[label]
            print(
                f"   {label:9s} {name:10s}: flagged {a}/{n} ({a / n:.1%}) unfiltered, "
                f"{b}/{n} ({b / n:.1%}) filtered"
            )
    print(f"   chest slices left out of chest-only series: {dropped} of {total}")
    print(f"   chest-only decisions the filter changes: {len(changed)}")
    for line in changed:
        print(f"     {line}")

    series = np.concatenate(list(groups.values()))[:48]
    print(f"3. time per slice, a {len(series)}-slice series (median of 3 runs):")
    for name, model, owed in (
        ("no filter", ct, None),
        ("filter on the scoring pass", ct, check),
        ("squeezenet-light-ct, no filter", get_model("squeezenet-light-ct", models), None),
        ("squeezenet-light-ct + second pass", get_model("squeezenet-light-ct", models), check),
    ):
        eng = get_engine(model)
        _score_slices(eng, series[:16], owed)  # sessions built
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            _score_slices(eng, series, owed)
            runs.append((time.perf_counter() - t) * 1000.0 / len(series))
        print(f"   {name:36s} {np.median(runs):6.2f} ms/slice")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
