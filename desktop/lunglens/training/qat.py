"""Quantization-aware fine-tuning: make a trained float model robust to onnxruntime's INT8.

Post-training quantization of EfficientNet-Lite with per-tensor uint8 activations flips 2-3% of
the triage decisions against the float model (docs/measurements.md); keeping the early,
high-resolution blocks in float closes that but takes away most of the speed-up. The standard
answer is a short fine-tune with the quantization simulated in the forward pass (Jacob et al.
2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", section 3), here as *distillation from the float model itself*: the student is a
copy of the trained model with

* BatchNorm folded into the convolutions (what the ONNX export does), so the simulated weight
  quantization sees the same weights onnxruntime quantizes;
* every convolution's weights fake-quantized per output channel, int8 symmetric within
  -64..64, as ``quantize_static(..., per_channel=True, reduce_range=True,
  WeightSymmetric=True)`` does (``quantize.WEIGHT_MAX``: exact on CPUs without VNNI);
* every activation onnxruntime quantizes (each Conv + activation output, each residual sum)
  fake-quantized to uint8 over its calibrated min/max (MinMax, the shipped calibration);

and its loss is the KL divergence from the float model's class probabilities on training
images. Gradients pass the rounding straight through (Bengio et al. 2013). What is learned is
weights whose quantized network decides like the float one; the float model the CV validated
stays the reference, and the INT8 file is then made from the fine-tuned weights by the same
onnxruntime static quantization as before (``quantize.quantize_model``), scored against the
*original* float model.

Measured (issue 13, the recipe search's ``QAT_CANDIDATE``: first 3 Convs float, 6 epochs): it
halves the INT8 error of that fast graph (X-ray validation KL 0.0085 -> 0.0036; CT 1.1.3, with
the simulation as the file is built: mean |dp| 0.0307 -> 0.0152, 21 -> 16 flipped decisions of
919) but does not reach the 99.5% decision agreement a shipped file needs, so the post-training
recipes with more float layers stay shipped (docs/measurements.md).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from lunglens.training.quantize import WEIGHT_MAX

_ACT_LEVELS = 255  # uint8 activations
_W_MAX = WEIGHT_MAX  # int8 symmetric weights within -64..64, the grid of every INT8 file


class _WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 fake quantization of a conv weight (a parametrization:
    the optimizer updates the float weight, the forward pass sees its quantized copy)."""

    def __init__(self) -> None:
        super().__init__()
        #: off while activation ranges are calibrated: onnxruntime calibrates the float model
        self.enabled = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        scale = w.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-12) / _W_MAX
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -_W_MAX, _W_MAX)


