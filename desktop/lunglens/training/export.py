"""Export a trained model to ONNX with the LungLens contract (../shared/DESIGN.md).

Input ``image``: float32 ``[N, 1, H, W]`` in [0, 1] (normalization is inside the model).
Outputs: ``probs`` ``[N, C]`` (softmax), ``cam`` ``[N, C, h, w]`` (classifier weights x last
feature maps: CAM, Zhou et al. 2016, equal to Grad-CAM for a pooling + linear head), and
``act_<k>`` for each gallery layer.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


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
        weight = self.model.classifier.weight  # type: ignore[union-attr]
        cam = torch.einsum("ck,nkhw->nchw", weight, feats)
        return (probs, cam, *[self._acts[n] for n in self.layer_names])


def output_names(model: nn.Module) -> list[str]:
    return ["probs", "cam"] + [f"act_{i}" for i in range(len(model.gallery_layers))]  # type: ignore[arg-type]


def export_onnx(model: nn.Module, size: int, path: Path, opset: int = 17) -> dict:
    """Export and check the graph; returns output shapes for a single image and the max abs
    difference of probabilities between PyTorch and onnxruntime on random and real-like input."""
    import onnx
    import onnxruntime as ort

    wrapper = ContractWrapper(model.cpu()).eval()
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
        ref = [t.numpy() for t in wrapper(x)]
    got = sess.run(names, {"image": x.numpy()})
    diffs = {n: float(np.abs(a - b).max()) for n, a, b in zip(names, ref, got, strict=True)}
    layer_names = wrapper.layer_names
    shapes = {n: list(g.shape[1:]) for n, g in zip(names, got, strict=True)}
    return dict(
        opset=opset,
        max_abs_diff=diffs,
        probs_max_abs_diff=diffs["probs"],
        shapes=shapes,
        gallery=[
            {"output": f"act_{i}", "layer": ln, "shape": shapes[f"act_{i}"]}
            for i, ln in enumerate(layer_names)
        ],
    )


def input_contract(size: int, window: tuple[str, float, float] | None = None) -> dict:
    """The manifest's ``input`` block: what the app feeds the graph (DESIGN.md model contract).

    ``window`` is the CT display window ``(name, center, width)`` the training images were
    rendered with, so the app renders DICOM slices the same way.
    """
    return dict(
        name="image",
        shape=[1, size, size],
        size=[size, size],
        range=[0.0, 1.0],
        dtype="float32",
        window=dict(name=window[0], center=window[1], width=window[2]) if window else None,
        resize="whole image stretched to size (cv2 INTER_AREA), lunglens.preprocess",
        normalization="inside the graph: (x - 0.5) / 0.25",
    )
