"""Which blocks of a trained network cost INT8 agreement: each block quantized alone.

Usage: ``python benchmarks/quant_sensitivity.py [ct-efficientnet-lite] [--blocks N]
[--from-float N] [--depthwise-8bit]``

Takes the float graph ``lunglens-train <preset>`` left in its work folder
(``runs/<model>/model_fp32.onnx``), the pipeline's calibration images and validation fold
(``Pipeline.quantization_images``), and for each block of the network (the stem, every
``/blocks/blocks.i/blocks.i.j/``, the head) writes a copy with that block in INT8 and every
other one in float (``quantize_model(float_prefixes=...)``). It prints, per block, how many
validation decisions flip against float at the shipped threshold, and the mean and max |dp|.
The scan is why the search's candidates keep the first Convs in float (docs/measurements.md
quotes one run). Needs the train extra and ``../shared/data``; about 20 s per block.

``--from-float N`` scans the other way, from a shipped-style recipe: the stem and the first N
blocks in float, everything after them in INT8, and each of those N blocks put into INT8 alone
(the rest of them still float). It answers whether any block of the float region can go
(each one it can is speed for free). ``--depthwise-8bit`` gives every copy 8-bit depthwise
weights (``quantize_model(depthwise_8bit=True)``), as the CT Lite0 1.1.3 has.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_STEM = ("/conv_stem", "/bn1/")
_HEAD = ("/conv_head", "/bn2/", "/ReduceMean")


def blocks(fp32: Path) -> dict[str, tuple[str, ...]]:
    """Block name -> node-name prefixes, in graph order (timm EfficientNet naming)."""
    import onnx

    found: dict[str, tuple[str, ...]] = {}
    for node in onnx.load(str(fp32)).graph.node:
        if node.name.startswith("/blocks/"):
            key = "/".join(node.name.split("/")[:4]) + "/"
            found.setdefault(key, (key,))
        elif node.name.startswith(_STEM):
            found.setdefault("stem", _STEM)
        elif node.name.startswith(_HEAD):
            found.setdefault("head", _HEAD)
    return found


def quiet_pipeline(preset_name: str):
    """The training pipeline of a preset over ``../shared/data`` and its work folder under
    ``$LUNGLENS_RUNS`` (default ``runs/``), logging nothing: what the INT8 benchmarks read the
    data set, the calibration images and the validation fold from."""
    from lunglens.training.pipeline import Pipeline, PipelineOptions
    from lunglens.training.presets import PRESETS

    preset = PRESETS[preset_name]
    runs = Path(os.environ.get("LUNGLENS_RUNS", ROOT / "runs"))
    opts = PipelineOptions(
        data_root=ROOT.parent / "shared" / "data",
        models_dir=ROOT / "models",
        workdir=runs / preset.model_name,
    )
    return Pipeline(preset, opts, log=lambda msg: None)


def main() -> None:
    from lunglens.training.quantize import onnx_probs, quantize_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", nargs="?", default="ct-efficientnet-lite")
    ap.add_argument("--blocks", type=int, default=None, help="only the first N blocks")
    ap.add_argument("--from-float", type=int, default=0, metavar="N", help="see the docstring")
    ap.add_argument("--depthwise-8bit", action="store_true", help="8-bit depthwise weights")
    args = ap.parse_args()
    pipe = quiet_pipeline(args.preset)
    ds = pipe.data()
    calib, val_idx = pipe.quantization_images(ds)
    pos, thr = pipe.positive(ds), pipe.shipped_threshold()
    fp32 = pipe.work / "model_fp32.onnx"
    p32 = onnx_probs(fp32, ds.images[val_idx])[:, pos]
    groups = blocks(fp32)
    names = list(groups)
    if args.from_float:  # the stem and the first N blocks float; each of them INT8 in turn
        base = names[: args.from_float + 1]
        scans = [("(none)", base)] + [(n, [b for b in base if b != n]) for n in base]
        title = f"stem + {args.from_float} blocks float, INT8 too"
    else:
        scans = [(n, [b for b in names if b != n]) for n in names[: args.blocks]]
        title = "block in INT8 alone"
    print(f"{args.preset}: {len(val_idx)} validation images, threshold {thr:.4f}")
    print(f"{title:32s} {'flips':>5s} {'mean|dp|':>9s} {'max|dp|':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, floats in scans:
            rest = [p for block in floats for p in groups[block]]
            out = Path(tmp) / "one.onnx"
            quantize_model(
                fp32, out, calib, float_prefixes=rest, depthwise_8bit=args.depthwise_8bit
            )
            p8 = onnx_probs(out, ds.images[val_idx])[:, pos]
            dp = np.abs(p8 - p32)
            flips = int(((p8 >= thr) != (p32 >= thr)).sum())
            print(f"{name:32s} {flips:5d} {dp.mean():9.4f} {dp.max():8.3f}", flush=True)


if __name__ == "__main__":
    main()
