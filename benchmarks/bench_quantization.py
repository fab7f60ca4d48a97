"""INT8 vs float onnxruntime latency of a shipped model, measured in one run.

Usage: ``python benchmarks/bench_quantization.py [squeezenet-light-ct] [--threads 2] [--vs MODEL]``

Compares ``models/<name>/model.onnx`` (INT8, shipped) with ``models/<name>/model_fp32.onnx``
(the float export the INT8 file was quantized from). Runs are interleaved (fp32, int8, fp32,
...) so background load hits both alike; the median of each is reported with the ratio.
Outputs requested: ``probs`` + ``cam`` (what the viewer asks for) for one image, ``probs`` only
for a batch of 16 (what batch scoring asks for, in the app's batch size). Like the app's engine,
each session runs the graph pruned to the outputs asked for.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

import lunglens  # noqa: F401  (first: turns onnxruntime's telemetry off before it is imported)

# isort: split
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]


def session(path: Path, threads: int, outputs: list[str]) -> ort.InferenceSession:
    import onnx

    from lunglens.inference.engine import open_session, pruned_graph

    # the app's options (no spin-waiting between runs, float layers left float)
    graph = pruned_graph(onnx.load(str(path)), "image", outputs)
    return open_session(graph.SerializeToString(), threads)


def interleaved(sessions: dict, feed: dict, outputs: list[str], reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():  # warm-up
        for _ in range(3):
            s.run(outputs, feed)
    for _ in range(reps):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(outputs, feed)
            times[k].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def real_images(manifest: dict, n: int, size: list[int]) -> np.ndarray:
    """``n`` images of the model's training data (spread over its manifest) as model input.

    Real scans, not noise: the float activation ops' speed depends on the values (measured: a
    random batch ran 1.1x, a real one 1.3x INT8 vs float). Random input if the data is missing.
    """
    import csv

    from lunglens.errors import ScanError
    from lunglens.io import load_scan
    from lunglens.preprocess import to_model_input

    # the manifest says e.g. "../shared/data/ct-covid-binary (4597 images: ...)"
    name = Path(str(manifest["training"]["data"]).split(" (")[0]).name
    data = ROOT.parent / "shared" / "data" / name
    try:
        with open(data / "manifest.csv", newline="") as fh:
            paths = [row["path"] for row in csv.DictReader(fh)]
        picks = [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, n).astype(int))]
        return to_model_input([load_scan(data / p).image[0] for p in picks], tuple(size))
    except (OSError, KeyError, ScanError) as exc:
        print(f"no usable data at {data} ({exc}): random input")
        return np.random.default_rng(0).random((n, 1, *size), dtype=np.float32)


def folder(model: str) -> Path:
    """A shipped model's folder by name, or any model folder by path (a measured variant in
    ``runs/candidate-models``)."""
    return Path(model) if Path(model).is_dir() else ROOT / "models" / model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="squeezenet-light-ct")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument(
        "--vs",
        metavar="MODEL",
        help="another model (name or folder) of the same input size: its files run interleaved "
        "with these, and the latency ratios between the two models are printed",
    )
    args = ap.parse_args()
    d = folder(args.model)
    import json

    manifest = json.loads((d / "manifest.json").read_text())
    size = manifest["input"]["size"]
    files = {"fp32": d / "model_fp32.onnx", "int8": d / "model.onnx"}
    if args.vs:
        other = folder(args.vs)
        if json.loads((other / "manifest.json").read_text())["input"]["size"] != size:
            ap.error(f"{args.vs} has another input size than {args.model}")
        files |= {"vs fp32": other / "model_fp32.onnx", "vs int8": other / "model.onnx"}
    images = real_images(manifest, args.batch, size)
    one = {"image": images[:1]}
    batch = {"image": images}
    viewer = ["probs", "cam"]
    r1 = interleaved(
        {k: session(f, args.threads, viewer) for k, f in files.items()}, one, viewer, args.reps
    )
    rb = interleaved(
        {k: session(f, args.threads, ["probs"]) for k, f in files.items()},
        batch,
        ["probs"],
        max(10, args.reps // 2),
    )
    print(f"model {args.model} input {size} threads {args.threads} onnxruntime {ort.__version__}")
    print(
        f"1 image  (probs+cam): fp32 {r1['fp32']:.2f} ms  int8 {r1['int8']:.2f} ms  "
        f"speed-up {r1['fp32'] / r1['int8']:.2f}x"
    )
    print(
        f"batch {args.batch} (probs):   fp32 {rb['fp32']:.1f} ms  int8 {rb['int8']:.1f} ms  "
        f"speed-up {rb['fp32'] / rb['int8']:.2f}x  "
        f"({args.batch / rb['int8'] * 1000:.0f} images/s INT8)"
    )
    if args.vs:
        for what, r in (("1 image (probs+cam)", r1), (f"batch {args.batch} (probs)", rb)):
            print(
                f"{what}: {args.vs} fp32 {r['vs fp32']:.2f} ms, int8 {r['vs int8']:.2f} ms; "
                f"{args.model} / {args.vs}: fp32 {r['fp32'] / r['vs fp32']:.2f}x, "
                f"int8 {r['int8'] / r['vs int8']:.2f}x the time"
            )


if __name__ == "__main__":
    main()