class _ActivationFakeQuant:
    """A forward hook: observes a module's output range (calibration), then fake-quantizes it to
    uint8 over that range, as onnxruntime's QuantizeLinear/DequantizeLinear pair does."""

    def __init__(self) -> None:
        self.lo = 0.0
        self.hi = 0.0
        self.observing = True

    def __call__(self, _m: nn.Module, _inp, out: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.lo = min(self.lo, float(out.detach().min()))
            self.hi = max(self.hi, float(out.detach().max()))
            return out
        # the range always holds 0 (onnxruntime: rmin = min(0, min), rmax = max(0, max))
        scale = max(self.hi - self.lo, 1e-8) / _ACT_LEVELS
        zero = round(-self.lo / scale)
        return torch.fake_quantize_per_tensor_affine(out, scale, zero, 0, _ACT_LEVELS)


def _conv_bn_pairs(model: nn.Module) -> Iterator[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Each Conv2d directly followed (in module order) by the BatchNorm that normalizes it."""
    for parent in model.modules():
        children = list(parent.children())
        for a, b in itertools.pairwise(children):
            if (
                isinstance(a, nn.Conv2d)
                and isinstance(b, nn.BatchNorm2d)
                and b.num_features == a.out_channels
            ):
                yield a, b


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm into the conv before it, in place; the BatchNorm module
    stays (timm's ``BatchNormAct2d`` also holds the activation) but becomes the identity.
    Returns the number of folded pairs."""
    n = 0
    for conv, bn in _conv_bn_pairs(model):
        assert bn.running_var is not None and bn.running_mean is not None
        g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(g.reshape(-1, 1, 1, 1))
        bias = bn.bias - bn.running_mean * g
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.clone())
        else:
            conv.bias.copy_(conv.bias * g + bias)
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(1 - eps + eps) = x
        n += 1
    return n


def _activation_modules(model: nn.Module, float_convs: int) -> list[nn.Module]:
    """The modules whose outputs onnxruntime quantizes: every BatchNorm (+ activation) of an
    INT8 conv, every block that ends in a residual sum (timm ``has_skip``) with an INT8 conv
    in it, and, of the float layers, only the BatchNorm of the last float conv, whose output
    the first INT8 conv reads.

    ``quantize_model(float_first_convs=N)`` leaves the first N convs and what precedes them
    in float, so the tensors between them carry no QuantizeLinear; only the input of the first
    INT8 op does. Simulating the float layers' outputs too (as this module once did) made the
    simulation flip 34 of 919 CT validation decisions where onnxruntime's file flips 21 (first
    3 convs float, mean |dp| between them 0.016); without them 22 (docs/measurements.md).

    Exact only where the float layers end at a block boundary without a residual sum (for
    EfficientNet-Lite 1 or 3 float convs: the stem, then the first block, which has no skip;
    ``QAT_CANDIDATE`` uses 3). Where they end inside a block with a skip, or at the end of one,
    onnxruntime also quantizes both inputs of that INT8 residual Add, one of them read by float
    convs too (found by comparing the files' QuantizeLinear inputs with these hooks): refused
    (``ValueError``) rather than simulated wrongly. Everywhere else the last float conv's
    output is what the first INT8 conv reads.
    """
    pairs = list(_conv_bn_pairs(model))
    skips = [m for m in model.modules() if getattr(m, "has_skip", False)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    float_ids = {id(c) for c in convs[:float_convs]}
    int8: list[nn.Module] = [b for c, b in pairs if id(c) not in float_ids]
    int8 += [m for m in skips if any(id(c) not in float_ids for c in m.modules() if c in convs)]
    if not float_convs or float_convs >= len(convs):
        return int8
    straddling = [m for m in skips if m in int8 and any(id(c) in float_ids for c in m.modules())]
    last_float = convs[float_convs - 1]
    ends_skip = [m for m in skips if any(c is last_float for c in m.modules())]
    if straddling or ends_skip:
        raise ValueError(
            f"float_convs={float_convs} ends inside or at the end of a block with a residual "
            "sum: the simulation is exact only at a block boundary without one (1 or 3 for "
            "EfficientNet-Lite)"
        )
    return [next(b for c, b in pairs if c is last_float), *int8]


class _InputFakeQuant:
    """A forward pre-hook: the classifier's input (the pooled features, onnxruntime's INT8
    ``ReduceMean`` output) fake-quantized like the other activations."""

    def __init__(self) -> None:
        self.quant = _ActivationFakeQuant()

    def __call__(self, m: nn.Module, inp: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (self.quant(m, inp, inp[0]), *inp[1:])


def simulate_int8(
    model: nn.Module, calib: torch.Tensor, float_convs: int = 1, batch: int = 16
) -> tuple[nn.Module, list[_ActivationFakeQuant]]:
    """A copy of ``model`` with BatchNorm folded and INT8 simulated (weights and activations),
    its activation ranges calibrated on ``calib`` (MinMax over all images).

    ``float_convs``: the first N convolutions keep float weights, as the INT8 file's recipe keeps
    them (``quantize_model(float_first_convs=N)``).
    """
    student = copy.deepcopy(model).cpu().eval()
    fold_batchnorm(student)
    convs = [m for m in student.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs[float_convs:]:
        parametrize.register_parametrization(conv, "weight", _WeightFakeQuant())
    hooks = []
    for mod in _activation_modules(student, float_convs):
        h = _ActivationFakeQuant()
        mod.register_forward_hook(h)
        hooks.append(h)
    head = getattr(student, "classifier", None)
    if isinstance(head, nn.Linear):  # quantize_model quantizes ReduceMean, not the Gemm
        pre = _InputFakeQuant()
        head.register_forward_pre_hook(pre)
        hooks.append(pre.quant)
    calibrate(student, hooks, calib, batch)
    return student, hooks


@torch.no_grad()
def calibrate(
    student: nn.Module, hooks: list[_ActivationFakeQuant], calib: torch.Tensor, batch: int = 16
) -> None:
    """Set every simulated activation range to its min/max over ``calib`` with the current
    float weights and float activations, as onnxruntime's MinMax calibration does on the
    fine-tuned float model (the weights' fake quantization is off meanwhile)."""
    weights = [m for m in student.modules() if isinstance(m, _WeightFakeQuant)]
    for w in weights:
        w.enabled = False
    for h in hooks:
        h.lo, h.hi, h.observing = 0.0, 0.0, True
    for i in range(0, len(calib), batch):
        student(calib[i : i + batch])
    for h in hooks:
        h.observing = False
    for w in weights:
        w.enabled = True


def strip_simulation(student: nn.Module) -> nn.Module:
    """The fine-tuned float model: weight parametrizations removed (keeping the trained float
    weights, not their quantized copies) and activation hooks dropped."""
    for conv in student.modules():
        if parametrize.is_parametrized(conv, "weight"):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)
    for m in student.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return student.eval()


def fine_tune(
    model: nn.Module,
    images: np.ndarray,
    calib: np.ndarray,
    epochs: int = 6,
    lr: float = 3e-6,
    batch: int = 16,
    float_convs: int = 1,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict]:
    """Quantization-aware distillation of ``model`` into itself (module docstring).

    Parameters
    ----------
    model
        The trained float model (left unchanged).
    images, calib
        uint8 ``[N, H, W]`` training images (the fine-tune) and calibration images (activation
        ranges): never the validation fold, on which the INT8 file is scored.
    epochs, lr, batch
        A short, gentle fine-tune: Adam at a learning rate far below training's, cosine decay.
        Measured on the X-ray Lite0 (627 images): at 5e-5 the simulated KL rose epoch by
        epoch (0.021, 0.038); at 1e-5 it fell to 0.0033 in 3 epochs; at 3e-6 to 0.0019-0.0022
        in 6, and the INT8 file agreed best with the float model there.

    Returns
    -------
    The fine-tuned float model (BatchNorm folded, simulation stripped) and a report.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    teacher = copy.deepcopy(model).cpu().eval()

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0)[:, None]

    calib_t = tensor(calib)
    student, hooks = simulate_int8(model, calib_t, float_convs)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    steps = epochs * int(np.ceil(len(images) / batch))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.time()
    history = []
    for ep in range(epochs):
        order = rng.permutation(len(images))
        total, n = 0.0, 0
        for i in range(0, len(order), batch):
            x = tensor(images[order[i : i + batch]])
            if rng.random() < 0.5:
                x = torch.flip(x, dims=[3])  # the training augmentation's horizontal flip
            with torch.no_grad():
                target = F.log_softmax(teacher(x), dim=1)
            out = F.log_softmax(student(x), dim=1)
            loss = F.kl_div(out, target, log_target=True, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(x)
            n += len(x)
        history.append(total / n)
        # the ranges follow the weights: measured again, as the INT8 file's calibration will be
        calibrate(student, hooks, calib_t, batch)
        log(f"qat epoch {ep + 1}/{epochs}: KL(float || simulated int8) {total / n:.5f}")
    report = dict(
        method="quantization-aware distillation from the float model (lunglens.training.qat)",
        epochs=epochs,
        lr=lr,
        images=len(images),
        calibration_images=len(calib),
        simulated_activations=len(hooks),
        float_convs=float_convs,
        weight_max=_W_MAX,
        kl_per_epoch=[round(v, 6) for v in history],
        seconds=round(time.time() - t0, 1),
    )
    return strip_simulation(student), report


@torch.no_grad()
def float_model_from_onnx(fp32: Path, arch: str, num_classes: int) -> nn.Module:
    """The trained float model back from its exported file, BatchNorm folded.

    A shipped model folder keeps ``model_fp32.onnx`` (the float graph its CV describes) but not
    the PyTorch checkpoint, which lives in the training run's work folder and is gone once that
    is cleaned (or was replaced by a later run). The export folds every BatchNorm into its
    convolution, which is the form :func:`simulate_int8` fine-tunes anyway, so the network
    is rebuilt with identity BatchNorms and each Conv's weight and bias (and the classifier's)
    copied from the graph's initializers by node name (``/blocks/blocks.1/blocks.1.0/conv_pw/
    Conv`` is module ``...blocks.1.0.conv_pw``). What this enables: quantization-aware
    distillation of a shipped model from its folder alone (``--stages quantize``).

    Raises
    ------
    ValueError
        A Conv of the graph has no module of that name in ``arch``, or a module's Conv is
        missing from the graph (another architecture's file).
    """
    import onnx
    from onnx import numpy_helper

    from lunglens.training.models import create_model

    model = create_model(arch, num_classes).eval()
    fold_batchnorm(model)  # identity BatchNorms, every conv with a bias
    graph = onnx.load(str(fp32)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # Conv2d and ConvTranspose2d (the SqueezeNet-light's upsampling), as the graph's Conv and
    # ConvTranspose nodes
    convs = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    }
    filled: set[str] = set()
    for node in graph.node:
        parts = node.name.strip("/").split("/")[:-1]
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or not parts:
            continue  # the CAM's 1x1 conv of the classifier weights sits at the top level
        if node.op_type == "Gemm":
            target: nn.Conv2d | nn.ConvTranspose2d | nn.Linear = model.classifier  # type: ignore[assignment]
            name = "classifier"
        else:
            suffix = ".".join(parts[-2:]) if len(parts) > 1 else parts[0]
            names = [n for n in convs if n == suffix or n.endswith("." + suffix)]
            if len(names) != 1:
                raise ValueError(
                    f"{fp32}: Conv {node.name} matches {names or 'no'} module of {arch}"
                )
            name = names[0]
            target = convs[name]
        if any(i not in inits for i in node.input[1:3]):
            raise ValueError(
                f"{fp32}: the weights of {node.name} are computed in the graph (a layer the export "
                "rewrote), so the network cannot be read back from this file"
            )
        weight = torch.from_numpy(inits[node.input[1]].copy())
        bias = torch.from_numpy(inits[node.input[2]].copy()) if len(node.input) > 2 else None
        if weight.shape != target.weight.shape:
            raise ValueError(
                f"{fp32}: {node.name} weight {tuple(weight.shape)} does not fit {name}"
            )
        target.weight.copy_(weight)
        if target.bias is not None:  # every conv before a BatchNorm got one from the folding
            target.bias.copy_(bias if bias is not None else torch.zeros_like(target.bias))
        elif bias is not None and bias.abs().max() > 0:
            raise ValueError(f"{fp32}: {node.name} has a bias that {name} of {arch} has not")
        filled.add(name)
    missing = [n for n in convs if n not in filled]
    if missing or "classifier" not in filled:
        what = ", ".join(missing[:3]) or "the classifier"
        raise ValueError(f"{fp32}: no Conv or Gemm in the graph for {what} of {arch}")
    # the rebuilt network must compute what the file computes (a BatchNorm left unfolded, other
    # input constants or a head exported otherwise would pass the name checks)
    from lunglens.training.quantize import onnx_probs

    side = int(graph.input[0].type.tensor_type.shape.dim[2].dim_value or 64)
    probe = (np.random.default_rng(0).random((2, side, side)) * 255).astype(np.uint8)
    mine = torch.softmax(model(torch.from_numpy(probe.astype(np.float32) / 255)[:, None]), 1)
    diff = float(np.abs(mine.numpy() - onnx_probs(fp32, probe)).max())
    if diff > FROM_ONNX_TOLERANCE:
        raise ValueError(
            f"{fp32}: the network read back differs from the file (max |dp| {diff:.1e})"
        )
    return model


#: Largest |dp| between a network rebuilt by :func:`float_model_from_onnx` and its file
#: (measured: 1.3e-6 on the CT and X-ray Lite0s).
FROM_ONNX_TOLERANCE = 1e-4
