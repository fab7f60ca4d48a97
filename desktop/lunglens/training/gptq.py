"""GPTQ weight rounding of a static INT8 (QDQ) ONNX model.

onnxruntime's quantizer rounds every weight to the nearest step of its per-channel grid. With
the 7-bit weights every shipped file must have (:data:`lunglens.training.quantize.WEIGHT_MAX`),
that rounding is most of the INT8 error of EfficientNet-Lite0: the X-ray Lite0 with only its
weights rounded (activations left float, the stem and block 0 float) moved the validation
probabilities by 0.036 on average, the full INT8 file by 0.034 (docs/measurements.md).

GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", section 3, after Frantar & Alistarh 2022, "Optimal Brain
Compression") chooses the rounding instead: for each layer it quantizes the weights one input
column at a time and moves each column's rounding error onto the columns not yet quantized,
weighted by the inverse of the layer's input Hessian ``H = X^T X`` (``X``: the layer's inputs
on calibration images). It minimizes the layer's *output* error on those inputs,
``||W X - Q X||^2``, not the weights' distance, and needs no gradient and no training.

Here it rewrites the int8 weight initializers of a QDQ file that onnxruntime wrote: the grid
(each channel's scale), the int32 biases, the graph, its ops and its speed stay as they are;
only which grid point each weight takes changes, within the same +-``qmax`` (so the 7-bit
contract still holds). Every Conv is covered: the columns are its input patches
(``C/group * kh * kw`` of them), with one Hessian per group (a depthwise Conv: one ``k x k``
Hessian per channel).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

_BATCH = 8
#: Damping added to the Hessian's diagonal, as a share of its mean (GPTQ's ``percdamp``).
DAMP = 0.01


class _QuantWeight(NamedTuple):
    """A quantized Conv's int8 weight initializer and its per-channel scale."""

    weight: str  #: int8 initializer ``[O, C/group, kh, kw]``
    scale: str  #: float scale initializer ``[O]``


def quantized_conv_weights(graph) -> dict[str, _QuantWeight]:
    """Conv nodes whose weight is an int8 initializer behind a per-channel
    ``DequantizeLinear``, by name, in graph order."""
    import onnx

    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    found: dict[str, _QuantWeight] = {}
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in producer:
            continue
        dq = producer[node.input[1]]
        src = inits.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if src is None or src.data_type != onnx.TensorProto.INT8 or dq.input[1] not in inits:
            continue
        if len(inits[dq.input[1]].dims) == 1:  # per-channel (axis 0), the quantizer's default
            found[node.name] = _QuantWeight(dq.input[0], dq.input[1])
    return found


def _conv_attrs(node) -> tuple[int, tuple[int, int], tuple[int, ...]]:
    """``group``, strides and pads ``(top, left, bottom, right)`` of a Conv node."""
    a = {x.name: x for x in node.attribute}
    if "dilations" in a and any(d != 1 for d in a["dilations"].ints):
        raise ValueError(f"{node.name}: dilated Convs are not covered")
    if "auto_pad" in a and a["auto_pad"].s not in (b"", b"NOTSET"):
        raise ValueError(f"{node.name}: auto_pad is not covered")
    group = a["group"].i if "group" in a else 1
    strides = tuple(a["strides"].ints) if "strides" in a else (1, 1)
    pads = tuple(a["pads"].ints) if "pads" in a else (0, 0, 0, 0)
    return group, (int(strides[0]), int(strides[1])), pads


def _patches(x: np.ndarray, kernel: tuple[int, int], strides, pads) -> np.ndarray:
    """Input patches of a Conv: ``[N, C, Ho, Wo, kh, kw]`` (a strided view after padding)."""
    from numpy.lib.stride_tricks import sliding_window_view

    t, left, b, r = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)))
    win = sliding_window_view(xp, kernel, axis=(2, 3))
    return win[:, :, :: strides[0], :: strides[1]]


class _Layer(NamedTuple):
    input: str  #: the Conv's input tensor in the float graph
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, ...]
    group: int


