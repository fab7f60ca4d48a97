"""Move a training run between this machine and a lent GPU machine, within a transfer budget.

A lent GPU machine (see ``docs/training.md``, "Training on a lent GPU") receives at most 64 MiB
and sends back at most 8 files of 16 MB. The CT training cache at 224 px is 231 MB of uint8, so
it travels as WebP (quality 82: 38 MB for 4,597 slices), and a run comes back as a few tar files
with the fold checkpoints in float16 (the final model stays float32: it is the one exported).

Lossy transport changes what the GPU trains on, not what the numbers here are measured on: after
:func:`unpack_run` the out-of-fold predictions are recomputed here on the lossless cache
(:func:`unpack_run` keeps the GPU's test predictions as ``fold*_test.gpu.npz`` and its ``cv``
entries as ``cv_gpu``, so ``lunglens-train`` predicts again with the returned fold checkpoints).

Usage::

    python -m lunglens.training.transport pack-images CACHE.npz OUT.npz [--quality 82]
    python -m lunglens.training.transport unpack-images PACK.npz WORKDIR
    python -m lunglens.training.transport pack-run WORKDIR OUTDIR [--prefix NAME]
    python -m lunglens.training.transport unpack-run WORKDIR TAR...
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np

from lunglens.training.data import save_image_cache

#: The largest file a lent machine sends back (device tool: 16 MB), with room for tar headers.
MAX_RETURN_BYTES = 15_500_000
#: WebP quality of the transported images: the CT cache fits the 64 MiB beside the wheels.
DEFAULT_QUALITY = 82
#: The key of an unpacked cache that says it is a lossy copy (read by :func:`describe`).
PROVENANCE_KEY = "transport"


def pack_images(cache: Path, out: Path, quality: int = DEFAULT_QUALITY) -> dict:
    """Re-encode a pipeline image cache (``images_<size>_<prep>.npz``) as WebP blobs.

    Returns the image count, the sizes and the mean absolute grey-level error of the codec
    (recorded with the run, so its card says what the model trained on).
    """
    z = np.load(cache, allow_pickle=True)
    images = z["images"]
    blobs, errs = [], []
    for im in images:
        ok, buf = cv2.imencode(".webp", im, [cv2.IMWRITE_WEBP_QUALITY, quality])
        back = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else None
        if back is None:
            raise RuntimeError(f"WebP round trip failed for an image of {cache}")
        blobs.append(buf.tobytes())
        errs.append(np.abs(back.astype(np.int16) - im.astype(np.int16)).mean())
    offsets = np.cumsum([0, *(len(b) for b in blobs)])
    np.savez(
        out,
        blob=np.frombuffer(b"".join(blobs), np.uint8),
        offsets=offsets,
        shape=np.array(images.shape),
        labels=z["labels"],
        classes=z["classes"],
        keep=z["keep"],
        quality=np.array(quality),
        mean_abs_error=np.array(np.mean(errs)),
        name=np.array(cache.name),
    )
    return dict(
        images=len(images),
        raw_bytes=int(images.nbytes),
        packed_bytes=out.stat().st_size,
        mean_abs_error=float(np.mean(errs)),
    )


def unpack_images(pack: Path, workdir: Path) -> Path:
    """Decode a :func:`pack_images` file into the pipeline's cache file in ``workdir``.

    The cache carries its provenance (:data:`PROVENANCE_KEY`), so a run trained on it records
    that it trained on a lossy copy.
    """
    z = np.load(pack, allow_pickle=True)
    blob, offsets = z["blob"], z["offsets"]
    images = np.empty(tuple(z["shape"]), np.uint8)
    for i in range(len(images)):
        images[i] = cv2.imdecode(blob[offsets[i] : offsets[i + 1]], cv2.IMREAD_GRAYSCALE)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / str(z["name"])
    note = dict(codec="WebP", quality=int(z["quality"]), mean_abs_error=float(z["mean_abs_error"]))
    save_image_cache(
        path, images, z["labels"], z["classes"], z["keep"], **{PROVENANCE_KEY: json.dumps(note)}
    )
    return path


def describe(cache: Path) -> str | None:
    """What a cache written by :func:`unpack_images` is (a lossy copy), or None for a cache
    decoded from the data set itself."""
    if not cache.exists():
        return None
    with np.load(cache) as z:
        if PROVENANCE_KEY not in z.files:
            return None
        d = json.loads(str(z[PROVENANCE_KEY]))
    return (
        f"a {d['codec']} quality-{d['quality']} copy of the training images "
        f"(mean absolute error {d['mean_abs_error']:.1f} grey levels of 255)"
    )


def _half_checkpoint(path: Path) -> bytes:
    """A ``best.pt`` with its floating-point weights in float16 (the model loads it as float32)."""
    import torch

    ck = torch.load(path, map_location="cpu", weights_only=False)
    ck["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ck["model"].items()}
    ck["transport"] = "float16 weights (lunglens.training.transport)"
    buf = io.BytesIO()
    torch.save(ck, buf)
    return buf.getvalue()


def pack_run(workdir: Path, outdir: Path, prefix: str = "run") -> list[Path]:
    """Tar a run's results into files under :data:`MAX_RETURN_BYTES`.

    Kept: ``state.json``, the folds' test predictions and each run's ``done.json``,
    ``history.json`` and ``best.pt`` (float32 for ``final``, float16 for the CV folds). Left
    out: the image cache and ``last.pt`` (resume state, optimizer included).
    """
    items: list[tuple[str, bytes]] = []
    for p in [workdir / "state.json", *sorted(workdir.glob("fold*_test.npz"))]:
        if p.exists():
            items.append((p.name, p.read_bytes()))
    for run in sorted(d for d in workdir.iterdir() if d.is_dir()):
        for name in ("done.json", "history.json"):
            if (run / name).exists():
                items.append((f"{run.name}/{name}", (run / name).read_bytes()))
        if (run / "best.pt").exists():
            data = (
                (run / "best.pt").read_bytes()
                if run.name == "final"
                else _half_checkpoint(run / "best.pt")
            )
            items.append((f"{run.name}/best.pt", data))
    outdir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    batch: list[tuple[str, bytes]] = []

    def flush() -> None:
        if not batch:
            return
        path = outdir / f"{prefix}-{len(files)}.tar"
        with tarfile.open(path, "w") as tar:
            for name, data in batch:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        files.append(path)
        batch.clear()

    for name, data in items:
        if len(data) > MAX_RETURN_BYTES:
            raise ValueError(f"{name} is {len(data)} bytes, over {MAX_RETURN_BYTES}")
        if sum(len(d) for _, d in batch) + len(data) > MAX_RETURN_BYTES:
            flush()
        batch.append((name, data))
    flush()
    return files


def unpack_run(workdir: Path, tars: list[Path]) -> dict:
    """Extract :func:`pack_run` files into ``workdir`` and make the CV predict again here.

    The GPU machine's fold predictions were made on the lossy copy of the images: they are
    renamed ``*.gpu.npz`` and the state's ``cv`` entries moved to ``cv_gpu``, so the next
    ``lunglens-train`` run predicts each test fold with the returned checkpoint on the
    lossless cache (training is skipped: every finished run has its ``done.json``). Returns
    the state; its ``unfinished`` lists runs that came back without ``done.json`` (cut off
    on the GPU machine: finishing them here means training them here).
    """
    from lunglens.training.pipeline import _json

    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir.resolve()
    for t in tars:
        with tarfile.open(t) as tar:
            members = tar.getmembers()
            for m in members:
                target = (workdir / m.name).resolve()
                if not m.isfile() or root not in target.parents:
                    raise ValueError(f"{t}: unexpected member {m.name!r}")
            for m in members:
                target = workdir / m.name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None  # a regular file (checked above)
                target.write_bytes(src.read())
    for p in workdir.glob("fold*_test.npz"):
        p.replace(p.with_name(p.name.replace(".npz", ".gpu.npz")))
    state_path = workdir / "state.json"
    state = json.loads(state_path.read_text())
    if "cv" in state:
        state["cv_gpu"] = state.pop("cv")
    state_path.write_text(_json(state))
    runs = [d for d in workdir.iterdir() if d.is_dir()]
    state["unfinished"] = sorted(d.name for d in runs if not (d / "done.json").exists())
    return state


def main(argv: list[str] | None = None) -> int:
    """The command line of the module (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m lunglens.training.transport")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack-images")
    a.add_argument("cache", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--quality", type=int, default=DEFAULT_QUALITY)
    b = sub.add_parser("unpack-images")
    b.add_argument("pack", type=Path)
    b.add_argument("workdir", type=Path)
    c = sub.add_parser("pack-run")
    c.add_argument("workdir", type=Path)
    c.add_argument("outdir", type=Path)
    c.add_argument("--prefix", default="run")
    d = sub.add_parser("unpack-run")
    d.add_argument("workdir", type=Path)
    d.add_argument("tars", type=Path, nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "pack-images":
        print(json.dumps(pack_images(args.cache, args.out, args.quality)))
    elif args.cmd == "unpack-images":
        print(unpack_images(args.pack, args.workdir))
    elif args.cmd == "pack-run":
        for f in pack_run(args.workdir, args.outdir, args.prefix):
            print(f, f.stat().st_size)
    else:
        state = unpack_run(args.workdir, args.tars)
        print(f"unpacked into {args.workdir}: {sorted(state)}")
        if state["unfinished"]:
            print(
                f"warning: {', '.join(state['unfinished'])} came back unfinished; "
                "lunglens-train would train them here",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
