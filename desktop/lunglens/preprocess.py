"""Preprocessing shared by the app and the training module.

The ONNX contract (docs/model-contract.md) takes a float32 ``[N, 1, H, W]`` image in [0, 1].
Everything upstream of that (windowing, resizing) lives here so the app and the training code
prepare images the same way; normalization and channel repeat live inside the ONNX graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def to_model_input(
    images: np.ndarray | Sequence[np.ndarray],
    size: Sequence[int],
    prep: Preprocessing | None = None,
) -> np.ndarray:
    """Turn one 2-D image or a sequence/stack of them into the model's ``[N, 1, H, W]`` input.

    Parameters
    ----------
    images
        A ``[H, W]`` image, a ``[N, H, W]`` stack, or a list of ``[H, W]`` images of any size,
        float in [0, 1] (as produced by :func:`lunglens.io.load_scan`).
    size
        ``(H, W)`` from the model manifest.
    prep
        The model's crop/intensity step (manifest ``input.preprocessing``); ``None``: none.
    """
    return model_input_with_boxes(images, size, prep or IDENTITY)[0]


def uint8_to_unit(image: np.ndarray) -> np.ndarray:
    """8-bit grayscale -> float32 [0, 1] (the training images are 8-bit JPEGs)."""
    return image.astype(np.float32) / np.float32(255.0)


# -- field of view: crop to the body, normalize intensity ------------------------------------
#
# The public CT sources each have a look of their own (../shared/data/README.md, "known traps"):
# round low-contrast fields of view (ct-512, mosmed), lungs masked on black (normal-ct-512),
# images already cropped to the lungs (sars-cov-2-ct). A model can tell them apart by the frame
# and the grey levels alone. Cropping every image to the body and stretching its intensities
# between two anatomical anchors (air and dense tissue) makes the sources look alike, so what is
# left to learn is inside the lungs. Training and the app call the same functions below.

#: Crops smaller than this share of the image are rejected (a failed segmentation).
_MIN_CROP_SHARE = 0.15
#: An image with more black than this is treated as masked: its non-black content is the crop.
#: (A round field of view leaves 1 - pi/4 = 21% black corners; lung-masked slices over 50%.)
_MASKED_BLACK_SHARE = 0.35
#: Margin added around the body's bounding box, as a share of its size.
_CROP_MARGIN = 0.04
#: Margin around the lungs' bounding box: keeps the pleura and subpleural lesions in view.
_LUNG_MARGIN = 0.06


@dataclass(frozen=True)
class Preprocessing:
    """How an image is turned into the model's view before resizing (manifest ``input``).

    Attributes
    ----------
    crop
        ``"none"``; ``"body"``: crop to the bounding box of the body (:func:`body_box`);
        ``"lungs"``: to the bounding box of the lung fields (:func:`lung_box`).
    intensity
        ``"none"`` or ``"percentile"``: linear stretch of the crop between its 1st and 99th
        percentiles (:func:`stretch_percentiles`).
    """

    crop: str = "none"
    intensity: str = "none"

    @property
    def is_identity(self) -> bool:
        return self.crop == "none" and self.intensity == "none"

    def to_manifest(self) -> dict[str, str]:
        return {"crop": self.crop, "intensity": self.intensity}

    @classmethod
    def from_manifest(cls, raw: object) -> Preprocessing:
        if not isinstance(raw, dict):
            return cls()
        crop, intensity = str(raw.get("crop", "none")), str(raw.get("intensity", "none"))
        if crop not in CROPS or intensity not in ("none", "percentile"):
            raise ValueError(f"unknown preprocessing crop={crop!r} intensity={intensity!r}")
        return cls(crop, intensity)


IDENTITY = Preprocessing()

#: ``(top, bottom, left, right)`` in pixels, bottom/right exclusive.
Box = tuple[int, int, int, int]


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold (Otsu 1979) of values in [0, 1], via OpenCV on 8-bit levels."""
    u8 = np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8).reshape(1, -1)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t) / 255.0


