"""Static INT8 quantization (QDQ, per-channel weights) with onnxruntime, and a parity check.

``quant_pre_process`` (shape inference + graph optimization) first, then ``quantize_static``
with a calibration reader over a few hundred *training* images. Ops that do not gain from INT8
on the CPU or that lose accuracy (the softmax / CAM / activation outputs, and any op listed in
``keep_float``) stay in float; the report says which.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lunglens.training.bias_correction import correct_biases
from lunglens.training.gptq import round_weights

_BATCH = 16  # calibration batch size
#: Bytes of activations onnxruntime's histogram calibrators (Percentile, Entropy) may hold at
#: once. They keep every calibrated tensor of every calibration batch until the end (and copy
#: the largest while making its histogram: measured peaks about 1.25x this): EfficientNet-Lite0
#: at 224 px about 53 MB an image (16 GB for 300 images), the SqueezeNets at 224 px 44 MB,
#: Lite2 at 260 px 102 MB (30 GB), which the 24 GB training machine could not hold (the kernel
#: killed the run). A bigger model's histogram calibration uses as many whole batches of images
#: as fit (Lite2 at 260 px: 144), and its card says how many. MinMax keeps only each tensor's
#: minimum and maximum per batch, so it always calibrates on every image. The shipped models'
#: recipes stay under this and calibrate on every image as before.
CALIB_MEMORY = 16e9

#: Largest |int8| weight an INT8 file may hold: 7-bit weights (onnxruntime's ``reduce_range``).
#: x86 CPUs without VNNI (AVX2 and AVX-512 before Cascade Lake / Ice Lake, Zen 1-3: most clinic
#: laptops) multiply uint8 activations by int8 weights with VPMADDUBSW, which adds each pair
#: of products into a *saturating* int16 (onnxruntime's quantization guide; Intel oneDNN,
#: "Nuances of int8 computations"). 255 * (|w1| + |w2|) stays within 32767 only when
#: |w| <= 64. With full-range weights the X-ray Lite0 1.0.1 agreed with float on 100% of its
#: validation decisions on this VNNI machine and lost one under an emulated Haswell CPU (a
#: COVID-flagged X-ray, P 0.284, fell to 0.159; max |dp| against the same file here 0.24);
#: the 7-bit file gives the same probabilities on both (docs/measurements.md).
#: Depthwise convolutions are exempt (:func:`quantize_model`'s ``depthwise_8bit``): MLAS runs
#: them on depthwise kernels that form exact 32-bit products, which cannot saturate.
WEIGHT_MAX = 64


def input_batches(images: np.ndarray, batch: int = _BATCH) -> Iterator[np.ndarray]:
    """uint8 images ``[N, H, W]`` as the graphs' ``image`` input (float32 ``[b, 1, H, W]`` in
    [0, 1]), ``batch`` at a time."""
    for i in range(0, len(images), batch):
        yield (images[i : i + batch].astype(np.float32) / 255.0)[:, None]


class _Reader:
    """onnxruntime CalibrationDataReader over uint8 images ``[N, H, W]``."""

    def __init__(self, images: np.ndarray, batch: int = _BATCH) -> None:
        self._it: Iterator[dict] = ({"image": x} for x in input_batches(images, batch))

    def get_next(self):
        return next(self._it, None)


_QUANTIZABLE = frozenset(
    {"Conv", "MaxPool", "Concat", "GlobalAveragePool", "ReduceMean", "Add", "Mul", "Clip", "Relu"}
)


def _output_ops(graph, outputs: Sequence[str]) -> list[str]:
    """Nodes that produce ``outputs`` (probabilities, CAM) or the head ops before them: they
    stay float, unlike the feature activations."""
    return [
        node.name
        for node in graph.node
        if node.op_type in {"Softmax", "Einsum", "MatMul", "Gemm"}
        or set(node.output) & set(outputs)
    ]


def _first_convs_and_before(graph, n_convs: int, already: set[str]) -> list[str]:
    """Names of the nodes up to and including the ``n_convs``-th ``Conv`` (ONNX graphs are
    topologically sorted, so these are the layers nearest the input)."""
    if n_convs <= 0:
        return []
    names: list[str] = []
    seen = 0
    for node in graph.node:
        if node.name not in already:
            names.append(node.name)
        seen += node.op_type == "Conv"
        if seen == n_convs:
            break
    return names


def quantize_model(
    fp32_path: Path,
    int8_path: Path,
    calib_images: np.ndarray,
    method: str = "MinMax",
    keep_float_ops: Sequence[str] = (),
    per_channel: bool = True,
    float_first_convs: int = 0,
    float_prefixes: Sequence[str] = (),
    bias_correction: bool = False,
    depthwise_8bit: bool = False,
    gptq: bool = False,
) -> dict:
    """Quantize ``fp32_path`` to ``int8_path``; returns what was done (for the manifest).

    Weights are int8 symmetric within +-:data:`WEIGHT_MAX` (7 bits), so the integer arithmetic
    is exact on every x86 CPU and the parity measured here holds on the clinic's laptop.
    ``depthwise_8bit`` gives the depthwise convolutions (one input channel per output channel)
    the full int8 range: onnxruntime's depthwise kernels (MLAS's symmetric depthwise kernel,
    and ``qdwconv``) form exact 32-bit products, so they cannot saturate, and a 3x3 or 5x5
    depthwise filter has too few taps per channel to average a coarser grid out. On the CT
    Lite0 (21 Convs float) 8-bit depthwise weights raised decision agreement with float from
    99.13% to 99.67% (919 validation slices), and the file gave bit-identical probabilities
    under an emulated Haswell CPU (docs/measurements.md).

    ``float_first_convs`` keeps the graph's first N ``Conv`` nodes (and every node before the
    last of them) in float: the full-resolution stem and first blocks, where a per-tensor
    uint8 activation scale costs a MobileNet-style network most (Nagel et al. 2019, "Data-Free
    Quantization Through Weight Equalization and Bias Correction", section 3) at a small share
    of the compute. ``float_prefixes`` keeps every node whose name starts with one of them in
    float (a block of the network, e.g. ``/blocks/blocks.1/``): the layers a sensitivity scan
    found to cost the most agreement. ``bias_correction`` then removes the mean shift each
    quantized Conv adds to its output (:mod:`lunglens.training.bias_correction`), measured on
    the calibration images.

    ``gptq`` chooses each Conv weight's rounding on its grid (GPTQ, Frantar et al. 2023:
    :mod:`lunglens.training.gptq`) instead of taking the nearest grid point, before any bias
    correction: the grid, the 7-bit range and the graph stay the same. On the X-ray Lite0 with
    only the stem and block 0 float it halved the mean |dp| against float (0.034 -> 0.019).
    """
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
        import onnx

        graph = onnx.load(str(pre)).graph
        exclude = _output_ops(graph, ["probs", "cam"])
        exclude += _first_convs_and_before(graph, float_first_convs, set(exclude))
        exclude += [
            n.name
            for n in graph.node
            if n.name not in exclude and any(n.name.startswith(p) for p in float_prefixes)
        ]
        op_types = sorted({n.op_type for n in graph.node})
        # ConvTranspose stays float: onnxruntime has no INT8 ConvTranspose kernel, so QDQ would
        # only add a weight dequantization per run (measured slower than float).
        # Clip (ReLU6) and Relu are listed so the quantizer gives a Conv the range of its
        # activation's output (Conv + Clip fuse into one QLinearConv): left float, the Conv's
        # output was quantized over its whole pre-activation range, and EfficientNet-Lite0
        # agreed with float on 75-89% of decisions; with them, 99.75% (same model, 400 images).
        quant_ops = [o for o in op_types if o in _QUANTIZABLE and o not in keep_float_ops]
        if method != "MinMax":
            # The histogram calibrators stack each tensor's batches into one array, so every
            # batch must have the same size: drop the incomplete last one.
            calib_images = calib_images[: len(calib_images) // _BATCH * _BATCH or len(calib_images)]
        range_images = calib_images  # MinMax holds two numbers per tensor and batch
        if method != "MinMax":
            range_images = _calibration_images(graph, calib_images, quant_ops)
        options = {"ActivationSymmetric": False, "WeightSymmetric": True}
        t0 = time.time()

        def run(out: Path, reduce_range: bool) -> None:
            quantize_static(
                str(pre),
                str(out),
                _Reader(range_images),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method),
                nodes_to_exclude=exclude,
                op_types_to_quantize=quant_ops,
                # True: weights within +-WEIGHT_MAX, no int16 saturation without VNNI
                reduce_range=reduce_range,
                extra_options=options,
            )

        run(int8_path, reduce_range=True)
        if depthwise_8bit:
            # The same calibration again with 8-bit weights (MinMax and the histogram methods
            # are deterministic, so every activation scale is the same); the depthwise
            # Convs' weights and biases are taken from it.
            full = Path(tmp) / "full.onnx"
            run(full, reduce_range=False)
            depthwise_8bit = _take_depthwise_weights(int8_path, full) > 0
        rounded = round_weights(pre, int8_path, calib_images) if gptq else None
        corrected = correct_biases(pre, int8_path, calib_images) if bias_correction else None
    w_max, dw_max = int8_weight_maxima(int8_path)
    if w_max > WEIGHT_MAX:  # the quantizer's contract, checked on what it wrote
        raise RuntimeError(f"{int8_path.name}: an int8 weight of {w_max} exceeds {WEIGHT_MAX}")
    return dict(
        scheme="static QDQ, activations uint8 asymmetric, weights int8 symmetric"
        + (" per-channel" if per_channel else " per-tensor")
        + f" within +-{WEIGHT_MAX} (7 bits: exact on x86 CPUs without VNNI)"
        + (", depthwise Convs 8 bits (a kernel that cannot saturate)" if depthwise_8bit else ""),
        weight_max_abs=w_max,
        depthwise_weight_max_abs=dw_max,
        depthwise_8bit=depthwise_8bit,
        calibration_method=method,
        calibration_images=len(range_images),  # after trimming to whole batches and memory
        quantized_op_types=quant_ops,
        float_nodes=exclude,
        float_first_convs=float_first_convs,
        float_prefixes=list(float_prefixes),
        weight_rounding=rounded,
        bias_correction=corrected,
        float_op_types=sorted(set(op_types) - set(quant_ops)),
        seconds=round(time.time() - t0, 1),
    )


def calibrated_bytes(graph, op_types: Sequence[str]) -> int:
    """Bytes a histogram calibrator holds per image: the float inputs and outputs of the nodes of
    ``op_types`` (onnxruntime calibrates the tensors of the op types it quantizes) in a
    shape-inferred graph, batch dimension taken as 1."""
    sizes = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.elem_type == 1:  # FLOAT
            sizes[info.name] = 4 * int(np.prod([max(1, d.dim_value) for d in tensor.shape.dim]))
    weights = {w.name for w in graph.initializer}
    names = {
        name
        for node in graph.node
        if node.op_type in op_types
        for name in (*node.input, *node.output)
        if name and name not in weights
    }
    return sum(sizes.get(name, 0) for name in names)


def _calibration_images(graph, images: np.ndarray, op_types: Sequence[str]) -> np.ndarray:
    """The images the activation ranges are calibrated on: all of them, or as many whole
    batches as keep the calibrator within :data:`CALIB_MEMORY` (at least one batch)."""
    per_image = max(1, calibrated_bytes(graph, op_types))
    if per_image * len(images) <= CALIB_MEMORY:
        return images
    return images[: max(_BATCH, int(CALIB_MEMORY // per_image) // _BATCH * _BATCH)]


def _is_depthwise(node, weight_shape: Sequence[int]) -> bool:
    """A Conv onnxruntime's QLinearConv runs on MLAS's depthwise kernels (the symmetric one,
    or ``qdwconv``): ``group`` equal to the output channels, one input channel per group."""
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    shape = list(weight_shape)
    return len(shape) == 4 and shape[1] == 1 and group == shape[0] > 1


def has_depthwise_convs(path: Path) -> bool:
    """Whether a float ONNX file has a depthwise Conv (EfficientNet-Lite does, SqueezeNet not):
    without one, a ``depthwise_8bit`` recipe is the 7-bit recipe again."""
    import onnx

    graph = onnx.load(str(path)).graph
    shapes = {t.name: t.dims for t in graph.initializer}
    return any(
        _is_depthwise(n, shapes[n.input[1]])
        for n in graph.node
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in shapes
    )


def _depthwise_weight_dqs(graph) -> dict[str, bool]:
    """``DequantizeLinear`` node name -> whether it feeds a depthwise Conv's weight or bias."""
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    kinds: dict[str, bool] = {}
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        dqs = [producer.get(i) for i in node.input[1:]]
        w_dq = dqs[0]
        if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in inits:
            continue  # a float Conv
        depthwise = _is_depthwise(node, inits[w_dq.input[0]].dims)
        for dq in dqs:
            if dq is not None and dq.op_type == "DequantizeLinear":
                kinds[dq.name] = depthwise
    return kinds


