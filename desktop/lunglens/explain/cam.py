"""Class activation map -> heat map at image size.

The ONNX ``cam`` output is the classifier weights times the last feature maps (unnormalized, can be
negative). For a global-average-pool + linear head this equals Grad-CAM, so the app needs no
gradients. Here it becomes a display map: ReLU (only evidence *for* the class), bilinear upsampling
to the image size, and scaling to [0, 1] by its maximum (so zero stays "no evidence").

A map scaled to its own maximum always reaches full colour, however weak its evidence: on the CT
model the positive class's peak is about 16 on flagged slices and 0.03 on slices that are not
flagged (medians over 160 validation slices), and both used to show the same red blob. So a slice
or image that is **not flagged** on its own has its map scaled to at least the model's
``cam_reference`` (the median peak of flagged validation positives, manifest): weak evidence
stays faint (:func:`display_floor`). The unit is the slice, as the reference was measured: in a
flagged CT series, a slice that alone stays under the slice threshold is drawn faint too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from lunglens.inference.result import ScanResult

#: Said with a map drawn with a floor (the app's CAM panel, the PDF report, ``classify --cam``).
FLOOR_NOTE = (
    "Not flagged: colours scaled to at least the peak of a typical flagged image, "
    "so weak evidence is faint"
)


def display_floor(flagged: bool, label: str, reference: Mapping[str, float]) -> float | None:
    """The least peak a map of ``label`` is scaled to: the model's reference peak when the
    slice or image is not flagged, else None (a flagged one's map, and a class without a
    reference, are scaled to their own maximum)."""
    return None if flagged else reference.get(label)


def result_floor(result: ScanResult, label: str, index: int | None = None) -> float | None:
    """:func:`display_floor` of ``label`` on slice ``index`` of ``result`` (default: its
    representative slice, the one its CAM belongs to), judged by that slice's own decision."""
    shown = result.slice_flagged(result.representative_slice if index is None else index)
    return display_floor(shown, label, result.cam_reference)


def cam_map(
    result_or_raw_cam: ScanResult | np.ndarray,
    class_index: int | str | None = None,
    out_size: Sequence[int] | None = None,
    floor: float | None = None,
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
    floor
        Scale to ``max(peak, floor)`` instead of the peak (:func:`display_floor`). For a
        :class:`~lunglens.inference.ScanResult` it defaults to the floor of its representative
        slice (the slice its CAM belongs to).
    """
    if isinstance(result_or_raw_cam, ScanResult):
        result = result_or_raw_cam
        if result.cam is None:
            raise ValueError("the result has no CAM; classify with with_cam=True")
        labels = result.labels
        if class_index is None:
            class_index = result.cam_class
        if isinstance(class_index, str):
            class_index = labels.index(class_index)
        raw = result.cam[class_index]
        if floor is None:
            floor = result_floor(result, labels[class_index])
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
    if floor is not None and np.isfinite(floor):
        peak = max(peak, float(floor))
    if peak <= 1e-12 or not np.isfinite(peak):
        return np.zeros_like(heat, dtype=np.float32)
    return (heat / np.float32(peak)).astype(np.float32)
