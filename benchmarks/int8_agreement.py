"""How often a shipped INT8 file decides differently from its float graph, on every image.

Usage: ``python benchmarks/int8_agreement.py [ct-efficientnet-lite]``

The model card's parity is measured on the validation fold, which is also the fold the INT8
recipe was chosen on (``search_quantization``), so it flatters the recipe a little. This runs
``models/<model>/model.onnx`` and ``model_fp32.onnx`` on every image of the preset's data set
(the pipeline's model view, ``Pipeline.data``) and prints, at the manifest's threshold, how many
triage decisions and final decisions (``metrics.decide``: flagged, else the most probable other
class) differ, with the mean and max |dp|, for the validation fold and for the whole set. The
README quotes one run. Needs the train extra and ``../shared/data``; about 1 min for 4,597 CT
slices on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quant_sensitivity import quiet_pipeline

    from lunglens.models.manifest import ModelManifest
    from lunglens.training.metrics import decide
    from lunglens.training.quantize import onnx_probs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", nargs="?", default="ct-efficientnet-lite")
    args = ap.parse_args()
    pipe = quiet_pipeline(args.preset)
    preset = pipe.p
    folder = ROOT / "models" / preset.model_name
    # read as the app reads it: a manifest edited after its seal is refused
    manifest = ModelManifest.read(folder / "manifest.json").to_dict()
    ds = pipe.data()
    _, val_idx = pipe.quantization_images(ds)
    pos = ds.classes.index(manifest["positive_label"])
    thr = float(manifest["threshold"])
    p32 = onnx_probs(folder / "model_fp32.onnx", ds.images)
    p8 = onnx_probs(folder / "model.onnx", ds.images)
    print(
        f"{preset.model_name} {manifest['version']} ({manifest['sha256'][:12]}), "
        f"threshold {thr:.4f}, INT8 vs float:"
    )
    for name, idx in [("validation fold", val_idx), ("every image", np.arange(len(p32)))]:
        a, b = p32[idx], p8[idx]
        flags = int(((a[:, pos] >= thr) != (b[:, pos] >= thr)).sum())
        decisions = int((decide(a, pos, thr) != decide(b, pos, thr)).sum())
        dp = np.abs(a - b)
        print(
            f"  {name}: {len(idx)} images, triage decisions that differ {flags} "
            f"({100 * (1 - flags / len(idx)):.2f}% agree), final decisions {decisions}, "
            f"mean |dp| {dp.mean():.4f}, max |dp| {dp.max():.3f}"
        )


if __name__ == "__main__":
    main()
