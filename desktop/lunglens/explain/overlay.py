"""Blend a heat map over a grayscale image, and save the result as PNG.

The heat map's low end is transparent: a CAM is scaled to its own maximum, so most of an image
sits at small values that mean "no evidence", and a colour map painted at full opacity there
(dark blue for ``jet``) tints the whole scan and hides the anatomy. The opacity of each pixel
therefore ramps with its value (:func:`cam_alpha`): nothing below :data:`RAMP_START`, full
opacity from :data:`RAMP_FULL`, linear in between.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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


#: CAM values (fraction of the map's maximum) below this are drawn fully transparent.
RAMP_START = 0.15
#: CAM values from this one up are drawn at the full overlay opacity.
RAMP_FULL = 0.6


def cam_alpha(cam: np.ndarray) -> np.ndarray:
    """Per-pixel opacity in [0, 1] of a [0, 1] CAM: 0 below :data:`RAMP_START`, 1 from
    :data:`RAMP_FULL`, linear in between."""
    ramp = (np.asarray(cam, np.float32) - RAMP_START) / (RAMP_FULL - RAMP_START)
    return np.clip(ramp, 0.0, 1.0)


def colorize(cam: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """uint8 RGBA ``[h, w, 4]`` of a [0, 1] CAM: colour from ``colormap``, alpha from
    :func:`cam_alpha` (the GUI draws it as a layer over the displayed slice)."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose from {sorted(COLORMAPS)}")
    rgb = cv2.cvtColor(cv2.applyColorMap(to_uint8(cam), COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)
    return np.dstack([rgb, to_uint8(cam_alpha(cam))])


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding and clipping."""
    return np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)


def overlay(
    image: np.ndarray, cam: np.ndarray, alpha: float = 0.4, colormap: str = "jet"
) -> np.ndarray:
    """Return a uint8 RGB ``[H, W, 3]`` image: ``image`` in gray with ``cam`` colored on top.

    Each pixel's heat weight is ``alpha * cam_alpha(cam)``, so "no evidence" areas keep the
    image's own gray.

    Parameters
    ----------
    image
        ``[H, W]`` float in [0, 1] (the displayed slice).
    cam
        ``[h, w]`` float in [0, 1] from :func:`lunglens.explain.cam_map`; resized to the
        image when sizes differ.
    alpha
        Weight of the heat map where the CAM is strong (0 = image only, 1 = heat map only).
    colormap
        One of :data:`COLORMAPS`.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got {image.shape}")
    h, w = image.shape
    if cam.shape != (h, w):
        cam = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    rgba = colorize(cam, colormap)
    gray = cv2.cvtColor(to_uint8(image), cv2.COLOR_GRAY2RGB).astype(np.float32)
    weight = float(np.clip(alpha, 0.0, 1.0)) * (rgba[..., 3:].astype(np.float32) / 255.0)
    blended = gray * (1.0 - weight) + rgba[..., :3].astype(np.float32) * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def save_png(
    rgb: np.ndarray, path: str | os.PathLike[str], text: Mapping[str, str] | None = None
) -> None:
    """Write a uint8 RGB (or grayscale) array as PNG, with ``text`` as its text chunks
    (:mod:`lunglens.explain.caption`).

    Pillow is used rather than ``cv2.imwrite`` because OpenCV cannot open non-ASCII paths on
    Windows.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)  # iTXt: UTF-8, whatever the names hold
    Image.fromarray(np.ascontiguousarray(rgb)).save(os.fspath(path), format="PNG", pnginfo=info)