def _take_depthwise_weights(int8_path: Path, full_path: Path) -> int:
    """Copy the depthwise Convs' quantized weights and biases (with their scales and zero
    points) from ``full_path`` into ``int8_path``; returns how many initializers were replaced.

    The two files must be the same graph with the same activation scales (only the Conv
    weights and biases may differ): checked, since the copied int32 biases are scaled by the
    activation scale they were quantized with.
    """
    import onnx

    model = onnx.load(str(int8_path))
    full = {t.name: t for t in onnx.load(str(full_path)).graph.initializer}
    kinds = _depthwise_weight_dqs(model.graph)
    params = {i for n in model.graph.node if n.name in kinds for i in n.input}
    names = {i for n in model.graph.node if kinds.get(n.name) for i in n.input}
    replaced = 0
    for t in model.graph.initializer:
        if t.name not in params and t != full.get(t.name):
            raise RuntimeError(f"{full_path.name}: {t.name} differs from the 7-bit file's")
        if t.name in names and t.name in full:
            t.CopyFrom(full[t.name])
            replaced += 1
    onnx.save(model, str(int8_path))
    return replaced


def int8_weight_maxima(path: Path) -> tuple[int, int]:
    """Largest |value| of the int8 weights of an INT8 (QDQ) file (the signed initializers that
    a ``DequantizeLinear`` turns into a weight), outside and inside depthwise Convs, from one
    read of the file. :data:`WEIGHT_MAX` or less for the first means the file computes the
    same on CPUs with and without VNNI (depthwise Convs run on kernels that cannot saturate);
    0 where the file holds no such weight."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    kinds = _depthwise_weight_dqs(graph)
    largest = [0, 0]  # others, depthwise
    for node in graph.node:
        src = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if src is None or src.data_type != onnx.TensorProto.INT8:
            continue
        w = numpy_helper.to_array(src).astype(np.int16)
        k = int(kinds.get(node.name, False))
        largest[k] = max(largest[k], int(np.abs(w).max(initial=0)))
    return largest[0], largest[1]


def int8_weight_max(path: Path, depthwise: bool = False) -> int:
    """:func:`int8_weight_maxima` of the depthwise Convs when ``depthwise``, of every other op
    otherwise."""
    return int8_weight_maxima(path)[int(depthwise)]


def onnx_probs(path: Path, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """``probs`` from an ONNX file for uint8 images ``[N, H, W]`` (only that output is asked),
    in a session opened as the app opens it (``engine.open_session``)."""
    from lunglens.inference.engine import open_session  # onnxruntime only when scoring

    sess = open_session(path)
    out = [sess.run(["probs"], {"image": x})[0] for x in input_batches(images, batch)]
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


class QuantCandidate(NamedTuple):
    """One INT8 recipe the search measures."""

    method: str  #: onnxruntime calibration method: MinMax, Percentile or Entropy
    keep_float: tuple[str, ...] = ()  #: op types left in float
    float_first_convs: int = 0  #: the first N Conv layers (and what precedes them) left float
    bias_correction: bool = False  #: per-channel output means matched to float, layer by layer
    #: quantized from the quantization-aware fine-tuned copy of the float model
    #: (:mod:`lunglens.training.qat`), scored against the original float model
    qat: bool = False
    #: depthwise Conv weights in 8 bits, the others in 7 (``quantize_model``'s ``depthwise_8bit``)
    depthwise_8bit: bool = False
    #: weights rounded by GPTQ, not to the nearest grid point (``quantize_model``'s ``gptq``)
    gptq: bool = False


# Candidates tried, in order, by ``search_quantization``: every quantizable op in INT8 with two
# calibration methods; then the layers nearest the input left in float, increasingly (for
# EfficientNet-Lite0, 3 Convs are the stem and block 0, 9 add stage 1, 15 stage 2, 21 half of
# stage 3: on the CT model, stem and stages 0-1 in float cut the mean |dp| against float from
# 0.023 to 0.006, at about 0.8 ms per image); then ``Mul`` in float, which in EfficientNet-B*
# is both halves of SiLU (x * sigmoid(x)) and the squeeze-and-excitation gate, sigmoid outputs
# in [0, 1] next to unbounded activations, where a per-tensor uint8 scale loses accuracy.
# Last, the float-stem recipes again with empirical bias correction: on CT 1.1.0 at its shipped
# threshold 0.0945 every one of the 11 decisions MinMax + 21 float Convs flipped went the same
# way (P up); corrected, 2 flipped (15 float Convs: 13 -> 5). With more layers in INT8 the
# error is noise more than a shift, and the correction did not help (9 float Convs: 6 -> 17
# flips; none: 23 -> 31). Then the float-stem recipes with the depthwise Convs' weights in 8
# bits, the rest in 7 (``depthwise_8bit``): on the CT Lite0, 21 float Convs, agreement 99.13% ->
# 99.67%; with 9 float Convs it went the other way (97.39% -> 96.74%),
# so the search measures it rather than assuming it. Last, the 3-, 9- and 15-Conv recipes with
# GPTQ weight rounding (``gptq``): 7-bit weights, 8-bit depthwise, 8-bit depthwise with bias
# correction. Rounding, not the activations, was most of the INT8 error (X-ray Lite0, stem and
# block 0 float: weights alone rounded to nearest moved P by 0.036 on average, the whole INT8
# file by 0.034); GPTQ halved it, and on the X-ray Lite0 the 3-Conv recipe with 8-bit
# depthwise weights and bias correction flipped 0 of 155 decisions (nearest rounding: 2); on
# the CT Lite0 the 15-Conv one 3 of 919 (nearest: 12), 9 Convs 9-16 (docs/measurements.md).
QUANT_CANDIDATES: tuple[QuantCandidate, ...] = (
    QuantCandidate("MinMax"),
    QuantCandidate("Percentile"),
    QuantCandidate("MinMax", float_first_convs=3),
    QuantCandidate("MinMax", float_first_convs=9),
    QuantCandidate("Percentile", float_first_convs=9),
    QuantCandidate("MinMax", float_first_convs=15),
    QuantCandidate("Percentile", float_first_convs=15),
    QuantCandidate("MinMax", float_first_convs=21),
    QuantCandidate("MinMax", ("Mul",)),
    QuantCandidate("MinMax", float_first_convs=15, bias_correction=True),
    QuantCandidate("MinMax", float_first_convs=21, bias_correction=True),
    QuantCandidate("MinMax", float_first_convs=3, depthwise_8bit=True),
    QuantCandidate("MinMax", float_first_convs=9, depthwise_8bit=True),
    QuantCandidate("MinMax", float_first_convs=15, depthwise_8bit=True),
    QuantCandidate("MinMax", float_first_convs=21, depthwise_8bit=True),
    *(
        QuantCandidate(
            "MinMax", float_first_convs=n, bias_correction=bc, depthwise_8bit=dw8, gptq=True
        )
        for n in (3, 9, 15)
        for dw8, bc in ((False, False), (True, False), (True, True))
    ),
)


#: Tried after ``QUANT_CANDIDATES`` by a preset with quantization-aware fine-tuning
#: (``Preset.qat_epochs``): MinMax over the fine-tuned weights with only the stem and block 0
#: in float, the fast graph that plain calibration cannot make agree (the first 3 Conv layers,
#: on the X-ray Lite0: 97.4% agreement post-training, 98.1% after QAT; CT 98.4% and 98.9%;
#: docs/measurements.md).
QAT_CANDIDATE = QuantCandidate("MinMax", float_first_convs=3, qat=True)


class Validation(NamedTuple):
    """The validation fold a quantization is scored on, against the float model."""

    images: np.ndarray  #: uint8 ``[N, H, W]``
    labels: np.ndarray  #: class indices ``[N]``
    positive: int  #: index of the class the threshold is for
    p32: np.ndarray  #: the float model's probabilities on ``images``
    choose_threshold: Callable[[np.ndarray, np.ndarray], float]  #: ``(y_positive, p_positive)``


def quantize_and_score(
    fp32_path: Path,
    int8_path: Path,
    calib_images: np.ndarray,
    val: Validation,
    candidate: QuantCandidate,
) -> tuple[dict, np.ndarray, float]:
    """Quantize one way, then score the INT8 file on the validation fold against the float one.

    The threshold is ``val.choose_threshold`` applied to the INT8 model's probabilities (what
    ships): the validation fold's own for a first pass, the shipped one once the CV set it.

    ``fp32_path`` is the model the INT8 file is made from (for a ``qat`` candidate, the
    fine-tuned copy); ``val.p32`` are the probabilities of the float model it must agree with.

    Returns
    -------
    report (with ``parity_validation_fold``), INT8 validation probabilities, threshold
    """
    q = quantize_model(
        fp32_path,
        int8_path,
        calib_images,
        method=candidate.method,
        keep_float_ops=candidate.keep_float,
        float_first_convs=candidate.float_first_convs,
        bias_correction=candidate.bias_correction,
        depthwise_8bit=candidate.depthwise_8bit,
        gptq=candidate.gptq,
    )
    p8 = onnx_probs(int8_path, val.images)
    y_pos = (val.labels == val.positive).astype(int)
    thr = float(val.choose_threshold(y_pos, p8[:, val.positive]))
    q["parity_validation_fold"] = parity(val.p32, p8, val.labels, val.positive, thr)
    return q, p8, thr


def _single_image_ms(path: Path, image: np.ndarray, runs: int = 20) -> float:
    """Median latency (ms) of one ``probs`` call on one image: a tie-breaker, not a benchmark."""
    from lunglens.inference.engine import open_session

    sess = open_session(path)
    x = (image.astype(np.float32) / 255.0)[None, None]
    sess.run(["probs"], {"image": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(["probs"], {"image": x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


#: Single-image latencies within this share of the fastest qualifying recipe count as equal:
#: the same graph timed twice on a busy 2-core machine differs by about this much (a corrected
#: and an uncorrected recipe have the same graph), so agreement, not timing noise, decides.
LATENCY_TOLERANCE = 0.05


def _graph_key(trial: Mapping[str, Any]) -> tuple:
    """What decides a trial's ops: the op types and the first Convs it left in float."""
    return tuple(trial["kept_float"]), trial["float_first_convs"]


