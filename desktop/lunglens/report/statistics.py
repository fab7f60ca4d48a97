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


#: Two-sided 95% quantiles of Student's t for 1-30 degrees of freedom (beyond: t975).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (no scipy in the app):
    the table to 30, then the Cornish-Fisher expansion around the normal quantile (error under
    1e-4 there)."""
    if df < 1:
        return float("nan")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = Z95, float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def clustered_wilson_ci(successes: np.ndarray, totals: np.ndarray) -> tuple[float, float]:
    """95% Wilson interval of ``sum(successes) / sum(totals)`` when the counts come in clusters
    (``successes[c]`` of ``totals[c]`` scans of patient ``c``), whose scans are not independent.

    Korn & Graubard (1998, Survey Methodology 24:193-201): the Wilson interval at the effective
    sample size ``p(1 - p) / var``, ``var`` the cluster-robust (ratio-estimator) variance of the
    pooled proportion, never above the number of scans ``n`` (no narrower than treating them as
    independent), times their degrees-of-freedom factor ``(t(n - 1) / t(C - 1))**2`` for ``C``
    patients. The variance is computed in integers, so patients with equal proportions give
    exactly 0 (then ``n``, times the factor). Without the small-sample factor ``C / (C - 1)``:
    one scan per patient gives Wilson's interval exactly. Where the variance says nothing (every
    scan a success or none, or one patient) each patient counts once.
    """
    keep = totals > 0
    k = [int(x) for x in successes[keep]]
    n = [int(x) for x in totals[keep]]
    big_k, total, clusters = sum(k), sum(n), len(n)
    if total == 0:
        return float("nan"), float("nan")
    p = big_k / total
    if clusters == 1 or big_k in (0, total):
        return wilson_ci(p * clusters, float(clusters))
    # var = sum((k_c - p n_c)^2) / total^2, exactly: sum((k_c T - K n_c)^2) / T^4
    var_num = sum((kc * total - big_k * nc) ** 2 for kc, nc in zip(k, n, strict=True))
    n_eff = float(total) if var_num == 0 else min(total, p * (1 - p) * total**4 / var_num)
    n_eff *= (t975(total - 1) / t975(clusters - 1)) ** 2 if total > 1 else 1.0
    return wilson_ci(p * n_eff, n_eff)


def clustered_auc_ci(
    y_true: np.ndarray, score: np.ndarray, cluster: np.ndarray
) -> tuple[float, float]:
    """95% interval of the ROC AUC when scans come in clusters (patients): Obuchowski (1997,
    Biometrics 53:567-578), the nonparametric variance of DeLong et al. (1988) with the
    structural components summed per patient (it is DeLong's when every patient has one
    scan), with Student's t on (patients - 1) degrees of freedom rather than the normal
    quantile: few patients make the variance itself uncertain. NaN bounds when either class
    has fewer than two patients, the AUC is undefined or the variance is 0.
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
    if var <= 0:
        return float("nan"), float("nan")
    half = t975(i_all - 1) * math.sqrt(var)
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
