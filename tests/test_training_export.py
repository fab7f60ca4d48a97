"""ONNX export rewrites (``inference_graph``): same function as the trained model, faster ops."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

pytestmark = pytest.mark.train


def _op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_squeezenet_light_exports_without_elu_or_transposed_conv(tmp_path: Path) -> None:
    """The light SqueezeNet's ELUs and its x4 transposed conv become Min/Exp/Max and a 1x1 conv
    + DepthToSpace; every output (probs, CAM, gallery) matches PyTorch on the trained graph."""
    from lunglens.training.export import export_onnx
    from lunglens.training.models import create_model

    torch.manual_seed(0)
    model = create_model("squeezenet-light", 2).eval()
    # random BatchNorm statistics, so ELU sees negative and positive inputs of any scale
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    out = tmp_path / "m.onnx"
    facts = export_onnx(model, 64, out)
    assert facts["graph_rewrites"] == [
        "elu_as_min_exp_max",
        "block_transposed_conv_as_conv_depth_to_space",
    ]
    ops = _op_types(out)
    assert not ops & {"Elu", "ConvTranspose", "Einsum"}
    assert {"Exp", "Max", "DepthToSpace"} <= ops
    # export_onnx compares with the model as trained (nn.ELU, nn.ConvTranspose2d)
    assert max(facts["max_abs_diff"].values()) < 1e-4
    assert facts["probs_max_abs_diff"] < 1e-5
    # the model itself is untouched: training still uses the original modules
    assert type(model.up).forward is torch.nn.ConvTranspose2d.forward
    assert "forward" not in vars(model.up) and "forward" not in vars(model.fire2.act)


class _Other(torch.nn.Module):
    """ELU with alpha != 1 and an overlapping transposed conv (kernel 4, stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv = nn.Conv2d(1, 8, 3, 2, 1)
        self.act = nn.ELU(alpha=0.5)
        self.up = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)
        self.classifier = nn.Linear(8, 2)
        self.gallery_layers = OrderedDict([("act", self.act)])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.conv(x) - 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def test_rewrites_apply_only_where_exact(tmp_path: Path) -> None:
    from lunglens.training.export import export_onnx

    torch.manual_seed(1)
    out = tmp_path / "o.onnx"
    facts = export_onnx(_Other().eval(), 32, out)
    assert facts["graph_rewrites"] == ["elu_as_min_exp_max"]  # overlapping: left alone
    ops = _op_types(out)
    assert "ConvTranspose" in ops and "Elu" not in ops and "Mul" in ops  # alpha kept
    assert max(facts["max_abs_diff"].values()) < 1e-5
    # alpha > 1: max(x, alpha * (exp(min(x, 0)) - 1)) would pick x just below 0, so no rewrite
    from lunglens.training.export import inference_graph

    assert inference_graph(torch.nn.Sequential(torch.nn.ELU(alpha=2.0)))[1] == []
    with torch.no_grad():
        x = torch.randn(1, 8, 5, 5) * 4
        np.testing.assert_allclose(
            torch.nn.functional.elu(x, 0.5).numpy(),
            torch.maximum(x, 0.5 * (torch.exp(x.clamp(max=0)) - 1)).numpy(),
            atol=1e-6,
        )


def test_export_refuses_a_graph_that_differs_from_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong rewrite (here ELU exported as ReLU) stops the export instead of shipping."""
    from lunglens.training import export

    wrong = (("elu_as_relu", lambda m: isinstance(m, torch.nn.ELU), lambda self, x: torch.relu(x)),)
    monkeypatch.setattr(export, "GRAPH_REWRITES", wrong)
    torch.manual_seed(2)
    with pytest.raises(RuntimeError, match="differs from the PyTorch model"):
        export.export_onnx(_Other().eval(), 32, tmp_path / "bad.onnx")


def test_block_transposed_conv_keeps_an_explicit_output_size() -> None:
    from lunglens.training.export import inference_graph

    up = torch.nn.ConvTranspose2d(4, 2, 2, stride=2).eval()
    fast = inference_graph(torch.nn.Sequential(up))[0][0]
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        np.testing.assert_allclose(fast(x).numpy(), up(x).numpy(), atol=1e-6)
        # output_size (7 = 2 * 3 + 1 needs output padding): the original op, not the rewrite
        np.testing.assert_allclose(
            fast(x, output_size=[7, 7]).numpy(), up(x, output_size=[7, 7]).numpy(), atol=1e-6
        )
