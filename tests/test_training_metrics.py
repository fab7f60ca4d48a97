"""Metrics of the training module against hand-computed values (numpy only, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from lunglens.training.metrics import (
    binary_metrics,
    choose_threshold,
    classification_report,
    decide,
    macro_auc,
    mean_ci,
    roc_auc,
)


def test_binary_metrics_hand_computed() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([1, 1, 0, 0, 0, 1, 0, 1])
    m = binary_metrics(y, p, None)
    assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (3, 3, 1, 1)
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.75)


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 2)  # ties on purpose
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        len(pos) * len(neg)
    )
    assert roc_auc(y, s) == pytest.approx(pairwise)
    assert np.isnan(roc_auc(np.ones(5), np.arange(5.0)))


def test_threshold_meets_sensitivity_floor() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
    thr = choose_threshold(y, p, 0.95)
    sens = ((p >= thr) & (y == 1)).sum() / (y == 1).sum()
    assert sens >= 0.95
    assert ((p >= thr + 0.02) & (y == 1)).sum() / (y == 1).sum() < sens or thr >= 0.99


def test_three_class_decision_rule_and_report() -> None:
    probs = np.array([[0.30, 0.50, 0.20], [0.10, 0.20, 0.70], [0.60, 0.30, 0.10]])
    assert decide(probs, 0, 0.25).tolist() == [0, 2, 0]
    rep = classification_report(
        np.array([0, 2, 1]), probs, ["covid", "normal", "pneumonia"], 0, 0.25
    )
    assert rep["accuracy"] == pytest.approx(2 / 3)
    assert rep["confusion"] == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]


def test_mean_ci_t_interval() -> None:
    ci = mean_ci([0.9, 0.92, 0.94, 0.96, 0.98])
    half = 2.776 * np.std([0.9, 0.92, 0.94, 0.96, 0.98], ddof=1) / np.sqrt(5)
    assert ci["mean"] == pytest.approx(0.94)
    assert ci["hi"] - ci["mean"] == pytest.approx(half)
    assert ci["mean"] - ci["lo"] == pytest.approx(half)
    # near 100% the interval is cut at the metric's range, the mean is not
    high = mean_ci([0.99, 1.0, 1.0, 0.98, 1.0])
    assert high["hi"] == 1.0 and high["lo"] < high["mean"] == pytest.approx(0.994)
    assert mean_ci([0.0, 0.01, 0.0, 0.02, 0.0])["lo"] == 0.0


def test_macro_auc_averages_one_vs_rest() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    perfect = np.eye(3)[y] * 0.8 + 0.1
    assert macro_auc(y, perfect) == pytest.approx(1.0)
    # class 2 ranked exactly backwards, the others perfect: (1 + 1 + 0) / 3
    probs = perfect.copy()
    probs[:, 2] = [0.9, 0.9, 0.9, 0.9, 0.0, 0.0]
    assert macro_auc(y, probs) == pytest.approx(2 / 3)
    # a class absent from y is skipped, not counted as NaN
    assert macro_auc(np.array([0, 0, 1, 1]), np.eye(3)[[0, 0, 1, 1]]) == pytest.approx(1.0)
    assert np.isnan(macro_auc(np.array([0, 0]), np.eye(3)[[0, 0]]))


def test_group_report_aggregates_slices_like_the_app() -> None:
    from lunglens.training.metrics import group_report

    # patient a: covid, one clear slice among normal ones (top-2 mean 0.55 -> flagged at 0.5;
    # the plain mean 0.3 would miss it); b: non-covid, all low; c: mixed labels -> left out
    pos_p = np.array([0.9, 0.2, 0.1, 0.1, 0.2, 0.3, 0.8, 0.1])
    probs = np.stack([pos_p, 1 - pos_p], axis=1)
    y = np.array([0, 0, 0, 0, 1, 1, 0, 1])
    groups = np.array(["a", "a", "a", "a", "b", "b", "c", "c"])
    rep = group_report(y, probs, groups, ["covid", "non-covid"], 0, 0.5, "top_k_mean", 2)
    assert rep["groups"] == 2 and rep["mixed_groups_skipped"] == 1
    assert rep["slices_per_group"] == {"median": 3.0, "max": 4}
    r = rep["report"]
    assert r["n"] == 2 and r["accuracy"] == 1.0
    assert r["per_class"]["covid"]["sensitivity"] == 1.0
    assert r["per_class"]["covid"]["specificity"] == 1.0
    # with the plain mean the covid patient falls below the threshold
    mean = group_report(y, probs, groups, ["covid", "non-covid"], 0, 0.5, "mean", 2)
    assert mean["report"]["per_class"]["covid"]["sensitivity"] == 0.0
