"""The decision rule: which class a probability vector is reported as, and whether it is flagged.

One rule serves the app (one scan at a time, :func:`decide`) and training (whole validation
arrays, :func:`decide_classes`), so the threshold a model card reports is applied the same way
the app applies it.
"""

from __future__ import annotations

import numpy as np

from lunglens.models.registry import ModelInfo


def decide_classes(probs: np.ndarray, positive: int, threshold: float) -> np.ndarray:
    """Class index per row of ``[..., C]`` probabilities under a threshold on one class.

    The positive class wins when its probability is >= ``threshold``; otherwise the most
    probable of the *other* classes does (for two classes: plain thresholding). With a
    threshold other than 0.5 the prediction therefore always agrees with the flag: no row is
    predicted positive without reaching the threshold, and none reaches it without being
    predicted positive. Ties between the other classes go to the lower index, as
    :func:`numpy.argmax`.

    Parameters
    ----------
    probs
        ``[C]`` for one image or ``[N, C]`` for many; the last axis holds the classes.
    positive
        Index of the class the threshold applies to.
    threshold
        Operating point (the manifest's ``threshold`` or ``series_threshold``).

    Returns
    -------
    numpy.ndarray
        Integer class indices of shape ``probs.shape[:-1]`` (0-d for one vector).
    """
    probs = np.asarray(probs)
    others = np.where(np.arange(probs.shape[-1]) == positive, -np.inf, probs)
    return np.where(probs[..., positive] >= threshold, positive, others.argmax(-1))


def decide(probs: np.ndarray, info: ModelInfo, threshold: float | None = None) -> tuple[str, bool]:
    """Return ``(prediction, flagged)`` for a ``[C]`` probability vector of model ``info``.

    :func:`decide_classes` with the model's positive label and threshold (the manifest's
    ``threshold`` when ``threshold`` is None). Models have at least two labels (the registry
    refuses others), so the prediction is the positive label exactly when the scan is flagged.
    """
    pos = info.positive_index
    idx = int(decide_classes(probs, pos, info.threshold if threshold is None else threshold))
    return info.labels[idx], idx == pos