def work_image(image: np.ndarray, side: int = 256) -> tuple[np.ndarray, float]:
    """A copy at most ``side`` pixels on its long side (segmentation needs no more)."""
    h, w = image.shape
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        small = cv2.resize(
            image.astype(np.float32, copy=False),
            (max(1, round(w * scale)), max(1, round(h * scale))),
            interpolation=cv2.INTER_AREA,
        )
        return small, scale
    return image.astype(np.float32, copy=False), 1.0


def largest_components(mask: np.ndarray, keep_share: float) -> np.ndarray:
    """Components of ``mask`` with at least ``keep_share`` of the largest one's area."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero(areas >= keep_share * areas.max())
    return np.isin(labels, keep)


def body_mask(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the body (soft tissue and bone ring) on a lung-windowed slice.

    Background padding (black corners of a round field of view, black masks) is left out first;
    Otsu's threshold over the rest separates air and lung (dark) from tissue (bright); a closing
    joins the chest wall, and the large components are kept. Works on the working copy's scale.
    """
    fg = image > 0.03
    if fg.sum() < 16:
        return np.zeros_like(image, dtype=bool)
    t = _otsu(image[fg])
    bright = (image > t) & fg
    k = max(3, round(min(image.shape) * 0.02) | 1)
    bright = cv2.morphologyEx(
        bright.astype(np.uint8),
        cv2.MORPH_CLOSE,
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)),
    ).astype(bool)
    return largest_components(bright, keep_share=0.2)


def _bbox(mask: np.ndarray) -> Box | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def body_box(image: np.ndarray) -> Box:
    """Bounding box of the body (plus a small margin) in a ``[H, W]`` image in [0, 1].

    Falls back to the bounding box of everything that is not black padding when the body mask is
    implausibly small (lung-masked images: the lungs are the only content), and to the whole
    image when that fails too, so the crop never loses the chest.
    """
    if min(image.shape) < 8:
        return _whole(image)
    work, scale = work_image(image)
    return _body_box(image.shape, work, scale, body_mask(work))


def _body_box(shape: tuple[int, ...], work: np.ndarray, scale: float, body: np.ndarray) -> Box:
    """:func:`body_box` from the working copy and its body mask (computed once by callers)."""
    h, w = int(shape[0]), int(shape[1])
    whole: Box = (0, h, 0, w)
    box = _bbox(body)
    content = _bbox(work > 0.03)
    if content is None:
        return whole

    def area(b: Box) -> int:
        return (b[1] - b[0]) * (b[3] - b[2])

    # Mostly black (a lung mask on black, a figure on a black page): the content is the chest.
    masked = float(np.mean(work <= 0.03)) > _MASKED_BLACK_SHARE
    if masked or box is None or area(box) < 0.2 * area(content):
        box = content
    return _grown(box, scale, _CROP_MARGIN, (h, w)) or whole


def _grown(
    box: tuple[float, float, float, float], scale: float, margin: float, shape: tuple[int, int]
) -> Box | None:
    """``box`` (in working-copy pixels, ``scale`` of the image) grown by ``margin`` of its
    size, in the image's pixels.

    ``None`` when the result covers less than ``_MIN_CROP_SHARE`` of the image (a failed
    segmentation): the caller falls back to a wider box.
    """
    h, w = shape
    t, b, left, r = box
    mh, mw = (b - t) * margin, (r - left) * margin
    out = (
        max(0, int((t - mh) / scale)),
        min(h, int(np.ceil((b + mh) / scale))),
        max(0, int((left - mw) / scale)),
        min(w, int(np.ceil((r + mw) / scale))),
    )
    if (out[1] - out[0]) * (out[3] - out[2]) < _MIN_CROP_SHARE * h * w:
        return None
    return out


