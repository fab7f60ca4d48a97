"""Lung fields of a frontal chest X-ray, for checking where a model's CAM lies.

The CT rule (:func:`lunglens.preprocess.lung_field`: dark fields enclosed by the body) fails on
radiographs: ribs cross the lungs, the air outside the body touches them at the axillae and the
neck, and some sources are posterized. This module uses marker-controlled watershed (Beucher &
Meyer 1993) on a smoothed copy instead, the classical way to split a radiograph into regions
whose borders are the strongest edges between seeds:

- *lung seeds*: the darkest part of the middle of each hemithorax (left and right of the
  mediastinum, found as the brightest vertical band near the image centre);
- *background seeds*: the image frame (air outside the body, labels), a band along the midline
  (spine and mediastinum) and the brightest tissue (heart, diaphragm, bone).

Each lung is the region its seed floods, opened, reduced to its largest piece, with the bites
that opacities make at its edge filled back by the piece's convex hull (as for CT). Dense
consolidation that whitens a whole lower zone usually stops the flood, so the field is mostly
smaller than the anatomical lung (0.85 of a hand outline's area on average, 89% of it inside
the outline); on a few films it leaks past a faint edge instead (4 of 32 spill more than 20%
outside). Checked against hand-drawn outlines (tests/data/cxr_lung_outlines.json;
docs/measurements.md); not for display or diagnosis.
"""

from __future__ import annotations

import cv2
import numpy as np

from lunglens.preprocess import fill_bites, largest_components, to_image_size, work_image

#: Watershed labels.
_RIGHT, _LEFT, _BACKGROUND = 1, 2, 3

#: Blur and frame, as shares of the working copy's shorter side; the midline band's half-width
#: as a share of its width.
_BLUR = 0.01
_FRAME = 0.015
_MIDLINE_HALF = 0.025
#: Smallest working copy (pixels, shorter side) and contrast (1st to 99th percentile of the
#: centre, in [0, 1]) that a radiograph can have: below either, no lung is reported.
_MIN_SIDE = 32
_MIN_CONTRAST = 0.05
#: Share of the image's pixels, the brightest, that seed the background (heart, diaphragm, bone).
_BRIGHT_QUANTILE = 92.0
#: Darkest share of each hemithorax's middle that seeds its lung.
_SEED_QUANTILE = 45.0


def _disc(radius: float) -> np.ndarray:
    r = max(1, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _smoothed(work: np.ndarray) -> np.ndarray | None:
    """Median then Gaussian blur (ribs and posterization steps fade), stretched to [0, 1] by
    the 1st/99th percentiles of the image's central 80%; ``None`` for a flat image."""
    h, w = work.shape
    g = cv2.medianBlur(np.clip(np.round(work * 255.0), 0, 255).astype(np.uint8), 5)
    g = cv2.GaussianBlur(g.astype(np.float32), (0, 0), max(0.5, min(h, w) * _BLUR))
    lo, hi = np.percentile(g[int(0.1 * h) : int(0.9 * h), int(0.1 * w) : int(0.9 * w)], [1, 99])
    if hi - lo < _MIN_CONTRAST * 255.0:
        return None
    return np.clip((g - lo) / float(hi - lo), 0.0, 1.0)


def midline(g: np.ndarray) -> int:
    """Column of the mediastinum in a smoothed radiograph.

    Parameters
    ----------
    g
        ``[H, W]`` image in [0, 1], blurred so that ribs fade (as :func:`xray_lung_fields`
        prepares it).

    Returns
    -------
    int
        The brightest vertical band in the middle 30% of the width, averaged over the rows
        from 20% to 70% of the height (spine, heart and great vessels).
    """
    h, w = g.shape
    profile = g[int(0.2 * h) : int(0.7 * h)].mean(axis=0)
    profile = np.convolve(profile, np.ones(9) / 9.0, mode="same")
    a, b = int(0.35 * w), max(int(0.65 * w), int(0.35 * w) + 1)
    return a + int(np.argmax(profile[a:b]))


def _seeds(g: np.ndarray, mid: int) -> np.ndarray:
    h, w = g.shape
    side = min(h, w)
    markers = np.zeros((h, w), np.int32)
    e = max(2, int(_FRAME * side))
    markers[:e], markers[-e:], markers[:, :e], markers[:, -e:] = (_BACKGROUND,) * 4
    half = max(2, int(_MIDLINE_HALF * w))
    markers[:, max(0, mid - half) : mid + half] = _BACKGROUND
    markers[g > np.percentile(g, _BRIGHT_QUANTILE)] = _BACKGROUND
    # Patient's right lung on the image's left (radiological convention).
    for label, (x0, x1) in ((_RIGHT, (e, mid - half)), (_LEFT, (mid + half, w - e))):
        if x1 - x0 < 8:
            continue
        cx0, cx1 = x0 + (x1 - x0) // 4, x0 + 3 * (x1 - x0) // 4
        cy0, cy1 = int(0.25 * h), int(0.65 * h)
        core = g[cy0:cy1, cx0:cx1]
        dark = np.zeros((h, w), np.uint8)
        dark[cy0:cy1, cx0:cx1] = core <= np.percentile(core, _SEED_QUANTILE)
        seed = cv2.erode(dark, _disc(side * 0.01)).astype(bool)
        markers[largest_components(seed, keep_share=1.0)] = label
    return markers


def xray_lung_fields(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The patient's right and left lung fields of a frontal chest X-ray.

    Parameters
    ----------
    image
        ``[H, W]`` float image in [0, 1], white bone (MONOCHROME2 after the loader's VOI).

    Returns
    -------
    right, left
        Boolean masks of the image's shape; the patient's right lung lies on the image's left.
        A lung the watershed does not find is all ``False``.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    if image.size and (float(image.min()) < 0.0 or float(image.max()) > 1.0):
        raise ValueError(
            f"expected values in [0, 1] (lunglens.io.load_scan's output), got "
            f"{float(image.min()):g}..{float(image.max()):g}"
        )
    empty = np.zeros(image.shape, bool)
    if min(image.shape) < _MIN_SIDE:
        return empty, empty.copy()
    work, scale = work_image(image)
    g = _smoothed(work) if min(work.shape) >= _MIN_SIDE else None
    if g is None:  # a sliver once shrunk, or no contrast: nothing to find lungs in
        return empty, empty.copy()
    markers = cv2.watershed(
        cv2.cvtColor(np.round(g * 255.0).astype(np.uint8), cv2.COLOR_GRAY2BGR),
        _seeds(g, midline(g)),
    )
    side = min(g.shape)
    out = []
    for label in (_RIGHT, _LEFT):
        region = cv2.morphologyEx(
            (markers == label).astype(np.uint8), cv2.MORPH_OPEN, _disc(side * 0.02)
        ).astype(bool)
        lung = largest_components(region, keep_share=1.0)
        if lung.any():
            lung = fill_bites(lung)
        out.append(to_image_size(lung, image, scale))
    return out[0], out[1]


def xray_lung_field(image: np.ndarray) -> np.ndarray:
    """Both lung fields of a frontal chest X-ray as one mask.

    Parameters
    ----------
    image
        ``[H, W]`` float image in [0, 1] (see :func:`xray_lung_fields`).

    Returns
    -------
    numpy.ndarray
        Boolean mask of the image's shape: the union of the two lung fields.
    """
    right, left = xray_lung_fields(image)
    return right | left
