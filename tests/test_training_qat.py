"""Quantization-aware distillation (``lunglens.training.qat``): the simulation is onnxruntime's
INT8, the fine-tune moves the simulated network toward the float one, and the result exports."""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
parametrize = pytest.importorskip("torch.nn.utils.parametrize")
pytest.importorskip("onnx")

pytestmark = pytest.mark.train


class _Block(torch.nn.Module):
    """Inverted-residual-like block with a skip (timm's ``has_skip``)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv_pw = nn.Conv2d(c, 2 * c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * c)
        self.act = nn.ReLU6()
        self.conv_pwl = nn.Conv2d(2 * c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.has_skip = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv_pwl(self.act(self.bn1(self.conv_pw(x)))))


class _TinyLite(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8))
        self.block = _Block(8)
        self.classifier = nn.Linear(8, 2)
        self.gallery_layers = OrderedDict([("block", self.block)])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(torch.nn.functional.relu6(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = _TinyLite()
    for bn in (m.stem[1], m.block.bn1, m.block.bn2):  # non-trivial statistics to fold
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 120, (n, 16, 16)).astype(np.float32)
    imgs[: n // 2, 4:12, 4:12] += 120
    return imgs.clip(0, 255).astype(np.uint8)


def _x(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs.astype(np.float32) / 255.0)[:, None]


def test_folding_batchnorm_keeps_the_function() -> None:
    from lunglens.training.qat import fold_batchnorm

    m = _model()
    x = _x(_images(8))
    with torch.no_grad():
        before = m(x)
        assert fold_batchnorm(m) == 3
        after = m(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert torch.allclose(m.block.bn1.weight, torch.ones(16))  # the BatchNorm is the identity
    assert m.block.conv_pw.bias is not None  # its shift went into the conv


def test_simulation_quantizes_weights_per_channel_and_activations_to_uint8() -> None:
    from lunglens.training.qat import _W_MAX, simulate_int8
    from lunglens.training.quantize import WEIGHT_MAX

    assert _W_MAX == WEIGHT_MAX == 64  # the simulation's weight grid is the INT8 file's
    m = _model()
    calib = _x(_images(32))
    student, hooks = simulate_int8(m, calib, float_convs=1)
    # stem BN, block bn1, block bn2 outputs, the residual sum, the pooled features
    assert len(hooks) == 5 and all(not h.observing and h.hi > h.lo for h in hooks)
    w = student.block.conv_pw.weight  # the quantized copy the forward pass sees
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / _W_MAX
    steps = (w / scale).detach()
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # on each channel's int8 grid
    # the first conv stays float, as the INT8 file keeps it
    assert not parametrize.is_parametrized(student.stem[0], "weight")
    assert parametrize.is_parametrized(student.block.conv_pwl, "weight")
    outs: list[torch.Tensor] = []
    student.block.bn1.register_forward_hook(lambda _m, _i, o: outs.append(o))
    with torch.no_grad():
        student(calib[:4])
    h = hooks[1]  # block bn1: its output, after the fake quantization hook before this one
    scale = (h.hi - h.lo) / 255
    q = outs[0] / scale + round(-h.lo / scale)  # back to the uint8 codes
    assert torch.allclose(q, q.round(), atol=1e-2)
    assert q.min() >= -0.01 and q.max() <= 255.01


def test_fine_tune_brings_the_simulated_int8_network_closer_to_float(tmp_path: Path) -> None:
    from lunglens.training.export import export_onnx
    from lunglens.training.qat import fine_tune, simulate_int8

    m = _model()
    with torch.no_grad():
        # one wide channel in the residual sum takes the per-tensor uint8 range from the others,
        # which carry the decision: quantization costs this model something to fine-tune away
        m.block.bn2.weight[0] = 60.0
        m.classifier.weight.mul_(20.0)
        m.classifier.weight[:, 0] = 0.0
    imgs, calib = _images(64, 1), _images(32, 2)
    x = _x(_images(32, 3))

    def kl(student: torch.nn.Module) -> float:
        with torch.no_grad():
            p, q = torch.log_softmax(m(x), 1), torch.log_softmax(student(x), 1)
        return float(torch.nn.functional.kl_div(q, p, log_target=True, reduction="batchmean"))

    before = kl(simulate_int8(m, _x(calib))[0])
    tuned, report = fine_tune(m, imgs, calib, epochs=8, lr=1e-3, batch=16, log=lambda _s: None)
    after = kl(simulate_int8(tuned, _x(calib))[0])
    assert after < before, (before, after)
    assert len(report["kl_per_epoch"]) == 8 and report["images"] == 64
    # the original model is untouched; the tuned one is a plain float model that exports
    assert m.block.bn1.running_var.min() > 0.4
    assert not any(mod._forward_hooks for mod in tuned.modules())
    out = export_onnx(tuned, 16, tmp_path / "tuned.onnx")
    assert out["probs_max_abs_diff"] < 1e-5


class _TwoConvStem(_TinyLite):
    """A stem of two conv + BatchNorm pairs before the residual block."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(
            nn.Conv2d(1, 4, 3, 2, 1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU6(),
            nn.Conv2d(4, 8, 3, 1, 1, bias=False),
            nn.BatchNorm2d(8),
        )


