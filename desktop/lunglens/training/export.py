"""Export a trained model to ONNX with the LungLens contract (docs/model-contract.md).

Input ``image``: float32 ``[N, 1, H, W]`` in [0, 1] (normalization is inside the model).
Outputs: ``probs`` ``[N, C]`` (softmax), ``cam`` ``[N, C, h, w]`` (classifier weights x last
feature maps: CAM, Zhou et al. 2016, equal to Grad-CAM for a pooling + linear head), and
``act_<k>`` for each gallery layer.

The exported graph computes exactly the trained function but is written for onnxruntime's CPU
kernels (:func:`inference_graph`): measured on the shipped CT SqueezeNet, onnxruntime's ``Elu``
kernel took 39% of an INT8 batch, 13x slower per element than its ``Exp``.
"""

from __future__ import annotations

import copy
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lunglens.preprocess import IDENTITY, Preprocessing


def _elu_as_exp(self: nn.ELU, x: torch.Tensor) -> torch.Tensor:
    # ELU(x) = x for x > 0, alpha * (exp(x) - 1) otherwise (Clevert et al. 2016), written as
    # max(x, alpha * (exp(min(x, 0)) - 1)): Min/Exp/Sub/Max have vectorized onnxruntime kernels,
    # Elu has not. Exact for 0 <= alpha <= 1 up to float rounding (exp(x) - 1 vs expm1: < 1e-7):
    # for x <= 0, f(x) = alpha * (exp(x) - 1) - x has f(0) = 0 and f' = alpha * exp(x) - 1 <= 0,
    # so the max picks the ELU branch; for x > 0 the second term is 0. For alpha > 1 it would not
    # (near 0, alpha * x < x), so such ELUs are left alone.
    neg = torch.exp(torch.clamp(x, max=0.0)) - 1.0
    if self.alpha != 1.0:
        neg = neg * self.alpha
    return torch.maximum(x, neg)


def _transposed_conv_as_pixel_shuffle(
    self: nn.ConvTranspose2d, x: torch.Tensor, output_size: list[int] | None = None
) -> torch.Tensor:
    # With kernel == stride and no padding the output blocks do not overlap:
    # y[o, s*i + a, s*j + b] = sum_c x[c, i, j] * W[c, o, a, b] + bias[o], i.e. a 1x1 conv to
    # C_out * s * s channels followed by a depth-to-space (ONNX DepthToSpace, mode CRD). The 1x1
    # conv gets onnxruntime's INT8 kernel, which ConvTranspose lacks.
    if output_size is not None:  # an explicit size may add output padding: the original op
        return nn.ConvTranspose2d.forward(self, x, output_size)
    s = self.stride[0]
    w = self.weight.permute(1, 2, 3, 0).reshape(-1, self.in_channels, 1, 1)
    b = None if self.bias is None else self.bias.repeat_interleave(s * s)
    return F.pixel_shuffle(F.conv2d(x, w, b), s)


def _is_block_transposed_conv(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.ConvTranspose2d)
        and m.kernel_size == m.stride
        and m.kernel_size[0] == m.kernel_size[1]
        and m.padding == (0, 0)
        and m.output_padding == (0, 0)
        and m.dilation == (1, 1)
        and m.groups == 1
    )


#: Rewrites applied by :func:`inference_graph`: (name, applies to module, replacement forward).
GRAPH_REWRITES = (
    ("elu_as_min_exp_max", lambda m: isinstance(m, nn.ELU) and 0 <= m.alpha <= 1, _elu_as_exp),
    (
        "block_transposed_conv_as_conv_depth_to_space",
        _is_block_transposed_conv,
        _transposed_conv_as_pixel_shuffle,
    ),
)


