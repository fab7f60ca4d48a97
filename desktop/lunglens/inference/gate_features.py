"""The learned gate's descriptor of an image: what the Mahalanobis statistics are fitted on.

:func:`descriptor` joins the ``modality-check`` model's pooled activations with the image's
contrast-normalised layout, grey-level histogram and edge statistics; ``ood.npz`` records the
:data:`DESCRIPTOR_VERSION` it was fitted with, so a changed descriptor cannot be compared with
old statistics.
"""

from __future__ import annotations

import numpy as np

from lunglens.inference.engine import Engine

#: Thumbnail size of the layout part of :func:`descriptor`.
LAYOUT = 8
#: Grey-level histogram bins of :func:`descriptor`.
HIST_BINS = 16
#: Version of :func:`descriptor`; ``ood.npz`` records the one it was fitted with.
DESCRIPTOR_VERSION = 1
#: Version of :func:`feature_descriptor`; ``ct_features.npz`` records the one it was fitted with.
FEATURE_DESCRIPTOR_VERSION = 1


def descriptor(engine: Engine, batch: np.ndarray) -> np.ndarray:
    """``[N, D]`` float64 descriptors of a ``[N, 1, H, W]`` model-input batch.

    Joins (i) the ``modality-check`` model's gallery activations, averaged over space (what
    the network sees), (ii) the image's ``LAYOUT x LAYOUT`` thumbnail standardised to zero
    mean and unit spread (where dark and bright are: lungs, mediastinum, body outline, with
    window and exposure removed), (iii) a ``HIST_BINS``-bin grey-level histogram and (iv) edge
    statistics (mean absolute neighbour difference relative to the spread; spread; mean).
    The network features alone separate photos from chest images poorly (measured in the
    model card), the layout and histogram carry most of the power.
    """
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    names = [g.output for g in engine.info.gallery]
    out = engine.predict(batch, names)
    pooled = [np.asarray(out[n], np.float64).mean(axis=(2, 3)) for n in names]
    im = batch[:, 0].astype(np.float64)
    n, h, w = im.shape
    thumb = im.reshape(n, LAYOUT, h // LAYOUT, LAYOUT, w // LAYOUT).mean(axis=(2, 4))
    thumb = thumb.reshape(n, -1)
    thumb = (thumb - thumb.mean(1, keepdims=True)) / (thumb.std(1, keepdims=True) + 0.02)
    flat = im.reshape(n, -1)
    hist = np.stack([np.histogram(x, bins=HIST_BINS, range=(0.0, 1.0))[0] for x in flat])
    spread = im.std(axis=(1, 2)) + 1e-3
    edges = np.stack(
        [
            np.abs(np.diff(im, axis=2)).mean(axis=(1, 2)) / spread,
            np.abs(np.diff(im, axis=1)).mean(axis=(1, 2)) / spread,
            spread,
            im.mean(axis=(1, 2)),
        ],
        axis=1,
    )
    return np.concatenate([*pooled, thumb, hist / flat.shape[1], edges], axis=1)


def feature_descriptor(activations: np.ndarray) -> np.ndarray:
    """``[N, C]`` float64 descriptors of a ``[N, C, H, W]`` layer output: each channel averaged
    over space, its negative part dropped, then ``log(1 + x)`` (the CT feature check,
    :mod:`lunglens.inference.gate_feature_check`).

    The log tames the heavy right tail of the activations so that one Gaussian fits them.
    Dropping the negative part was chosen by measurement: with the signed log instead, chest
    CT of a source left out of fitting was accepted less often (covid-ct-ucsd 91% vs 97%, the
    lung-masked normal-ct-512 0% vs 80%; docs/measurements.md).
    """
    pooled = np.asarray(activations, np.float64).mean(axis=(2, 3))
    return np.log1p(np.maximum(pooled, 0.0))
