"""Per-source class balance of the training loss (``lunglens.training.train``).

A source whose class mix differs from the others (ct-512 is 73% COVID) rewards a model for
recognising the source; the balanced weights take that reward away. Needs the ``train`` extra.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lunglens.training.train import _label_loss, source_balanced_weights  # noqa: E402


def _toy() -> tuple[np.ndarray, np.ndarray]:
    # source a: 30 covid / 10 non-covid; b: 5 / 45; c: covid only (20)
    labels = np.array([0] * 30 + [1] * 10 + [0] * 5 + [1] * 45 + [0] * 20)
    sources = np.array(["a"] * 40 + ["b"] * 50 + ["c"] * 20)
    return labels, sources


def _total(w: np.ndarray, mask: np.ndarray) -> float:
    return float(w[mask].sum())


def test_every_two_class_source_has_the_same_weighted_class_ratio() -> None:
    labels, sources = _toy()
    w = source_balanced_weights(labels, sources, 2, single_class_weight=0.5)
    assert w.mean() == pytest.approx(1.0)
    ratios = [
        _total(w, (sources == s) & (labels == 0)) / _total(w, (sources == s) & (labels == 1))
        for s in ("a", "b")
    ]
    assert ratios[0] == pytest.approx(ratios[1])  # the source's mix tells nothing any more
    assert _total(w, labels == 0) == pytest.approx(_total(w, labels == 1))  # classes balanced
    # the weight stays with the image's cell: a source's rare class is weighted up
    assert w[(sources == "a") & (labels == 1)][0] > w[(sources == "a") & (labels == 0)][0]


def test_single_class_source_is_down_weighted() -> None:
    labels, sources = _toy()
    half = source_balanced_weights(labels, sources, 2, single_class_weight=0.5)
    full = source_balanced_weights(labels, sources, 2, single_class_weight=1.0)
    c = sources == "c"
    share = _total(half, c) / _total(half, labels == 0)
    assert share < _total(full, c) / _total(full, labels == 0)


def test_label_loss_with_unit_image_weights_is_the_plain_mean() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5]])
    y = torch.tensor([0, 1, 1])
    plain = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    fit = SimpleNamespace(weights=None, sample_weights=torch.ones(10))
    got = _label_loss(logits, y, fit, np.array([3, 4, 7]), 0.1)  # type: ignore[arg-type]
    assert float(got) == pytest.approx(float(plain))
    fit.sample_weights = torch.tensor([0.0] * 7 + [5.0, 0.0, 0.0])
    only_last = torch.nn.functional.cross_entropy(logits[2:], y[2:], label_smoothing=0.1)
    got = _label_loss(logits, y, fit, np.array([3, 4, 7]), 0.1)  # type: ignore[arg-type]
    assert float(got) == pytest.approx(float(only_last))