def graph_latencies(trials: Sequence[Mapping[str, Any]]) -> list[float]:
    """Each trial's single-image latency as :func:`choose_trial` compares it: the median
    ``single_image_ms`` of the trials that share its graph (:func:`_graph_key`)."""
    timings: dict[tuple, list[float]] = {}
    for t in trials:
        timings.setdefault(_graph_key(t), []).append(t["single_image_ms"])
    return [float(np.median(timings[_graph_key(t)])) for t in trials]


def choose_trial(
    trials: Sequence[Mapping[str, Any]],
    min_agreement: float = 0.995,
    max_accuracy_loss: float = 0.5,
    tolerance: float = LATENCY_TOLERANCE,
) -> int:
    """Index of the recipe to ship, from the measured ``trials`` alone.

    Of the trials that agree with float on at least ``min_agreement`` of the decisions and
    lose at most ``max_accuracy_loss`` accuracy points, those within ``tolerance`` of the
    fastest; of them the highest agreement, then the smallest max |dp|, then the earliest.
    When none qualifies, the highest agreement (the earliest on ties).

    A trial's latency is its *graph's*: the median timing of the trials that share its float
    layers (``kept_float``, ``float_first_convs``). Calibration, weight rounding, bias
    correction and 8-bit depthwise weights change numbers, not ops, so timing noise must not
    separate them: in the X-ray Lite0's search one graph timed 2.24 ms in one trial and 3.80
    ms in another, which ruled out the one with the smaller error. The median, not the
    minimum: a graph tried in more recipes would otherwise look faster by noise alone.
    """
    ok = [
        i
        for i, t in enumerate(trials)
        if t["agreement"] >= min_agreement and t["accuracy_change_points"] >= -max_accuracy_loss
    ]
    if not ok:
        return max(range(len(trials)), key=lambda i: (trials[i]["agreement"], -i))
    ms = graph_latencies(trials)
    fastest = min(ms[i] for i in ok)
    near = [i for i in ok if ms[i] <= fastest * (1 + tolerance)]
    return min(near, key=lambda i: (-trials[i]["agreement"], trials[i]["max_abs_prob_diff"], i))


