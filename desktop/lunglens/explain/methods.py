"""Registry of CAM methods: name -> function computing raw ``[C, h, w]`` maps for one image.

Only ``"cam"`` exists today (the model's own ``cam`` output). A new method (e.g. an occlusion map)
is one function added to :data:`CAM_METHODS`; callers select it by name.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lunglens.inference.engine import Engine
from lunglens.inference.view import predict_image

#: ``(engine, image2d [H, W] in [0, 1]) -> raw CAM [C, h, w]``
CamMethod = Callable[[Engine, np.ndarray], np.ndarray]


def onnx_cam(engine: Engine, image2d: np.ndarray) -> np.ndarray:
    """The ``cam`` output of the model: classifier weights x last feature maps."""
    return predict_image(engine, image2d, ("cam",))["cam"][0].astype(np.float32)


CAM_METHODS: dict[str, CamMethod] = {"cam": onnx_cam}


def raw_cam(engine: Engine, image2d: np.ndarray, method: str = "cam") -> np.ndarray:
    """Compute raw ``[C, h, w]`` maps with a registered method."""
    try:
        fn = CAM_METHODS[method]
    except KeyError:
        raise ValueError(f"unknown CAM method {method!r}; known: {sorted(CAM_METHODS)}") from None
    return fn(engine, image2d)