def _accumulate(layer: _Layer, x: np.ndarray) -> np.ndarray:
    """``sum X^T X`` of one batch over the input patches: ``[D, D]`` (``D = C*kh*kw``) for
    ``group == 1``, else ``[G, D, D]`` (``D = C/G*kh*kw``), one per group (a depthwise Conv:
    one per channel, ``D = kh*kw``)."""
    kh, kw = layer.kernel
    n, c = x.shape[:2]
    pointwise = layer.kernel == (1, 1) and layer.strides == (1, 1) and not any(layer.pads)
    if layer.group == 1 and pointwise:  # the pixels are the patches
        pixels = x.transpose(0, 2, 3, 1).reshape(-1, c)
        return pixels.T.astype(np.float64) @ pixels
    p = _patches(x, layer.kernel, layer.strides, layer.pads)  # [N, C, Ho, Wo, kh, kw]
    g = layer.group
    p = p.reshape(n, g, c // g, *p.shape[2:])  # [N, G, C/G, Ho, Wo, kh, kw]
    cols = p.transpose(1, 0, 3, 4, 2, 5, 6).reshape(g, -1, c // g * kh * kw)
    h = np.matmul(cols.transpose(0, 2, 1), cols).astype(np.float64)
    return h[0] if g == 1 else h


def input_hessians(
    fmodel, layers: dict[str, _Layer], images: np.ndarray
) -> Iterator[tuple[str, np.ndarray]]:
    """``(conv name, H)`` for each layer: the sum of ``X^T X`` over the input patches the float
    model gives that layer on uint8 ``images`` ``[N, H, W]``. One forward pass per batch for
    all layers; the sums, not the activations, are kept."""
    from lunglens.training.bias_correction import output_session
    from lunglens.training.quantize import input_batches

    names = sorted({lay.input for lay in layers.values()})
    sess = output_session(fmodel, names)
    sums: dict[str, np.ndarray] = {}
    for x in input_batches(images, _BATCH):
        got = dict(zip(names, sess.run(names, {"image": x}), strict=True))
        for conv, layer in layers.items():
            h = _accumulate(layer, got[layer.input])
            sums[conv] = sums[conv] + h if conv in sums else h
    yield from sums.items()


def gptq_round(
    w: np.ndarray, hessian: np.ndarray, scale: np.ndarray, qmax: int, damp: float = DAMP
) -> np.ndarray:
    """Integer weights ``[O, D]`` within ``+-qmax`` on the grid ``scale`` ``[O]`` that keep
    ``w @ X`` close for the inputs whose ``X^T X`` is ``hessian``.

    ``hessian`` is ``[D, D]`` (shared by the rows) or ``[O, D, D]`` (one per row: a depthwise
    Conv). Each row's columns are taken in order of decreasing ``H_ii`` (GPTQ's "act order":
    the inputs that matter most are rounded first, while the most columns are left to absorb
    the error; without it, rows of a 3x3 depthwise filter came out worse than plain rounding).
    GPTQ is greedy, so a row it leaves with a larger error ``e H e^T`` than rounding to
    nearest does (with clipping at ``qmax``, it can) keeps the nearest rounding: no row is
    worse on the calibration inputs. Inputs that were always zero get weight 0, as in GPTQ.
    """
    w = w.astype(np.float64)
    h = hessian.astype(np.float64)
    hs = h[None] if h.ndim == 2 else h  # [1 or O, D, D]
    d = w.shape[1]
    idx = np.arange(d)
    diag = hs[:, idx, idx]
    dead = diag == 0  # [1 or O, D]
    hs = hs.copy()
    hs[:, idx, idx] = np.where(dead, 1.0, diag)  # a dead input: a unit entry, weight 0
    live_w = np.where(np.broadcast_to(dead, w.shape), 0.0, w)
    order = np.argsort(-hs[:, idx, idx], axis=1, kind="stable")  # [1 or O, D]
    rows = np.arange(len(hs))[:, None]
    hp = hs[rows[:, :, None], order[:, :, None], order[:, None, :]]
    wp = np.take_along_axis(live_w, np.broadcast_to(order, w.shape), axis=1)
    hp[:, idx, idx] += damp * hp[:, idx, idx].mean(axis=1, keepdims=True)
    # upper Cholesky factor of H^-1 (H^-1 = U^T U): U[i, i:] spreads column i's error
    u = np.linalg.cholesky(np.linalg.inv(hp)).transpose(0, 2, 1)
    s = scale.astype(np.float64)
    q = np.empty_like(wp)
    for i in range(d):
        col = wp[:, i]
        qi = np.clip(np.round(col / s), -qmax, qmax)
        q[:, i] = qi
        err = (col - qi * s) / u[:, i, i]
        wp[:, i:] -= err[:, None] * u[:, i, i:]
    out = np.empty_like(q)
    np.put_along_axis(out, np.broadcast_to(order, w.shape), q, axis=1)
    nearest = np.clip(np.round(live_w / s[:, None]), -qmax, qmax)
    worse = _row_errors(w, out, s, h) > _row_errors(w, nearest, s, h)
    out[worse] = nearest[worse]
    return out.astype(np.int8)


def _row_errors(w: np.ndarray, q: np.ndarray, scale: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Each row's ``e H e^T`` with ``e = w - q * scale``: its output error on the inputs."""
    e = w - q * scale[:, None]
    if h.ndim == 2:
        return np.einsum("od,de,oe->o", e, h, e)
    return np.einsum("od,ode,oe->o", e, h, e)


def round_weights(float_path: Path, int8_path: Path, images: np.ndarray) -> dict:
    """Rewrite the int8 Conv weights of ``int8_path`` (in place) by :func:`gptq_round`, each
    layer's Hessian from the inputs the float model ``float_path`` gives it on ``images``.

    Each layer keeps its scale and its range (``qmax``: the largest |int8| the quantizer gave
    it, 64 for 7-bit weights, 127 for 8-bit depthwise ones), so the biases and the file's
    structure are unchanged. Convs are paired between the two graphs by node name.

    Returns
    -------
    what was done, for the manifest: ``convs`` rounded, ``output_error_ratio`` (the median
    over layers of GPTQ's ``||(W - Q) X||^2`` over round-to-nearest's, on the calibration
    inputs), ``images``, ``seconds``.
    """
    import onnx
    from onnx import numpy_helper

    from lunglens.training.bias_correction import check_conv_names

    t0 = time.time()
    qmodel = onnx.load(str(int8_path))
    fmodel = onnx.load(str(float_path))
    check_conv_names(fmodel.graph)
    check_conv_names(qmodel.graph)
    fconvs = {n.name: n for n in fmodel.graph.node if n.op_type == "Conv"}
    finits = {i.name: i for i in fmodel.graph.initializer}
    qinits = {i.name: i for i in qmodel.graph.initializer}
    weights = {k: v for k, v in quantized_conv_weights(qmodel.graph).items() if k in fconvs}
    if len({w.weight for w in weights.values()}) < len(weights):
        # each Conv's rounding is fitted to its own inputs: one tensor cannot take two
        raise ValueError("two INT8 Convs share one weight initializer: cannot round each alone")
    layers: dict[str, _Layer] = {}
    for name in weights:
        node = fconvs[name]
        shape = tuple(finits[node.input[1]].dims)
        kernel = (int(shape[2]), int(shape[3]))
        group, strides, pads = _conv_attrs(node)
        layers[name] = _Layer(node.input[0], kernel, strides, pads, group)
    ratios = []
    for name, h in input_hessians(fmodel, layers, images):
        qw = weights[name]
        wf = numpy_helper.to_array(finits[fconvs[name].input[1]]).astype(np.float64)
        old = numpy_helper.to_array(qinits[qw.weight])
        scale = numpy_helper.to_array(qinits[qw.scale]).astype(np.float64)
        qmax = int(np.abs(old.astype(np.int16)).max(initial=0))
        rows = wf.reshape(len(wf), -1)
        if h.ndim == 3:  # one Hessian per group: each output row gets its group's
            h = np.repeat(h, len(rows) // len(h), axis=0)
        new = gptq_round(rows, h, scale, qmax)
        ratios.append(_error(rows, new, old.reshape(len(old), -1), scale, h))
        qinits[qw.weight].CopyFrom(numpy_helper.from_array(new.reshape(old.shape), qw.weight))
    onnx.save(qmodel, str(int8_path))
    return dict(
        method="GPTQ weight rounding (Frantar et al. 2023), Hessians from float inputs",
        convs=len(ratios),
        output_error_ratio=float(np.median(ratios)) if ratios else 1.0,
        images=len(images),
        seconds=round(time.time() - t0, 1),
    )


def _error(w: np.ndarray, new: np.ndarray, old: np.ndarray, scale, h: np.ndarray) -> float:
    """``||(W - Q_new) X||^2 / ||(W - Q_old) X||^2`` for one layer."""
    base = float(_row_errors(w, old.astype(np.float64), scale, h).sum())
    return float(_row_errors(w, new.astype(np.float64), scale, h).sum()) / base if base else 1.0
