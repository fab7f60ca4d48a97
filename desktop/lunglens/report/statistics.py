"""Small statistics for local validation (``lunglens validate``), numpy only.

Below the training package, so the app computes them without torch: the ROC AUC and the
sensitivity-floor threshold rule are the ones the training module uses for the model cards
(``lunglens.training.metrics`` re-exports them); the Wilson and Hanley-McNeil intervals are for
a single labelled set (the cards' intervals are t-intervals across folds). Where the set holds
several scans of one patient, which are not independent, the clustered forms widen them by
patient: Wilson with the design-effect sample size of Korn & Graubard (1998), and the ROC AUC's
variance by Obuchowski (1997). All are closed forms: the same files give the same intervals.
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


def wilson_ci(successes: float, n: float) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (Wilson 1927; Brown, Cai & DasGupta 2001).

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0 or n
    successes, which matters for the small positive counts a clinic's own check has. ``n``
    may be an effective sample size (not a whole number): :func:`clustered_wilson_ci`.
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def clustered_wilson_ci(successes: np.ndarray, totals: np.ndarray) -> tuple[float, float]:
    """95% Wilson interval of ``sum(successes) / sum(totals)`` when the counts come in clusters
    (``successes[c]`` of ``totals[c]`` scans of patient ``c``), whose scans are not independent.

    Korn & Graubard (1998, Survey Methodology 24:193-201): the Wilson interval at the effective
    sample size ``p(1 - p) / var``, ``var`` the cluster-robust (ratio-estimator) variance of the
    pooled proportion, and never above the number of scans (no narrower than treating them as
    independent). Where that variance cannot be estimated (every scan a success or none, or one
    patient) each patient counts once.
    """
    keep = totals > 0
    k, n = successes[keep].astype(float), totals[keep].astype(float)
    total, clusters = n.sum(), len(n)
    if total == 0:
        return float("nan"), float("nan")
    p = k.sum() / total
    # without the small-sample factor C / (C - 1): one scan per patient then gives Wilson's
    # interval exactly, and all-alike patients of equal size the interval of the patients
    var = float(((k - p * n) ** 2).sum()) / total**2 if clusters > 1 else 0.0
    n_eff = min(total, p * (1 - p) / var) if var > 0 and 0 < p < 1 else float(clusters)
    return wilson_ci(p * n_eff, n_eff)


def clustered_auc_ci(
    y_true: np.ndarray, score: np.ndarray, cluster: np.ndarray
) -> tuple[float, float]:
    """95% interval of the ROC AUC when scans come in clusters (patients): Obuchowski (1997,
    Biometrics 53:567-578), the nonparametric variance of DeLong et al. (1988) with the
    structural components summed per patient (it is DeLong's when every patient has one
    scan). NaN bounds when either class has fewer than two patients or the AUC is undefined.
    """
    pos, neg = score[y_true == 1], score[y_true == 0]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return float("nan"), float("nan")
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    # structural components: each positive's share of negatives below it (ties half), each
    # negative's share of positives above it
    v10 = (np.searchsorted(neg_sorted, pos, "left") + np.searchsorted(neg_sorted, pos, "right")) / (
        2.0 * n
    )
    v01 = (
        2 * m - np.searchsorted(pos_sorted, neg, "left") - np.searchsorted(pos_sorted, neg, "right")
    ) / (2.0 * m)
    auc = float(v10.mean())
    _, ids = np.unique(cluster, return_inverse=True)
    size = int(ids.max()) + 1
    pos_ids, neg_ids = ids[y_true == 1], ids[y_true == 0]
    m_i = np.bincount(pos_ids, minlength=size).astype(float)
    n_i = np.bincount(neg_ids, minlength=size).astype(float)
    d10 = np.bincount(pos_ids, weights=v10, minlength=size) - m_i * auc
    d01 = np.bincount(neg_ids, weights=v01, minlength=size) - n_i * auc
    i10, i01, i_all = int((m_i > 0).sum()), int((n_i > 0).sum()), int(((m_i + n_i) > 0).sum())
    if i10 < 2 or i01 < 2:
        return float("nan"), float("nan")
    s10 = i10 / ((i10 - 1) * m) * float((d10**2).sum())
    s01 = i01 / ((i01 - 1) * n) * float((d01**2).sum())
    s11 = i_all / (i_all - 1) * float((d10 * d01).sum())
    var = s10 / m + s01 / n + 2 * s11 / (m * n)
    half = Z95 * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


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
