"""One image through a model, with its CAM in the image's own frame.

A model may see a crop of the image (manifest ``input.preprocessing``, e.g. the body's bounding
box, :func:`lunglens.preprocess.model_view`). Its ``cam`` output then covers the crop only; this
module places it back into the whole image (zero outside the crop: the model saw nothing
there), so every caller overlays maps the same way whatever the model's preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lunglens.inference.engine import Engine
from lunglens.preprocess import model_input_with_boxes, uncrop_cam


def predict_image(
    engine: Engine,
    image2d: np.ndarray,
    outputs: Sequence[str] = ("probs", "cam"),
    *,
    exact: bool = False,
) -> dict[str, np.ndarray]:
    """Run ``outputs`` for one ``[H, W]`` image in [0, 1]; ``cam`` comes back in image frame.

    Returns the engine's outputs with their batch axis of 1 kept; ``cam`` is
    ``[1, C, h', w']`` with the image's aspect ratio when the model crops, else the graph's.
    ``exact``: a graph pruned to exactly ``outputs`` (:meth:`Engine.predict`).
    """
    info = engine.info
    batch, boxes = model_input_with_boxes(image2d, info.input_size, info.preprocessing)
    out = engine.predict(batch, tuple(outputs), exact=exact)
    if "cam" in out:
        out["cam"] = uncrop_cam(out["cam"][0], boxes[0], image2d.shape)[None]
    return out
