"""Preprocessing shared by the app and the training module.

The ONNX contract (``../shared/DESIGN.md``) takes a float32 ``[N, 1, H, W]`` image in [0, 1].
Everything upstream of that (windowing, resizing) lives here so the app and the training code
prepare images the same way; normalization and channel repeat live inside the ONNX graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Window:
    """A display window (DICOM Window Center (0028,1050) / Window Width (0028,1051))."""

    center: float
    width: float
    name: str = "custom"

    def apply(self, values: np.ndarray, invert: bool = False) -> np.ndarray:
        """Map modality values (e.g. Hounsfield units) to [0, 1] with a linear window.

        Uses the linear VOI function of DICOM PS3.3 C.11.2.1.2.1 (without the -0.5 offsets,
        which are irrelevant at float precision). ``invert`` is applied *after* the window, as
        MONOCHROME1 requires.
        """
        width = max(float(self.width), 1.0)
        low = self.center - width / 2.0
        out = (values.astype(np.float32) - np.float32(low)) / np.float32(width)
        np.clip(out, 0.0, 1.0, out=out)
        if invert:
            out = 1.0 - out
        return out.astype(np.float32, copy=False)


#: CT presets (HU). Lung is the default for COVID-19 triage (ground-glass opacities).
WINDOW_PRESETS: dict[str, Window] = {
    "lung": Window(-600.0, 1500.0, "lung"),
    "mediastinum": Window(40.0, 400.0, "mediastinum"),
    "bone": Window(400.0, 1800.0, "bone"),
}


def resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize a 2-D float image to ``size = (H, W)``.

    The whole image is stretched to the model size (no crop, no letterbox), as in training.
    INTER_AREA when shrinking avoids aliasing; INTER_LINEAR when enlarging.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    h, w = int(size[0]), int(size[1])
    if image.shape == (h, w):
        return image.astype(np.float32, copy=False)
    shrink = image.shape[0] > h or image.shape[1] > w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.float32, copy=False), (w, h), interpolation=interp)


def to_model_input(images: np.ndarray | Sequence[np.ndarray], size: Sequence[int]) -> np.ndarray:
    """Turn one 2-D image or a sequence/stack of them into the model's ``[N, 1, H, W]`` input.

    Parameters
    ----------
    images
        A ``[H, W]`` image, a ``[N, H, W]`` stack, or a list of ``[H, W]`` images of any size,
        float in [0, 1] (as produced by :func:`lunglens.io.load_scan`).
    size
        ``(H, W)`` from the model manifest.
    """
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = [images]
    batch = np.stack([resize(np.asarray(im), size) for im in images])
    np.clip(batch, 0.0, 1.0, out=batch)
    return np.ascontiguousarray(batch[:, None, :, :], dtype=np.float32)


def uint8_to_unit(image: np.ndarray) -> np.ndarray:
    """8-bit grayscale -> float32 [0, 1] (the training images are 8-bit JPEGs)."""
    return image.astype(np.float32) / np.float32(255.0)
