"""Static INT8 quantization (QDQ, per-channel weights) with onnxruntime, and a parity check.

``quant_pre_process`` (shape inference + graph optimization) first, then ``quantize_static``
with a calibration reader over a few hundred *training* images. Ops that do not gain from INT8
on the CPU or that lose accuracy (the softmax / CAM / activation outputs, and any op listed in
``keep_float``) stay in float; the report says which.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


class _Reader:
    """onnxruntime CalibrationDataReader over uint8 images ``[N, H, W]``."""

    def __init__(self, images: np.ndarray, batch: int = 16) -> None:
        self._it: Iterator[dict] = (
            {"image": (images[i : i + batch].astype(np.float32) / 255.0)[:, None]}
            for i in range(0, len(images), batch)
        )

    def get_next(self):
        return next(self._it, None)


def _output_ops(model_path: Path, outputs: Sequence[str]) -> list[str]:
    """Nodes that produce the contract's outputs other than feature activations we want INT8."""
    import onnx

    m = onnx.load(str(model_path))
    keep = []
    for node in m.graph.node:
        if node.op_type in {"Softmax", "Einsum", "MatMul", "Gemm"} or set(node.output) & {
            "probs",
            "cam",
        }:
            keep.append(node.name)
    return keep


def quantize_model(
    fp32_path: Path,
    int8_path: Path,
    calib_images: np.ndarray,
    method: str = "MinMax",
    keep_float_ops: Sequence[str] = (),
    per_channel: bool = True,
) -> dict:
    """Quantize ``fp32_path`` to ``int8_path``; returns what was done (for the manifest)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        exclude = _output_ops(pre, ["probs", "cam"])
        import onnx

        op_types = sorted({n.op_type for n in onnx.load(str(pre)).graph.node} - set(keep_float_ops))
        # ConvTranspose stays float: onnxruntime has no INT8 ConvTranspose kernel, so QDQ would
        # only add a weight dequantization per run (measured slower than float).
        quant_ops = [
            o
            for o in op_types
            if o in {"Conv", "MaxPool", "Concat", "GlobalAveragePool", "ReduceMean", "Add", "Mul"}
        ]
        t0 = time.time()
        quantize_static(
            str(pre),
            str(int8_path),
            _Reader(calib_images),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
            nodes_to_exclude=exclude,
            op_types_to_quantize=quant_ops,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return dict(
        scheme="static QDQ, activations uint8 asymmetric, weights int8 symmetric"
        + (" per-channel" if per_channel else " per-tensor"),
        calibration_method=method,
        calibration_images=len(calib_images),
        quantized_op_types=quant_ops,
        float_nodes=exclude,
        float_op_types=sorted(set(op_types) - set(quant_ops)),
        seconds=round(time.time() - t0, 1),
    )


def onnx_probs(path: Path, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """``probs`` from an ONNX file for uint8 images ``[N, H, W]`` (only that output is asked)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = [
        sess.run(["probs"], {"image": (images[i : i + batch].astype(np.float32) / 255.0)[:, None]})[
            0
        ]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out)


def parity(
    fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray, positive: int, threshold: float
) -> dict:
    """INT8 vs float: decision agreement and accuracy change on the same images."""
    from lunglens.training.metrics import decide

    d32, d8 = decide(fp32, positive, threshold), decide(int8, positive, threshold)
    return dict(
        n=len(labels),
        agreement=float((d32 == d8).mean()),
        accuracy_float=float((d32 == labels).mean()),
        accuracy_int8=float((d8 == labels).mean()),
        accuracy_change_points=float(((d8 == labels).mean() - (d32 == labels).mean()) * 100),
        max_abs_prob_diff=float(np.abs(fp32 - int8).max()),
        mean_abs_prob_diff=float(np.abs(fp32 - int8).mean()),
    )
