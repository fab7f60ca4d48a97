"""Named training recipes: what ``lunglens-train NAME`` reproduces.

``size_cpu`` is the resolution used when no GPU is present (sized for 2 cores inside a session);
``size_cuda`` is the published/native resolution used on a CUDA machine by the same command.
"""

from __future__ import annotations

from dataclasses import dataclass


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


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "ct-squeezenet",
            "squeezenet-light-ct",
            "squeezenet-light",
            "ct",
            "ct-covid-binary",
            "covid",
            128,
            224,
            14,
            40,
            window=("lung", -600.0, 1500.0),
        ),
        Preset(
            "ct-efficientnet-b5",
            "efficientnet-b5-ct",
            "efficientnet-b5",
            "ct",
            "ct-covid-binary",
            "covid",
            96,
            456,
            6,
            30,
            batch_size=16,
            calibration="auto",
            window=("lung", -600.0, 1500.0),
        ),
        Preset(
            "cxr-squeezenet",
            "squeezenet-light-cxr",
            "squeezenet-light",
            "cxr",
            "cxr-3class",
            "covid",
            128,
            224,
            25,
            60,
        ),
        Preset(
            "cxr-efficientnet-b5",
            "efficientnet-b5-cxr",
            "efficientnet-b5",
            "cxr",
            "cxr-3class",
            "covid",
            96,
            456,
            12,
            40,
            batch_size=16,
            calibration="auto",
        ),
    ]
}
