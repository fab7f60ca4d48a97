"""A tiny synthetic model that honours the ONNX + manifest contract (docs/model-contract.md).

The weights are chosen by hand so tests can predict the output:

* ``act_0`` channel 0 responds to bright pixels (> 0.5), channel 1 to dark pixels (< 0.5);
* the "covid" feature map is the bright response, the "non-covid" one the dark response;
* so a bright image scores high for ``covid``, a dark one low, and the ``covid`` CAM peaks where a
  bright blob sits in a dark image.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import SHARED_DATA
from lunglens.models.seal import decision_digest

SIZE = 32
CAM = 8
LABELS = ["covid", "non-covid"]


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def build_onnx(size: int = SIZE) -> onnx.ModelProto:
    """Return the synthetic classifier: input ``image`` [N,1,size,size] -> probs, cam, act_0."""
    w1 = np.zeros((4, 1, 3, 3), np.float32)
    w1[0] = 1.0 / 9.0
    w1[1] = -1.0 / 9.0
    w1[2, 0, :, 0], w1[2, 0, :, 2] = -1.0, 1.0
    w1[3] = 0.1
    b1 = np.array([-0.5, 0.5, 0.0, 0.0], np.float32)
    w2 = np.zeros((2, 4, 1, 1), np.float32)
    w2[0, 0] = 1.0
    w2[1, 1] = 1.0
    wfc = np.array([[8.0, 0.0], [0.0, 8.0]], np.float32)
    bfc = np.zeros(2, np.float32)
    pool = size // CAM
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["act_0"]),
        helper.make_node(
            "AveragePool", ["act_0"], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]
        ),
        helper.make_node("Conv", ["pooled", "w2"], ["f_pre"]),
        helper.make_node("Relu", ["f_pre"], ["feats"]),
        helper.make_node("GlobalAveragePool", ["feats"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("Conv", ["feats", "wcam"], ["cam"]),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 2, CAM, CAM]),
            helper.make_tensor_value_info("act_0", TensorProto.FLOAT, ["N", 4, size, size]),
        ],
        [
            _init("w1", w1),
            _init("b1", b1),
            _init("w2", w2),
            _init("wfc", wfc),
            _init("bfc", bfc),
            _init("wcam", wfc.reshape(2, 2, 1, 1)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(
    folder: Path,
    *,
    name: str = "synthetic-ct",
    modality: str = "ct",
    version: str = "0.0.1",
    size: int = SIZE,
    seal: bool = True,
    **manifest_extra: Any,
) -> Path:
    """Write ``folder/{model.onnx, manifest.json, MODEL_CARD.md}``; return ``folder``. The
    manifest is sealed (``decision_sha256``) as the training module seals it, unless ``seal``
    is false (a manifest from before seals)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = build_onnx(size).SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "architecture": "synthetic brightness detector (tests only)",
        "modality": modality,
        "labels": LABELS,
        "positive_label": "covid",
        "input": {
            "name": "image",
            "shape": [1, size, size],
            "size": [size, size],
            "range": [0.0, 1.0],
            "window": {"name": "lung", "center": -600, "width": 1500},
        },
        "outputs": {
            "probs": {"shape": ["N", 2]},
            "cam": {"shape": ["N", 2, CAM, CAM], "layer": "head"},
            "gallery": [{"output": "act_0", "layer": "conv1", "shape": [4, size, size]}],
        },
        "file": "model.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "threshold": 0.5,
        "threshold_rule": "fixed at 0.5 for tests",
        "intended_use": "tests only",
        "series_aggregation": {"method": "top_k_mean", "k": 3},
    }
    if "input_preprocessing" in manifest_extra:
        manifest["input"]["preprocessing"] = manifest_extra.pop("input_preprocessing")
    manifest.update(manifest_extra)
    if seal:
        manifest["decision_sha256"] = decision_digest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (folder / "MODEL_CARD.md").write_text("# synthetic\nTests only.\n", encoding="utf-8")
    return folder