def stretch_percentiles(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Linear stretch of ``image`` so its ``low``/``high`` percentiles map to 0 and 1.

    The anchors are air (darkest percent) and dense tissue or bone (brightest percent): both
    are anatomical references present in every chest slice, so the stretch removes a source's
    contrast setting but keeps the relative density of lung tissue (ground-glass opacity is a
    density increase). Black padding is excluded from the percentiles.
    """
    valid = image[image > 0.03]
    if valid.size < 16:
        return image.astype(np.float32, copy=True)
    lo, hi = np.percentile(valid, [low, high])
    if hi - lo < 1e-3:
        return image.astype(np.float32, copy=True)
    out = (image.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def model_view(image: np.ndarray, prep: Preprocessing = IDENTITY) -> tuple[np.ndarray, Box]:
    """The part of a ``[H, W]`` image the model sees, and where it lies in the image.

    Returns
    -------
    view
        float32 image in [0, 1] (cropped and/or intensity-normalized per ``prep``).
    box
        ``(top, bottom, left, right)`` of ``view`` in the input image, for mapping a CAM back.
    """
    box: Box = CROPS[prep.crop](image)
    view = image[box[0] : box[1], box[2] : box[3]]
    if prep.intensity == "percentile":
        view = stretch_percentiles(view)
    return view.astype(np.float32, copy=False), box


def model_input_with_boxes(
    images: np.ndarray | Sequence[np.ndarray],
    size: Sequence[int],
    prep: Preprocessing = IDENTITY,
) -> tuple[np.ndarray, list[Box]]:
    """:func:`to_model_input` plus each image's crop box (see :func:`model_view`)."""
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = [images]
    views, boxes = [], []
    for im in images:
        view, box = model_view(np.asarray(im), prep)
        views.append(resize(view, size))
        boxes.append(box)
    batch = np.stack(views)
    np.clip(batch, 0.0, 1.0, out=batch)
    return np.ascontiguousarray(batch[:, None, :, :], dtype=np.float32), boxes


def uncrop_cam(
    raw: np.ndarray, box: Box, image_shape: Sequence[int], side: int = 256
) -> np.ndarray:
    """Place a raw ``[C, h, w]`` CAM computed on a crop back into the whole image's frame.

    The result is ``[C, H', W']`` with the image's aspect ratio (long side at most ``side``), the
    map resized into the box and zero outside it: the model saw nothing there, so it holds no
    evidence. Downstream code resizes it to the display size as usual.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    if box == (0, h, 0, w):
        return raw
    scale = min(1.0, side / max(h, w))
    oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
    t, b = int(box[0] * scale), max(int(box[0] * scale) + 1, round(box[1] * scale))
    left, r = int(box[2] * scale), max(int(box[2] * scale) + 1, round(box[3] * scale))
    b, r = min(b, oh), min(r, ow)
    out = np.zeros((raw.shape[0], oh, ow), np.float32)
    for c in range(raw.shape[0]):
        out[c, t:b, left:r] = cv2.resize(
            raw[c].astype(np.float32), (r - left, b - t), interpolation=cv2.INTER_LINEAR
        )
    return out


def _lungs_work(work: np.ndarray, body: np.ndarray | None = None) -> np.ndarray:
    """:func:`lung_mask` on the working copy (see :func:`work_image`) and its body mask."""
    body = body_mask(work) if body is None else body
    filled = np.zeros_like(body, dtype=np.uint8)
    contours, _ = cv2.findContours(
        body.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    lungs = filled.astype(bool) & ~body
    k = max(3, round(min(work.shape) * 0.015) | 1)
    lungs = cv2.morphologyEx(
        lungs.astype(np.uint8), cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    ).astype(bool)
    lungs = largest_components(lungs, keep_share=0.15)
    if lungs.sum() < 0.03 * lungs.size:  # no enclosed dark field: lungs on a black mask
        lungs = largest_components(work > 0.03, keep_share=0.15)
    return lungs


def to_image_size(mask: np.ndarray, image: np.ndarray, scale: float) -> np.ndarray:
    """A mask found on :func:`work_image`'s copy (``scale`` of ``image``) at ``image``'s size
    (nearest neighbour: a mask stays a mask)."""
    if scale >= 1.0:
        return mask
    return cv2.resize(
        mask.astype(np.uint8), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST
    ).astype(bool)


def lung_mask(image: np.ndarray) -> np.ndarray:
    """Approximate aerated-lung mask of a lung-windowed CT slice (for CAM checks, not display).

    Lungs are the large dark regions enclosed by the body: the body mask's holes (filled
    outline minus tissue), opened to drop vessels' gaps, keeping the large components. For
    images that are only lungs on black (masked sources), the non-black content is the lungs.
    Dense lesions (consolidation) are not dark, so they fall outside this mask; see
    :func:`lung_field` for the field that includes them.
    """
    work, scale = work_image(image)
    return to_image_size(_lungs_work(work), image, scale)


def fill_bites(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus what its components' convex hulls add within 4% of the image side of it.

    The hull of each lung fills the bites a subpleural lesion makes in the dark field; keeping
    only the hull's pixels near the lung stops it from spanning the cardiac notch or the
    mediastinum between two lungs that touch.
    """
    r = max(1, round(min(mask.shape) * 0.04))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    near = cv2.dilate(mask.astype(np.uint8), disc).astype(bool)
    hulls = np.zeros(mask.shape, np.uint8)
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    for c in contours:
        cv2.drawContours(hulls, [cv2.convexHull(c)], -1, 1, thickness=cv2.FILLED)
    filled = np.zeros(mask.shape, np.uint8)  # holes (lesions inside a lung) filled too
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool) | (hulls.astype(bool) & near)


