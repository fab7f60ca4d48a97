"""Move a training run between this machine and a lent GPU machine, within a transfer budget.

A lent GPU machine (see ``docs/training.md``, "Training on a lent GPU") receives at most 64 MiB
and sends back at most 8 files of 16 MB. The CT training cache at 224 px is 231 MB of uint8, so
it travels as WebP (quality 85: 42 MB for 4,597 slices), and a run comes back as a few tar files
with the fold checkpoints in float16 (the final model stays float32: it is the one exported).

Lossy transport changes what the GPU trains on, not what the numbers here are measured on: after
:func:`unpack_run` the out-of-fold predictions are recomputed here on the lossless cache
(:func:`unpack_run` drops the GPU's ``cv`` entries and test predictions, so ``lunglens-train``
predicts again with the returned fold checkpoints).

Usage::

    python -m lunglens.training.transport pack-images CACHE.npz OUT.npz [--quality 85]
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

#: The largest file a lent machine sends back (device tool: 16 MB), with room for tar headers.
MAX_RETURN_BYTES = 15_500_000


def pack_images(cache: Path, out: Path, quality: int = 85) -> dict:
    """Re-encode a pipeline image cache (``images_<size>_<prep>.npz``) as WebP blobs.

    Returns the sizes and the encoding error (mean and max absolute grey-level difference).
    """
    z = np.load(cache, allow_pickle=True)
    images = z["images"]
    blobs, errs = [], []
    for im in images:
        ok, buf = cv2.imencode(".webp", im, [cv2.IMWRITE_WEBP_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"WebP encoding failed for an image of {cache}")
        blobs.append(buf.tobytes())
        back = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        if back is None:
            raise RuntimeError(f"WebP decoding failed for an image of {cache}")
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
    """Decode a :func:`pack_images` file into the pipeline's cache file in ``workdir``."""
    z = np.load(pack, allow_pickle=True)
    blob, offsets = z["blob"], z["offsets"]
    images = np.empty(tuple(z["shape"]), np.uint8)
    for i in range(len(images)):
        images[i] = cv2.imdecode(blob[offsets[i] : offsets[i + 1]], cv2.IMREAD_GRAYSCALE)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / str(z["name"])
    np.savez(path, images=images, labels=z["labels"], classes=z["classes"], keep=z["keep"])
    provenance(path).write_text(
        json.dumps(
            dict(
                codec="WebP",
                quality=int(z["quality"]),
                mean_abs_error=float(z["mean_abs_error"]),
            )
        )
    )
    return path


def provenance(cache: Path) -> Path:
    """The file beside an unpacked image cache that says it is a lossy copy: the pipeline
    records it with the run (``state.json`` ``trained_on.images``) and the card states it."""
    return cache.with_name(cache.name.replace(".npz", ".transport.json"))


def describe(cache: Path) -> str | None:
    """ "WebP quality Q copy ..." for a cache :func:`unpack_images` wrote, else None."""
    p = provenance(cache)
    if not p.exists():
        return None
    d = json.loads(p.read_text())
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


def pack_run(workdir: Path, outdir: Path, prefix: str = "run", light: bool = False) -> list[Path]:
    """Tar a run's results into files under :data:`MAX_RETURN_BYTES`.

    Kept: ``state.json``, the small ``.npz`` files and each run's ``done.json``,
    ``history.json`` and ``best.pt`` (float32 for ``final``, float16 for the CV folds). Left
    out: the image cache and ``last.pt`` (resume state, optimizer included). ``light``: the
    final model in float16 and no fold checkpoints (a second run within the return budget).
    """
    items: list[tuple[str, bytes]] = []
    for p in sorted(workdir.glob("*.json")) + sorted(workdir.glob("fold*_test.npz")):
        items.append((p.name, p.read_bytes()))
    for run in sorted(d for d in workdir.iterdir() if d.is_dir()):
        for name in ("done.json", "history.json"):
            if (run / name).exists():
                items.append((f"{run.name}/{name}", (run / name).read_bytes()))
        if (run / "best.pt").exists() and not (light and run.name != "final"):
            data = (
                (run / "best.pt").read_bytes()
                if run.name == "final" and not light
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
    lossless cache (training is skipped: every run has its ``done.json``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir.resolve()
    for t in tars:
        with tarfile.open(t) as tar:
            for m in tar.getmembers():
                target = (workdir / m.name).resolve()
                if not m.isfile() or root not in target.parents:
                    raise ValueError(f"{t}: unexpected member {m.name!r}")
            tar.extractall(workdir, filter="data")
    for p in workdir.glob("fold*_test.npz"):
        p.replace(p.with_name(p.name.replace(".npz", ".gpu.npz")))
    state_path = workdir / "state.json"
    state = json.loads(state_path.read_text())
    if "cv" in state:
        state["cv_gpu"] = state.pop("cv")
    state_path.write_text(json.dumps(state, indent=1))
    return state


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lunglens.training.transport")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack-images")
    a.add_argument("cache", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--quality", type=int, default=85)
    b = sub.add_parser("unpack-images")
    b.add_argument("pack", type=Path)
    b.add_argument("workdir", type=Path)
    c = sub.add_parser("pack-run")
    c.add_argument("workdir", type=Path)
    c.add_argument("outdir", type=Path)
    c.add_argument("--prefix", default="run")
    c.add_argument("--light", action="store_true", help="final model only, in float16")
    d = sub.add_parser("unpack-run")
    d.add_argument("workdir", type=Path)
    d.add_argument("tars", type=Path, nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "pack-images":
        print(json.dumps(pack_images(args.cache, args.out, args.quality)))
    elif args.cmd == "unpack-images":
        print(unpack_images(args.pack, args.workdir))
    elif args.cmd == "pack-run":
        for f in pack_run(args.workdir, args.outdir, args.prefix, args.light):
            print(f, f.stat().st_size)
    else:
        state = unpack_run(args.workdir, args.tars)
        print(f"unpacked into {args.workdir}: {sorted(state)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