def rewrite_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` into ``folder`` sealed again, as the training module would: for tests
    that change a decision field to reach a check other than the seal's."""
    manifest = {k: v for k, v in manifest.items() if k != "decision_sha256"}
    manifest["decision_sha256"] = decision_digest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def make_models_dir(root: Path, modality_check: bool = False) -> Path:
    """A models folder with a CT and a CXR synthetic model (and, if asked, a modality check)."""
    write_model(root / "synthetic-ct", name="synthetic-ct", modality="ct")
    write_model(root / "synthetic-cxr", name="synthetic-cxr", modality="cxr")
    if modality_check:
        write_modality_check(root / "synthetic-modality")
    return root


def write_modality_check(folder: Path) -> Path:
    """The brightness detector as a modality check: bright images "look like" X-rays, dark ones
    like CT; a flat image at 1.0 or 0.0 gets p = 0.98 (confident), one at 0.5 gets p = 0.5."""
    return write_model(
        folder,
        name="synthetic-modality",
        modality="any",
        task="modality-check",
        labels=["cxr", "ct"],
        positive_label="cxr",
        warn_probability=0.9,
    )


def blob_image(
    h: int = 64, w: int = 64, center: tuple[int, int] = (16, 44), radius: int = 6
) -> np.ndarray:
    """Dark float image in [0, 1] with one bright disc at ``center`` (row, col)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w), 0.1, np.float32)
    img[(yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2] = 0.95
    return img


def textured(value: float, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 image of grey level ``value`` with a gentle left-to-right ramp (+-0.06).

    Stands for a synthetic "scan" of that brightness: a perfectly flat image is blank, which the
    chest-image gate refuses (lunglens.inference.gate), so fixtures that must be scored carry
    this much structure.
    """
    ramp = np.linspace(-0.06, 0.06, shape[-1], dtype=np.float32)
    return np.clip(np.full(shape, value, np.float32) + ramp, 0.0, 1.0)


def write_png(path: Path, value: float, size: int = 32) -> Path:
    """A grey PNG of brightness ``value`` in [0, 1] (:func:`textured`); brighter -> higher
    ``covid`` probability."""
    from PIL import Image

    arr = np.round(textured(value, (size, size)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


NO_PIXEL_DICOM = SHARED_DATA / "dicom" / "ct-misc" / "no-pixel-data.dcm"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """Write one broken file per failure mode; return ``{file name: expected error code}``.

    The 20000x20000 PNG is crafted (IHDR + a tiny IDAT, 100 bytes), so the test never allocates
    the 400-megapixel image: the reader must refuse it from the header.
    """
    import io
    import os
    import struct
    import zlib

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = (rng.random((64, 64)) * 255).astype(np.uint8)
    (folder / "zero-byte.png").write_bytes(b"")
    for fmt, name in (("PNG", "truncated.png"), ("JPEG", "truncated.jpg")):
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, fmt)
        data = buf.getvalue()
        (folder / name).write_bytes(data[: len(data) // 2])
    (folder / "random.dcm").write_bytes(os.urandom(4096))
    (folder / "text.png").write_text("this is not an image\n", encoding="utf-8")
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)
    (folder / "huge.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 2501))
        + _png_chunk(b"IEND", b"")
    )
    return {
        "zero-byte.png": "CorruptFile",
        "truncated.png": "CorruptFile",
        "truncated.jpg": "CorruptFile",
        "random.dcm": "CorruptFile",
        "text.png": "CorruptFile",
        "huge.png": "ImageTooLarge",
    }


SLOW_SITECUSTOMIZE = """
import os, time
from lunglens.inference import engine as _engine
_orig = _engine.Engine.predict
def _slow(self, batch, outputs=("probs",), **kwargs):
    time.sleep(float(os.environ.get("LUNGLENS_TEST_DELAY_S", "0.05")) * len(batch))
    return _orig(self, batch, outputs, **kwargs)
_engine.Engine.predict = _slow
"""


def slow_env(tmp: Path, delay_s: float = 0.05) -> dict[str, str]:
    """Environment for a subprocess whose model takes ``delay_s`` per image.

    A ``sitecustomize.py`` on ``PYTHONPATH`` wraps ``Engine.predict``, so the real
    ``python -m lunglens`` entry point runs unchanged (no test hooks in the product).
    """
    import os

    hook = tmp / "slowhook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SLOW_SITECUSTOMIZE, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH", "")]))
    env["LUNGLENS_TEST_DELAY_S"] = str(delay_s)
    return env


def retag(src: Path, dst: Path, **attrs: Any) -> Path:
    """Copy the DICOM file ``src`` to ``dst`` with the given attributes (tags) replaced."""
    import pydicom

    ds = pydicom.dcmread(src)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(dst)
    return dst
