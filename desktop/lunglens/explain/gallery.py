"""Activation gallery: the most active channels of one layer, each scaled to [0, 1].

Lets a curious user see what early layers respond to (edges, bright regions). It runs the cached
engine with only the requested ``act_<k>`` output, keeps no state between calls, and so uses flat
memory however often the GUI asks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lunglens.inference.engine import Engine
from lunglens.preprocess import to_model_input


def layer_description(index: int, count: int) -> str:
    """What a map of gallery layer ``index`` (of ``count``, input side first) shows, in plain
    words for a clinician.

    The manifest lists gallery layers from the input to the output. Early convolution layers
    respond to local contrast (edges, texture); later ones combine those into larger patterns,
    and the last feature maps are what the classifier weighs (the class activation map is a
    weighted sum of them).
    """
    where = index / max(1, count - 1) if count > 1 else 1.0
    if where < 1 / 3:
        return (
            "Early layer: each map lights up where the image has a certain edge, contrast or "
            "texture (bright = strong response). It shows what the model sees, not a finding."
        )
    if where < 2 / 3:
        return (
            "Middle layer: maps combine edges and textures into larger shapes and regions. "
            "Bright = strong response; not a finding."
        )
    return (
        "Late layer: maps show the patterns the decision rests on; the class activation map "
        "is a weighted sum of such maps. Bright = strong response; not a lesion outline."
    )


@dataclass(frozen=True)
class ChannelMap:
    """One channel's activation: its index, mean activation, and map normalized to [0, 1]."""

    channel: int
    mean: float
    map: np.ndarray


def activation_maps(
    engine: Engine, image2d: np.ndarray, layer_output: str, top_n: int = 16
) -> list[ChannelMap]:
    """Return the ``top_n`` channels of ``layer_output`` with the highest mean activation.

    Parameters
    ----------
    engine
        From :func:`lunglens.inference.get_engine` (reused, never created here).
    image2d
        ``[H, W]`` float in [0, 1].
    layer_output
        A gallery output of the model (``act_<k>``, listed in ``engine.info.gallery``).
    top_n
        How many channels to return, most active first.
    """
    batch = to_model_input(image2d, engine.info.input_size, engine.info.preprocessing)
    act = engine.predict(batch, (layer_output,))[layer_output][0]
    if act.ndim != 3:
        raise ValueError(f"{layer_output} is not a [C, h, w] feature map (shape {act.shape})")
    means = act.reshape(act.shape[0], -1).mean(axis=1)
    order = np.argsort(-means, kind="stable")[: max(0, top_n)]
    out: list[ChannelMap] = []
    for ch in order:
        fmap = act[ch].astype(np.float32)
        lo, hi = float(fmap.min()), float(fmap.max())
        norm = (fmap - lo) / (hi - lo) if hi > lo else np.zeros_like(fmap)
        out.append(ChannelMap(int(ch), float(means[ch]), norm.astype(np.float32)))
    return out


def tile(maps: Sequence[ChannelMap | np.ndarray], cols: int = 4, gap: int = 1) -> np.ndarray:
    """Arrange maps in a grid (row-major) with ``gap`` pixels of 0 between them.

    Returns a float32 ``[H, W]`` image in [0, 1]; empty cells stay 0.
    """
    arrays = [m.map if isinstance(m, ChannelMap) else np.asarray(m, np.float32) for m in maps]
    if not arrays:
        return np.zeros((1, 1), np.float32)
    cols = max(1, min(cols, len(arrays)))
    rows = math.ceil(len(arrays) / cols)
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    out = np.zeros((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap), np.float32)
    for i, arr in enumerate(arrays):
        r, c = divmod(i, cols)
        y, x = r * (h + gap), c * (w + gap)
        out[y : y + arr.shape[0], x : x + arr.shape[1]] = arr
    return out
