"""Inference benchmarks for a shipped model (not a test: numbers, no thresholds).

Measures, in one run on this machine:

1. single-image latency, file -> probabilities + CAM (``load_scan`` + ``classify_scan``);
2. batch throughput, N CT slices end to end through :func:`lunglens.batch.score`
   (discovery, parallel decoding, inference, durable CSV rows);
3. peak RSS of the process;
4. RSS growth over many classify calls (memory must stay flat);
5. the same model in PyTorch fp32 (checkpoint from the manifest's ``training.checkpoint``) for
   latency and throughput ratios, measured in alternating rounds with the app's engine (random
   weights when the training checkpoint is not on this machine: the speed of dense fp32
   inference does not depend on them). Skipped with a message when torch is missing.

Usage::

    python benchmarks/bench_inference.py [--model squeezenet-light-ct] [--n 1000] [--calls 10000]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lunglens.batch import Finished, score
from lunglens.inference import classify_scan, get_engine, physical_cores
from lunglens.io import load_scan
from lunglens.models import ModelInfo, default_model_for, get_model
from lunglens.preprocess import to_model_input

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct-covid-binary"


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; else peak RSS)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def ct_slices(n: int) -> list[Path]:
    files = sorted((DATA / "covid").glob("*.jpg")) + sorted((DATA / "non-covid").glob("*.jpg"))
    if not files:
        raise SystemExit(f"no CT slices under {DATA}")
    rng = np.random.default_rng(0)
    pick = rng.choice(len(files), size=min(n, len(files)), replace=False)
    return [files[i] for i in sorted(pick)]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_latency(info: ModelInfo, path: Path, reps: int = 50) -> list[float]:
    for _ in range(5):
        classify_scan(load_scan(path), info)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        classify_scan(load_scan(path), info, with_cam=True)
        times.append((time.perf_counter() - t) * 1000)
    return times


def bench_score(info: ModelInfo, files: list[Path], workers: int) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "slices"
        folder.mkdir()
        for i, f in enumerate(files):
            (folder / f"{i:05d}_{f.name}").symlink_to(f.resolve())
        os.environ.setdefault("LUNGLENS_DATA_DIR", str(Path(tmp) / "data"))
        t = time.perf_counter()
        summary = None
        for ev in score([folder], info, Path(tmp) / "r.csv", workers=workers, audit=False):
            if isinstance(ev, Finished):
                summary = ev.summary
        elapsed = time.perf_counter() - t
    assert summary is not None
    return elapsed, summary.ok, summary.errors


def bench_memory(info: ModelInfo, path: Path, calls: int) -> tuple[float, float, float]:
    scan = load_scan(path)
    for _ in range(min(200, calls)):
        classify_scan(scan, info)
    start = rss_mb()
    t = time.perf_counter()
    for _ in range(calls):
        classify_scan(scan, info, with_cam=True)
    return start, rss_mb(), (time.perf_counter() - t) / calls * 1000


def onnx_batch_throughput(info: ModelInfo, batch: np.ndarray, bs: int = 16) -> float:
    engine = get_engine(info)
    engine.predict(batch[:bs])
    t = time.perf_counter()
    for i in range(0, len(batch), bs):
        engine.predict(batch[i : i + bs])
    return len(batch) / (time.perf_counter() - t)


def torch_runner(info: ModelInfo):
    """A PyTorch fp32 ``run(x, cam)`` of the same model, or the reason it cannot be built."""
    try:
        import torch

        from lunglens.training.models import create_model
    except ImportError as exc:
        return f"torch or lunglens.training not importable ({exc})"
    ckpt = (info.manifest.get("training") or {}).get("checkpoint")
    arch = info.manifest.get("arch")
    if not arch:
        return "manifest has no 'arch'"
    torch.set_num_threads(physical_cores())
    model = create_model(arch, len(info.labels))
    if ckpt and Path(ckpt).is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state.get("model", state))
        print(f"PyTorch baseline: trained weights from {ckpt}")
    else:  # checkpoints stay on the training machine; dense fp32 speed does not depend on them
        print(
            "PyTorch baseline: same architecture, random weights (checkpoint not on this "
            "machine; fp32 dense inference time does not depend on the weight values)"
        )
    model.eval()
    weight = model.classifier.weight  # type: ignore[union-attr]

    def run(x: np.ndarray, cam: bool) -> None:
        with torch.inference_mode():
            xt = torch.from_numpy(x)
            feats = model.features(xt)  # type: ignore[operator]
            logits = model.classifier(feats.mean((2, 3)))  # type: ignore[operator]
            torch.softmax(logits, 1)
            if cam:
                torch.einsum("kc,nchw->nkhw", weight, feats)

    return run


def compare_with_torch(
    info: ModelInfo, single: np.ndarray, batch: np.ndarray, reps: int, rounds: int = 5, bs: int = 16
) -> None:
    """ONNX (the app's engine) vs PyTorch fp32, measured in alternating rounds.

    Each round times ``reps`` single-image calls (probs + CAM) and one pass over ``batch`` in
    batches of ``bs`` (probs) for each engine in turn, so a slower or faster spell of a shared
    machine hits both alike; the medians over all calls / rounds are compared.
    """
    run = torch_runner(info)
    if isinstance(run, str):
        print(f"[5] PyTorch fp32 baseline skipped: {run}")
        return
    engine = get_engine(info)

    def onnx_run(x: np.ndarray, cam: bool) -> None:
        engine.predict(x, ("probs", "cam") if cam else ("probs",))

    engines = {"onnx": onnx_run, "torch": run}
    lat: dict[str, list[float]] = {k: [] for k in engines}
    tput: dict[str, list[float]] = {k: [] for k in engines}
    for fn in engines.values():  # warm-up
        for _ in range(5):
            fn(single, True)
        fn(batch[:bs], False)
    for _ in range(rounds):
        for name, fn in engines.items():
            for _ in range(reps):
                t = time.perf_counter()
                fn(single, True)
                lat[name].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            for i in range(0, len(batch), bs):
                fn(batch[i : i + bs], False)
            tput[name].append(len(batch) / (time.perf_counter() - t))
    lo, lt = statistics.median(lat["onnx"]), statistics.median(lat["torch"])
    to, tt = statistics.median(tput["onnx"]), statistics.median(tput["torch"])
    print(
        f"[5] preprocessed image -> probs + CAM ({rounds} alternating rounds): PyTorch fp32 "
        f"median {lt:.2f} ms vs ONNX {lo:.2f} ms (ONNX speed-up x{lt / lo:.2f})"
    )
    print(
        f"    batch throughput (batches of {bs}, probs): PyTorch {tt:.1f} slices/s vs ONNX "
        f"{to:.1f} (x{to / tt:.2f}); per round x"
        + ", x".join(f"{o / t:.2f}" for o, t in zip(tput["onnx"], tput["torch"], strict=True))
    )
    print(f"    peak RSS with torch loaded: {peak_rss_mb():.1f} MB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model name (default: the CT model)")
    ap.add_argument("--models-dir")
    ap.add_argument("--n", type=int, default=1000, help="CT slices for throughput")
    ap.add_argument("--calls", type=int, default=10000, help="classify calls for memory")
    ap.add_argument("--reps", type=int, default=50, help="latency repetitions")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    info = (
        get_model(args.model, args.models_dir)
        if args.model
        else default_model_for("ct", args.models_dir)
    )
    quant = info.manifest.get("quantization", {})
    print(
        f"model {info.name} {info.version} ({info.short_hash}), input {info.input_size}, "
        f"quantization: {quant.get('scheme', quant.get('format', '?'))}"
    )
    print(
        f"cpu: {physical_cores()} physical cores, {os.cpu_count()} logical; python "
        f"{sys.version.split()[0]}"
    )
    files = ct_slices(args.n)
    sample = files[0]

    t = time.perf_counter()
    get_engine(info)
    print(f"session create + verify: {(time.perf_counter() - t) * 1000:.0f} ms")

    lat = bench_latency(info, sample, args.reps)
    print(
        f"[1] single image file -> probs + CAM: median {statistics.median(lat):.1f} ms, "
        f"p90 {pct(lat, 90):.1f} ms ({args.reps} runs)"
    )

    elapsed, ok, errors = bench_score(info, files, args.workers)
    print(
        f"[2] score {len(files)} CT slices end to end ({args.workers} decoders): "
        f"{elapsed:.1f} s = {len(files) / elapsed:.1f} slices/s ({ok} ok, {errors} errors)"
    )

    imgs = [load_scan(f).image[0] for f in files]
    batch = to_model_input(imgs, info.input_size)
    onnx_tp = onnx_batch_throughput(info, batch)
    print(f"    inference only, batches of 16: {onnx_tp:.1f} slices/s")

    before, after, per_call = bench_memory(info, sample, args.calls)
    print(
        f"[4] {args.calls} classify calls (probs + CAM, {per_call:.2f} ms each): RSS "
        f"{before:.1f} -> {after:.1f} MB (growth {after - before:+.1f} MB)"
    )
    print(f"[3] peak RSS so far: {peak_rss_mb():.1f} MB")

    single = to_model_input(imgs[0], info.input_size)
    compare_with_torch(info, single, batch, args.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