def search_quantization(
    fp32_path: Path,
    int8_path: Path,
    calib_images: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    positive: int,
    choose_threshold,
    min_agreement: float = 0.995,
    max_accuracy_loss: float = 0.5,
    candidates: Sequence[tuple] = QUANT_CANDIDATES,
    qat_fp32: Callable[[int], Path] | None = None,
) -> tuple[dict, np.ndarray, np.ndarray, float]:
    """Try calibration methods and float-op sets; keep the one that holds accuracy.

    Each candidate is quantized, then scored on the validation fold against the float model
    (decision agreement at the threshold ``choose_threshold`` gives, accuracy change, max
    |dp|, single-image latency); :func:`choose_trial` picks one from those measurements. Every
    trial is returned in the report (``trials``, ``chosen_trial``) so the manifest shows why
    the shipped recipe won. A ``qat`` candidate is quantized from ``qat_fp32(float_first_convs)``
    (the float model fine-tuned with INT8 simulated, those first convolutions left float) and
    scored against the original float model like the others.

    Returns
    -------
    report, fp32 validation probabilities, INT8 validation probabilities, threshold
    """
    if not has_depthwise_convs(fp32_path):  # those recipes would repeat the 7-bit ones
        candidates = [c for c in candidates if not QuantCandidate(*c).depthwise_8bit]
    p32 = onnx_probs(fp32_path, val_images)
    val = Validation(val_images, val_labels, positive, p32, choose_threshold)
    trials: list[dict] = []
    results: list[tuple[dict, np.ndarray, float, Path]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, cand in enumerate(candidates):
            method, keep, n_float, corrected, qat, dw8, gptq = cand = QuantCandidate(*cand)
            if qat and qat_fp32 is None:
                raise ValueError(f"candidate {cand} needs qat_fp32, the fine-tuned float model")
            source = qat_fp32(n_float) if qat and qat_fp32 else fp32_path
            path = Path(tmp) / f"cand{i}.onnx"
            q, p8, thr = quantize_and_score(source, path, calib_images, val, cand)
            par = q["parity_validation_fold"]
            trials.append(
                dict(
                    calibration_method=method,
                    kept_float=list(keep),
                    float_first_convs=n_float,
                    bias_correction=corrected,
                    qat=qat,
                    depthwise_8bit=dw8,
                    gptq=gptq,
                    agreement=par["agreement"],
                    accuracy_change_points=par["accuracy_change_points"],
                    max_abs_prob_diff=par["max_abs_prob_diff"],
                    single_image_ms=round(_single_image_ms(path, val_images[0]), 2),
                    seconds=q["seconds"],
                )
            )
            results.append((q, p8, thr, path))
        chosen = choose_trial(trials, min_agreement, max_accuracy_loss)
        report, p8, thr, path = results[chosen]
        int8_path.write_bytes(path.read_bytes())
    report["chosen_trial"] = chosen
    report["selection"] = (
        f"of {len(candidates)} candidates, those with agreement >= {min_agreement:.1%} with the "
        f"float model and accuracy loss <= {max_accuracy_loss} points on the validation fold; "
        f"of them the ones within {LATENCY_TOLERANCE:.0%} of the fastest (single image; a "
        "graph's timing is the median over the trials with the same float layers), then the "
        "highest agreement, then the smallest max |dp|; the highest agreement if none qualifies"
    )
    report["trials"] = trials
    return report, p32, p8, thr
