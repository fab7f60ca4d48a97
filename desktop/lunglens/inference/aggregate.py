"""Series aggregation: one score for a CT series from its per-slice probabilities.

COVID-19 findings (ground-glass opacities, consolidation) are focal: they show on a minority of
slices, so the plain mean over a series dilutes a clear finding with dozens of normal slices. The
maximum is the opposite mistake: one noisy slice (motion, a vessel, an artefact) decides the series.
The default, the mean of the top-k slice probabilities (k = 3 unless the manifest says otherwise),
needs a finding on a few slices and is far less noisy than the maximum. Only the slices that
look like chest CT to the CT model reach it (:mod:`lunglens.inference.slice_filter`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: ``(slice_probs [S, C], positive_index, k) -> indices of the slices that make up the score``
Selector = Callable[[np.ndarray, int, int], np.ndarray]


def _top_k(slice_probs: np.ndarray, positive: int, k: int) -> np.ndarray:
    order = np.argsort(-slice_probs[:, positive], kind="stable")
    return order[: max(1, min(k, len(order)))]


def _all(slice_probs: np.ndarray, positive: int, k: int) -> np.ndarray:
    return np.arange(len(slice_probs))


def _max(slice_probs: np.ndarray, positive: int, k: int) -> np.ndarray:
    return _top_k(slice_probs, positive, 1)


#: Aggregation methods by manifest name (``series_aggregation.method``).
AGGREGATORS: dict[str, Selector] = {"top_k_mean": _top_k, "mean": _all, "max": _max}


def aggregate(
    slice_probs: np.ndarray, positive: int, method: str = "top_k_mean", k: int = 3
) -> np.ndarray:
    """Aggregate ``[S, C]`` slice probabilities into one ``[C]`` probability vector.

    The method picks slices (for ``top_k_mean`` the k with the highest positive probability)
    and the class probabilities are averaged over those slices, so the result still sums to 1
    and its positive entry is exactly the mean of the top-k positive probabilities.
    """
    if method not in AGGREGATORS:
        raise ValueError(f"unknown series aggregation {method!r}; known: {sorted(AGGREGATORS)}")
    chosen = AGGREGATORS[method](slice_probs, positive, k)
    return slice_probs[chosen].mean(axis=0).astype(np.float32)


def top_slices(slice_probs: np.ndarray, column: int, n: int = 3) -> list[int]:
    """Indices of the ``n`` slices with the highest probability in ``column``, best first."""
    return [int(i) for i in _top_k(slice_probs, column, n)]
