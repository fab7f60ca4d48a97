"""Classification metrics per class, with confidence intervals across folds (numpy only).

One-vs-rest per class: accuracy, sensitivity (recall), specificity, precision, F1 and ROC AUC
(Mann-Whitney U statistic, ties counted half). Across the k group-wise folds the 95% interval
is mean +- t(0.975, k-1) * sd / sqrt(k); per data source the pooled out-of-fold predictions are
used, because several sources hold a single class (then only the defined metrics are given).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# the decision rule is the app's own, so metrics are measured as the app decides
from lunglens.inference.decision import decide_classes as decide
from lunglens.report.statistics import choose_threshold, roc_auc

__all__ = [
    "binary_metrics",
    "choose_threshold",
    "classification_report",
    "decide",
    "group_report",
    "group_scores",
    "macro_auc",
    "mean_ci",
    "roc_auc",
    "roc_curve",
    "summarize_folds",
]

_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest ROC AUC over the classes present in ``y`` (NaN if fewer than two).

    Threshold-free, so it is what model selection monitors (the threshold is chosen afterwards).
    """
    aucs = [roc_auc((y == c).astype(int), probs[:, c]) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and thresholds (descending)."""
    thr = np.unique(score)[::-1]
    p, n = max((y_true == 1).sum(), 1), max((y_true == 0).sum(), 1)
    tpr = np.array([((score >= t) & (y_true == 1)).sum() / p for t in thr])
    fpr = np.array([((score >= t) & (y_true == 0)).sum() / n for t in thr])
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thr]


def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def binary_metrics(y_true: np.ndarray, y_pred: np.ndarray, score: np.ndarray | None) -> dict:
    tp = int(((y_pred == 1) & (y_true == 1)).sum())
    tn = int(((y_pred == 0) & (y_true == 0)).sum())
    fp = int(((y_pred == 1) & (y_true == 0)).sum())
    fn = int(((y_pred == 0) & (y_true == 1)).sum())
    sens, prec = _div(tp, tp + fn), _div(tp, tp + fp)
    return dict(
        n=len(y_true),
        tp=tp,
        tn=tn,
        fp=fp,
        fn=fn,
        accuracy=_div(tp + tn, len(y_true)),
        sensitivity=sens,
        specificity=_div(tn, tn + fp),
        precision=prec,
        f1=_div(2 * prec * sens, prec + sens) if tp else (0.0 if fp + fn else float("nan")),
        auc=roc_auc(y_true, score) if score is not None else float("nan"),
    )


def classification_report(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], positive: int, threshold: float
) -> dict:
    """Overall accuracy, macro-F1 and per-class one-vs-rest metrics at a decision rule."""
    pred = decide(probs, positive, threshold)
    per_class = {
        c: binary_metrics((y_true == k).astype(int), (pred == k).astype(int), probs[:, k])
        for k, c in enumerate(classes)
    }
    f1s = [m["f1"] for m in per_class.values() if not math.isnan(m["f1"])]
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(y_true, pred, strict=True):
        confusion[t, p] += 1
    return dict(
        n=len(y_true),
        threshold=float(threshold),
        accuracy=float((pred == y_true).mean()) if len(y_true) else float("nan"),
        macro_f1=float(np.mean(f1s)) if f1s else float("nan"),
        per_class=per_class,
        confusion=confusion.tolist(),
    )


def mean_ci(values: Sequence[float], bounds: tuple[float, float] = (0.0, 1.0)) -> dict:
    """Mean and 95% t-interval across folds (NaNs dropped), truncated to ``bounds``.

    Every metric reported here is a proportion: near 100% the symmetric t-interval of five
    folds spills past 1 ("99.3%-100.1%"), which no reader should see; the interval is cut at
    the metric's range instead (the mean is unchanged).
    """
    v = np.array([x for x in values if not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return dict(mean=float("nan"), lo=float("nan"), hi=float("nan"), k=0)
    if len(v) == 1:
        return dict(mean=float(v[0]), lo=float("nan"), hi=float("nan"), k=1)
    half = _T975.get(len(v) - 1, 1.96) * v.std(ddof=1) / math.sqrt(len(v))
    lo, hi = max(bounds[0], v.mean() - half), min(bounds[1], v.mean() + half)
    return dict(mean=float(v.mean()), lo=float(lo), hi=float(hi), k=len(v))


def summarize_folds(reports: Sequence[dict], classes: Sequence[str]) -> dict:
    """Mean and CI across fold reports for overall and per-class metrics."""
    keys = ["accuracy", "sensitivity", "specificity", "precision", "f1", "auc"]
    return dict(
        accuracy=mean_ci([r["accuracy"] for r in reports]),
        macro_f1=mean_ci([r["macro_f1"] for r in reports]),
        per_class={
            c: {k: mean_ci([r["per_class"][c][k] for r in reports]) for k in keys} for c in classes
        },
    )


def group_scores(
    y_true: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    positive: int,
    method: str = "top_k_mean",
    k: int = 3,
) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """Each group's label and its slices' probabilities aggregated as the app does.

    Returns ``(labels [G], probs [G, C], slices per group, groups skipped)``; groups whose
    slices carry different labels have no single truth and are skipped.
    """
    from lunglens.inference.aggregate import aggregate

    keep_y, keep_p, slices = [], [], []
    mixed = 0
    for g in dict.fromkeys(groups.tolist()):  # first-seen order, deterministic
        sel = groups == g
        labels = np.unique(y_true[sel])
        if len(labels) != 1:
            mixed += 1
            continue
        keep_y.append(int(labels[0]))
        keep_p.append(aggregate(probs[sel], positive, method, k))
        slices.append(int(sel.sum()))
    return np.array(keep_y, dtype=int), np.array(keep_p), slices, mixed


def group_report(
    y_true: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    classes: Sequence[str],
    positive: int,
    threshold: float,
    method: str = "top_k_mean",
    k: int = 3,
) -> dict:
    """Metrics per patient (group) with the app's series aggregation.

    The app scores a CT series by aggregating its slices (:func:`lunglens.inference.aggregate`,
    the manifest's ``series_aggregation``); slice-level CV does not say how that rule behaves.
    Here each group's out-of-fold slice probabilities are aggregated the same way and the group
    is classified at ``threshold``. Groups whose slices carry different labels have no single
    truth and are left out (counted in ``mixed_groups_skipped``).
    """
    keep_y, keep_p, slices, mixed = group_scores(y_true, probs, groups, positive, method, k)
    rep = classification_report(
        keep_y, keep_p.reshape(-1, len(classes)), classes, positive, threshold
    )
    return dict(
        aggregation=dict(method=method, k=k),
        groups=len(keep_y),
        mixed_groups_skipped=mixed,
        slices_per_group=dict(
            median=float(np.median(slices)) if slices else float("nan"),
            max=int(max(slices)) if slices else 0,
        ),
        report=rep,
    )
