"""Small statistics for local validation (``lunglens validate``), numpy only.

Below the training package, so the app computes them without torch: the ROC AUC and the
sensitivity-floor threshold rule are the ones the training module uses for the model cards
(``lunglens.training.metrics`` re-exports them); the Wilson and Hanley-McNeil intervals are for
a single labelled set (the cards' intervals are t-intervals across folds).
"""

from __future__ import annotations

import math

import numpy as np

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with one class only."""
    pos, neg = score[y_true == 1], score[y_true == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    sorted_v = allv[order]
    # average rank of each run of tied values (1-based)
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    run_rank = first + (counts + 1) / 2.0
    ranks = np.empty(len(allv))
    ranks[order] = np.repeat(run_rank, counts)
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def auc_ci(auc: float, n_pos: int, n_neg: int) -> tuple[float, float]:
    """95% interval of an ROC AUC by Hanley & McNeil (1982, Radiology 143:29-36), eq. 2.

    A closed form (no resampling, so the same file gives the same interval every time); it
    assumes the exponential score model of the paper and is a little narrow for small sets.
    NaN bounds when the AUC is undefined.
    """
    if math.isnan(auc) or n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan")
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (
        n_pos * n_neg
    )
    half = Z95 * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def wilson_ci(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (Wilson 1927; Brown, Cai & DasGupta 2001).

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0 or n
    successes, which matters for the small positive counts a clinic's own check has.
    """
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def choose_threshold(y_pos: np.ndarray, p_pos: np.ndarray, min_sensitivity: float = 0.95) -> float:
    """Largest threshold whose sensitivity on these images is >= ``min_sensitivity``.

    A triage aid must not miss positives; among thresholds meeting the sensitivity floor, the
    largest gives the best specificity. Falls back to 0.5 when there are no positives.
    """
    pos = np.sort(p_pos[y_pos == 1])
    if len(pos) == 0:
        return 0.5
    k = math.floor((1.0 - min_sensitivity) * len(pos))
    return float(min(pos[k], 0.99))
