"""Class activation map -> heat map at image size.

The ONNX ``cam`` output is the classifier weights times the last feature maps (unnormalized, can be
negative). For a global-average-pool + linear head this equals Grad-CAM, so the app needs no
gradients. Here it becomes a display map: ReLU (only evidence *for* the class), bilinear upsampling
to the image size, and scaling to [0, 1] by its maximum (so zero stays "no evidence").
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lunglens.inference.result import ScanResult


def cam_map(
    result_or_raw_cam: ScanResult | np.ndarray,
    class_index: int | str | None = None,
    out_size: Sequence[int] | None = None,
) -> np.ndarray:
    """Return a float32 ``[H, W]`` heat map in [0, 1] for one class.

    Parameters
    ----------
    result_or_raw_cam
        A :class:`~lunglens.inference.ScanResult` with ``cam`` set, a raw ``[C, h, w]`` array,
        or a single ``[h, w]`` map.
    class_index
        Class index or label; ``None`` -> the result's ``cam_class`` (raw arrays: class 0 of a
        ``[C, h, w]`` stack is *not* assumed, so a raw stack needs an index).
    out_size
        ``(H, W)`` of the displayed image; default: the map's own size.
    """
    if isinstance(result_or_raw_cam, ScanResult):
        if result_or_raw_cam.cam is None:
            raise ValueError("the result has no CAM; classify with with_cam=True")
        labels = result_or_raw_cam.labels
        if class_index is None:
            class_index = result_or_raw_cam.cam_class
        if isinstance(class_index, str):
            class_index = labels.index(class_index)
        raw = result_or_raw_cam.cam[class_index]
    else:
        raw = np.asarray(result_or_raw_cam)
        if raw.ndim == 3:
            if class_index is None or isinstance(class_index, str):
                raise ValueError("a raw [C, h, w] CAM needs an integer class_index")
            raw = raw[class_index]
        elif raw.ndim != 2:
            raise ValueError(f"expected a [C, h, w] or [h, w] CAM, got {raw.shape}")
    heat = np.maximum(raw.astype(np.float32), 0.0)
    if out_size is not None:
        h, w = int(out_size[0]), int(out_size[1])
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
        np.maximum(heat, 0.0, out=heat)
    peak = float(heat.max()) if heat.size else 0.0
    if peak <= 1e-12 or not np.isfinite(peak):
        return np.zeros_like(heat, dtype=np.float32)
    return (heat / np.float32(peak)).astype(np.float32)