def lung_field(image: np.ndarray) -> np.ndarray:
    """The lung fields of a lung-windowed CT slice, lesions inside them included.

    :func:`lung_mask` with its holes and bites filled (:func:`fill_bites`): ground-glass opacity
    and consolidation are denser than aerated lung, so the dark-field mask leaves holes and bites
    exactly where COVID-19 lesions are (subpleural and posterior, Bernheim et al. 2020). The fill
    puts them back; it also takes in a little of the hilum, which is why a share of CAM mass
    measured with it is reported beside the dark-field one, not instead.
    """
    work, scale = work_image(image)
    return to_image_size(fill_bites(_lungs_work(work)), image, scale)


def lung_box(image: np.ndarray) -> Box:
    """Bounding box of both lung fields (plus a margin) in a lung-windowed ``[H, W]`` image.

    The crop every source shares: a round field of view, the chest wall and the table (ct-512,
    mosmed) are cut away, so the frame looks like the lung-cropped sources (sars-cov-2-ct) and
    the lung-masked one (normal-ct-512). When the lung mask is implausible (narrower than half
    the body, or a sliver) the body's box is used: the crop never loses a lung.
    """
    if min(image.shape) < 8:
        return _whole(image)
    work, scale = work_image(image)
    tissue = body_mask(work)
    body = _body_box(image.shape, work, scale, tissue)
    box = _bbox(_lungs_work(work, tissue))
    if box is None:
        return body
    t, b, left, r = (v / scale for v in box)  # in the image's pixels
    narrow = (r - left) < 0.5 * (body[3] - body[2])  # one lung found, not both
    sliver = (b - t) < 0.3 * (body[1] - body[0])
    if narrow or sliver:
        return body
    return _grown((t, b, left, r), 1.0, _LUNG_MARGIN, (image.shape[0], image.shape[1])) or body


def _whole(image: np.ndarray) -> Box:
    return (0, int(image.shape[0]), 0, int(image.shape[1]))


#: Crop methods by manifest name (``input.preprocessing.crop``).
CROPS: dict[str, Callable[[np.ndarray], Box]] = {
    "none": _whole,
    "body": body_box,
    "lungs": lung_box,
}
