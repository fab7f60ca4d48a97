"""Empirical bias correction of a static INT8 (QDQ) ONNX model.

Rounding weights and activations to 8 bits shifts the *mean* of a layer's output, and the
shift accumulates layer after layer: on the shipped EfficientNet-Lite0 CT model every INT8
decision that differed from float's (11 of 919) went the same way, P rose past the threshold.
Nagel et al. 2019 ("Data-Free Quantization Through Weight Equalization and Bias Correction",
section 4.2, "empirical bias correction") remove it: for each quantized layer, in order, the
per-channel mean of its output on calibration images is measured in the float and in the
quantized model, and the difference is taken off the layer's bias. Layer by layer, so that each
correction also absorbs what the corrected layers upstream still pass on; correcting every layer
at once from one measurement counts an upstream shift twice (tried: the error grew each pass).

The QDQ model keeps each Conv bias as an int32 initializer dequantized with scale
``s_input * s_weight[c]``; the correction rewrites those integers, so the file's structure,
its ops and its speed are unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

_BATCH = 16


class _QuantBias(NamedTuple):
    """A quantized Conv's output tensor and the initializers of its int32 bias."""

    output: str
    bias: str  #: int32 initializer (quantized bias)
    scale: str  #: its per-channel float scale


def quantized_conv_biases(graph) -> dict[str, _QuantBias]:
    """Conv nodes whose bias is an int32 initializer behind a ``DequantizeLinear``, by name,
    in graph (topological) order."""
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    found: dict[str, _QuantBias] = {}
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or node.input[2] not in producer:
            continue
        dq = producer[node.input[2]]
        if dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            found[node.name] = _QuantBias(node.output[0], dq.input[0], dq.input[1])
    return found


def output_session(model, outputs: Sequence[str]):
    """An onnxruntime session of a copy of ``model`` whose graph outputs are ``outputs`` (float
    tensors inside the graph): how the INT8 tools read a layer's input or output."""
    import onnx

    from lunglens.inference.engine import open_session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    float32 = onnx.TensorProto.FLOAT
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, float32, None) for n in outputs)
    # the app's options, which log errors only: a cut-down graph leaves initializers unused
    return open_session(m.SerializeToString())


def channel_means(model, outputs: Sequence[str], images: np.ndarray) -> list[np.ndarray]:
    """Per-channel means of ``outputs`` (NCHW tensors) over uint8 ``images`` ``[N, H, W]``,
    with those tensors made graph outputs of a copy of ``model``."""
    from lunglens.training.quantize import input_batches  # here: quantize imports this module

    sess = output_session(model, outputs)
    sums: list[np.ndarray] = []
    count = 0
    for x in input_batches(images, _BATCH):
        got = [a.astype(np.float64) for a in sess.run(list(outputs), {"image": x})]
        part = [a.mean(axis=(2, 3)).sum(axis=0) for a in got]  # each tensor has its own H, W
        sums = [s + q for s, q in zip(sums, part, strict=True)] if sums else part
        count += len(x)
    return [s / count for s in sums]


def _up_to(model, output: str):
    """A copy of ``model`` with only the nodes ``output`` depends on (the graph runs no
    further than the layer being measured). ``onnx.utils.Extractor`` would do this but needs
    shape information for every tensor, which a QDQ graph's renamed tensors lack."""
    import onnx

    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    needed: set[int] = set()
    stack = [output]
    while stack:
        i = producer.get(stack.pop())
        if i is not None and i not in needed:
            needed.add(i)
            stack.extend(nodes[i].input)
    part = onnx.ModelProto()
    part.CopyFrom(model)
    del part.graph.node[:]
    part.graph.node.extend(nodes[i] for i in sorted(needed))
    return part


def check_conv_names(graph) -> None:
    """Convs are paired between the float and the INT8 graph by node name: every Conv needs
    one, and a distinct one (an unnamed or repeated name would pair the wrong layers)."""
    names = [n.name for n in graph.node if n.op_type == "Conv"]
    if "" in names or len(set(names)) < len(names):
        raise ValueError(f"graph {graph.name!r}: Conv nodes need unique, non-empty names")


def correct_biases(float_path: Path, int8_path: Path, images: np.ndarray) -> dict:
    """Rewrite the int32 Conv biases of ``int8_path`` (in place) so that each quantized
    Conv's per-channel output mean on ``images`` matches the float model's.

    ``float_path`` is the float graph the INT8 file was quantized from (same Conv node names).
    Each Conv is measured on the INT8 graph cut down to that Conv, after the Convs before it
    were corrected.

    Returns
    -------
    what was done, for the manifest: ``convs`` corrected, ``mean_abs_shift`` (the mean over
    layers of the mean |per-channel output shift| removed), ``images``, ``seconds``.
    """
    import onnx
    from onnx import numpy_helper

    t0 = time.time()
    qmodel = onnx.load(str(int8_path))
    fmodel = onnx.load(str(float_path))
    check_conv_names(fmodel.graph)
    check_conv_names(qmodel.graph)
    float_out = {n.name: n.output[0] for n in fmodel.graph.node if n.op_type == "Conv"}
    biases = {k: b for k, b in quantized_conv_biases(qmodel.graph).items() if k in float_out}
    if len({b.bias for b in biases.values()}) < len(biases):
        raise ValueError("two INT8 Convs share one bias initializer: cannot correct each alone")
    targets = channel_means(fmodel, [float_out[k] for k in biases], images)
    inits = {i.name: i for i in qmodel.graph.initializer}
    shifts = []
    for qb, target in zip(biases.values(), targets, strict=True):
        # The graph up to this Conv, with the corrections so far (they live in `inits`).
        (mean,) = channel_means(_up_to(qmodel, qb.output), [qb.output], images)
        shift = mean - target
        bias = numpy_helper.to_array(inits[qb.bias]).astype(np.int64)
        scale = numpy_helper.to_array(inits[qb.scale]).astype(np.float64)
        fixed = np.clip(bias - np.round(shift / scale), -(2**31), 2**31 - 1).astype(np.int32)
        inits[qb.bias].CopyFrom(numpy_helper.from_array(fixed, qb.bias))
        shifts.append(float(np.abs(shift).mean()))
    onnx.save(qmodel, str(int8_path))
    return dict(
        method="empirical bias correction, layer by layer (Nagel et al. 2019, section 4.2)",
        convs=len(shifts),
        mean_abs_shift=float(np.mean(shifts)) if shifts else 0.0,
        images=len(images),
        seconds=round(time.time() - t0, 1),
    )