def inference_graph(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` whose modules compute the same function with faster ONNX ops.

    The copy shares no state with ``model`` (training is unaffected); forward hooks and
    ``gallery_layers`` keep working because modules are kept and only their ``forward`` is
    replaced. Returns the copy and the names of the rewrites that applied (for the manifest).
    """
    model = copy.deepcopy(model)
    applied: list[str] = []
    for module in model.modules():
        for name, applies, forward in GRAPH_REWRITES:
            if applies(module):
                module.forward = types.MethodType(forward, module)
                if name not in applied:
                    applied.append(name)
    return model, applied


class ContractWrapper(nn.Module):
    """Runs the model once and returns probs, cam and the gallery activations."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        layers: dict[str, nn.Module] = getattr(model, "gallery_layers")  # noqa: B009
        self.layer_names = list(layers)
        self._acts: dict[str, torch.Tensor] = {}
        for name, module in layers.items():
            module.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def fn(_m, _inp, out):
            self._acts[name] = out

        return fn

    def forward(self, image: torch.Tensor):
        feats = self.model.features(image)  # type: ignore[operator]
        logits = self.model.classifier(feats.mean((2, 3)))  # type: ignore[operator]
        probs = torch.softmax(logits, 1)
        weight: torch.Tensor = self.model.classifier.weight  # type: ignore[union-attr,assignment]
        # cam[n, c] = sum_k w[c, k] * feats[n, k]: a 1x1 convolution (one fused kernel in
        # onnxruntime; the equivalent Einsum costs two transposes and a batched MatMul).
        cam = F.conv2d(feats, weight[:, :, None, None])
        return (probs, cam, *[self._acts[n] for n in self.layer_names])


def output_names(model: nn.Module) -> list[str]:
    return ["probs", "cam"] + [f"act_{i}" for i in range(len(model.gallery_layers))]  # type: ignore[arg-type]


#: Largest difference between the ONNX graph and the trained PyTorch model that export accepts,
#: relative to each output's scale (max |output|, at least 1): float rounding of the rewritten
#: ops is ~1e-6; a wrong rewrite or export is off by far more.
EXPORT_TOLERANCE = 1e-4


def export_onnx(model: nn.Module, size: int, path: Path, opset: int = 17) -> dict:
    """Export and check the graph against the trained model; returns output shapes for a single
    image and the max abs difference of every output between PyTorch and onnxruntime.

    Raises
    ------
    RuntimeError
        If an output differs by more than ``EXPORT_TOLERANCE`` (relative): the file is not
        shipped by a pipeline that stops here.
    """
    import onnx
    import onnxruntime as ort

    fast, rewrites = inference_graph(model.cpu().eval())
    wrapper = ContractWrapper(fast).eval()
    names = output_names(model)
    x = torch.rand(2, 1, size, size)
    dyn = {"image": {0: "N"}, **{n: {0: "N"} for n in names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (x,),
            str(path),
            input_names=["image"],
            output_names=names,
            dynamic_axes=dyn,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    wrapper.eval()  # export restores the wrapper's (training) mode; compare in eval mode
    onnx.checker.check_model(str(path), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        # the reference is the model as trained (not the rewritten copy): the check covers the
        # rewrites too
        ref = [t.numpy() for t in ContractWrapper(copy.deepcopy(model).eval())(x)]
    got = sess.run(names, {"image": x.numpy()})
    diffs = {n: float(np.abs(a - b).max()) for n, a, b in zip(names, ref, got, strict=True)}
    scale = {n: max(1.0, float(np.abs(a).max())) for n, a in zip(names, ref, strict=True)}
    bad = {n: d for n, d in diffs.items() if d > EXPORT_TOLERANCE * scale[n]}
    if bad:
        raise RuntimeError(
            f"ONNX export of {path.name} differs from the PyTorch model: {bad} "
            f"(tolerance {EXPORT_TOLERANCE} x max |output|)"
        )
    layer_names = wrapper.layer_names
    shapes = {n: list(g.shape[1:]) for n, g in zip(names, got, strict=True)}
    return dict(
        opset=opset,
        graph_rewrites=rewrites,
        max_abs_diff=diffs,
        probs_max_abs_diff=diffs["probs"],
        shapes=shapes,
        gallery=[
            {"output": f"act_{i}", "layer": ln, "shape": shapes[f"act_{i}"]}
            for i, ln in enumerate(layer_names)
        ],
    )


def input_contract(
    size: int,
    window: tuple[str, float, float] | None = None,
    prep: Preprocessing = IDENTITY,
    norm: tuple[float, float] = (0.5, 0.25),
) -> dict:
    """The manifest's ``input`` block: what the app feeds the graph (docs/model-contract.md).

    ``window`` is the CT display window ``(name, center, width)`` the training images were
    rendered with, so the app renders DICOM slices the same way; ``prep`` is the crop and
    intensity step (:func:`lunglens.preprocess.model_view`) the app must apply before resizing.
    """
    return dict(
        name="image",
        shape=[1, size, size],
        size=[size, size],
        range=[0.0, 1.0],
        dtype="float32",
        window=dict(name=window[0], center=window[1], width=window[2]) if window else None,
        preprocessing=prep.to_manifest(),
        resize="view stretched to size (cv2 INTER_AREA): preprocess.model_input_with_boxes",
        normalization=f"inside the graph: (x - {norm[0]}) / {norm[1]}",
    )
