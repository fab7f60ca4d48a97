"""Blend a heat map over a grayscale image, and save the result as PNG."""

from __future__ import annotations

import os

import cv2
import numpy as np

#: Colormap names accepted by :func:`overlay` -> OpenCV constants.
COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "hot": cv2.COLORMAP_HOT,
}


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding and clipping."""
    return np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)


def overlay(
    image: np.ndarray, cam: np.ndarray, alpha: float = 0.4, colormap: str = "jet"
) -> np.ndarray:
    """Return a uint8 RGB ``[H, W, 3]`` image: ``image`` in gray with ``cam`` colored on top.

    Parameters
    ----------
    image
        ``[H, W]`` float in [0, 1] (the displayed slice).
    cam
        ``[h, w]`` float in [0, 1] from :func:`lunglens.explain.cam_map`; resized to the
        image when sizes differ.
    alpha
        Weight of the heat map (0 = image only, 1 = heat map only).
    colormap
        One of :data:`COLORMAPS`.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose from {sorted(COLORMAPS)}")
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got {image.shape}")
    h, w = image.shape
    if cam.shape != (h, w):
        cam = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    gray = cv2.cvtColor(to_uint8(image), cv2.COLOR_GRAY2RGB)
    heat = cv2.cvtColor(cv2.applyColorMap(to_uint8(cam), COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)
    a = float(np.clip(alpha, 0.0, 1.0))
    return cv2.addWeighted(gray, 1.0 - a, heat, a, 0.0)


def save_png(rgb: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write a uint8 RGB (or grayscale) array as PNG.

    Pillow is used rather than ``cv2.imwrite`` because OpenCV cannot open non-ASCII paths on
    Windows.
    """
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb)).save(os.fspath(path), format="PNG")
