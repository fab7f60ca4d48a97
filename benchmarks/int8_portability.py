"""Does a shipped INT8 file give the same probabilities on a CPU without VNNI?

Usage: ``python benchmarks/int8_portability.py [MODEL] [--images 40] [--cpu Haswell]``

onnxruntime multiplies uint8 activations by int8 weights with VPMADDUBSW on x86 CPUs without
VNNI (AVX2, and AVX-512 before Cascade Lake / Ice Lake): each pair of products is added into a
saturating int16, so a file whose weights use the full int8 range can compute differently on
such a laptop than on the machine that measured its parity (with VNNI, VPDPBUSD adds into
int32). This script runs the model's ``probs`` on ``--images`` real scans of its training data
here and again under ``qemu-x86_64 -cpu <model>`` (user-mode emulation: the CPUID onnxruntime
sees is that CPU's, so it picks the kernels a laptop with it would), then prints the largest
probability difference and how many triage decisions (P >= the manifest's threshold) differ.
The float file is run the same way as the control: its difference measures the emulator, not
the quantization. Emulation is slow (about 6 s per INT8 image, 25 s per float image, on 2 cores).

Needs ``qemu-user`` (Debian/Ubuntu: ``apt-get install qemu-user``, QEMU 7.2 or later for AVX2).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def probs(path: str, images: np.ndarray, disabled: list[str], threads: int = 2) -> np.ndarray:
    """The ``probs`` output of an ONNX file on model-input images ``[N, 1, H, W]``, with the
    onnxruntime transformers the app turns off (``engine.DISABLED_OPTIMIZERS``) off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(
        path, so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )
    return np.concatenate(
        [sess.run(["probs"], {"image": images[i : i + 8]})[0] for i in range(0, len(images), 8)]
    )


def child(inputs: str, out: str, files: list[str]) -> None:
    """Runs under the emulator: numpy + onnxruntime only (no lunglens import, for speed)."""
    from numpy._core._multiarray_umath import __cpu_features__ as feats

    given = np.load(inputs)
    x, disabled = given["images"], [str(n) for n in given["disabled"]]
    seen = [k for k in ("AVX2", "AVX512F", "AVX512_CLX", "AVX512_ICL") if feats.get(k)]
    print(f"emulated CPU features: {', '.join(seen) or 'none of AVX2 / AVX-512'}", flush=True)
    result = {}
    for i, f in enumerate(files):
        t0 = time.time()
        result[f"p{i}"] = probs(f, x, disabled)
        print(f"  {Path(f).name}: {time.time() - t0:.0f} s under emulation", flush=True)
    np.savez(out, **result)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_quantization import folder, real_images

    from lunglens.inference.engine import DISABLED_OPTIMIZERS
    from lunglens.models.manifest import ModelManifest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="efficientnet-lite-cxr")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--cpu", default="Haswell", help="QEMU CPU model without VNNI")
    ap.add_argument("--no-float", action="store_true", help="skip the float control (4x slower)")
    args = ap.parse_args()
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("qemu-x86_64 not found: apt-get install qemu-user (QEMU >= 7.2)")
    d = folder(args.model)
    # read as the app reads it: a manifest edited after its seal is refused
    manifest = ModelManifest.read(d / "manifest.json").to_dict()
    images = real_images(manifest, args.images, manifest["input"]["size"])
    files = [str(d / "model.onnx")] + ([] if args.no_float else [str(d / "model_fp32.onnx")])
    pos = manifest["labels"].index(manifest["positive_label"])
    thr = float(manifest["threshold"])
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, images=images, disabled=np.array(DISABLED_OPTIMIZERS))
        cmd = [qemu, "-cpu", args.cpu, sys.executable, __file__, "--child", str(inp), str(out)]
        run = subprocess.run([*cmd, *files], capture_output=True, text=True)
        print("".join(line + "\n" for line in run.stdout.splitlines()), end="")
        if run.returncode:
            sys.exit(f"emulated run failed ({run.returncode}):\n{run.stderr[-2000:]}")
        emulated = np.load(out)
        print(
            f"model {args.model} {manifest['version']} ({manifest['sha256'][:12]}), "
            f"{len(images)} images, threshold {thr:.4f}, here vs emulated {args.cpu}:"
        )
        for i, f in enumerate(files):
            here, there = probs(f, images, list(DISABLED_OPTIMIZERS)), emulated[f"p{i}"]
            flips = int(((here[:, pos] >= thr) != (there[:, pos] >= thr)).sum())
            print(
                f"  {Path(f).name}: max |dp| {np.abs(here - there).max():.2e}, mean |dp| "
                f"{np.abs(here - there).mean():.2e}, triage decisions that differ {flips} of "
                f"{len(images)}, top class differs {int((here.argmax(1) != there.argmax(1)).sum())}"
            )


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        main()