def test_float_layers_are_simulated_float_and_ranges_are_calibrated_on_float_weights() -> None:
    """As ``quantize_model(float_first_convs=N)`` makes the file: the tensors between float
    layers carry no QuantizeLinear, only the input of the first INT8 conv does; and the
    activation ranges are onnxruntime's MinMax over the float model."""
    from lunglens.training.qat import fold_batchnorm, simulate_int8

    torch.manual_seed(1)
    m = _TwoConvStem().eval()
    calib = _x(_images(32))
    student, hooks = simulate_int8(m, calib, float_convs=2)  # the stem float
    # the stem's last BatchNorm feeds the first INT8 conv; its first one stays float
    assert len(hooks) == 5  # stem.4, block bn1, block bn2, the residual sum, the pooled input
    outs: list[torch.Tensor] = []
    student.stem[1].register_forward_hook(lambda _m, _i, o: outs.append(o))
    with torch.no_grad():
        student(calib[:4])
    codes = outs[0] / (outs[0].abs().max() / 255)
    assert not torch.allclose(codes, codes.round(), atol=1e-2)  # not on a uint8 grid
    # ranges are those of the float network (weights not fake-quantized while observed)
    ref = copy.deepcopy(m)
    fold_batchnorm(ref)
    seen: list[torch.Tensor] = []
    ref.block.bn2.register_forward_hook(lambda _m, _i, o: seen.append(o))
    with torch.no_grad():
        ref(calib)
    assert hooks[2].hi == pytest.approx(float(seen[0].max()), rel=1e-5)
    assert hooks[2].lo == pytest.approx(min(0.0, float(seen[0].min())), rel=1e-5)
    # ending the float layers inside the residual block cannot be simulated exactly: refused
    with pytest.raises(ValueError, match="residual sum"):
        simulate_int8(m, calib, float_convs=3)


def test_a_lite_network_is_read_back_from_its_float_file(tmp_path: Path) -> None:
    """``float_model_from_onnx``: what QAT of a shipped folder starts from (no checkpoint)."""
    from lunglens.training.export import export_onnx
    from lunglens.training.models import create_model
    from lunglens.training.qat import float_model_from_onnx

    torch.manual_seed(0)
    m = create_model("efficientnet-lite0", 3).eval()
    with torch.no_grad():  # trained-looking BatchNorms, so the folding is exercised
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    path = tmp_path / "fp32.onnx"
    export_onnx(m, 64, path)
    back = float_model_from_onnx(path, "efficientnet-lite0", 3)
    x = _x(_images(4, 5).repeat(4, 1).repeat(4, 2))  # 64 px
    with torch.no_grad():
        torch.testing.assert_close(
            torch.softmax(back(x), 1), torch.softmax(m(x), 1), rtol=1e-4, atol=1e-5
        )
    with pytest.raises(ValueError, match="matches no module of squeezenet-light"):
        float_model_from_onnx(path, "squeezenet-light", 3)
