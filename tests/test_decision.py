"""The one decision rule (inference.decision) shared by the app and training metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lunglens.inference import decide, decide_classes
from lunglens.models import get_model
from lunglens.training import metrics
from onnx_fixtures import make_models_dir


def test_positive_wins_at_the_threshold_else_the_best_other_class() -> None:
    probs = np.array([[0.30, 0.50, 0.20], [0.10, 0.20, 0.70], [0.25, 0.30, 0.45], [0.2, 0.4, 0.4]])
    # row 2 reaches the threshold exactly; row 3: a tie between the others goes to the first
    assert decide_classes(probs, 0, 0.25).tolist() == [0, 2, 0, 1]
    # a class other than the positive one never wins by beating it: row 0 has 0.5 > 0.3
    assert decide_classes(probs, 1, 0.6).tolist() == [0, 2, 2, 2]


def test_one_vector_gives_one_index() -> None:
    out = decide_classes(np.array([0.4, 0.6]), 0, 0.3)
    assert out.shape == () and int(out) == 0
    assert int(decide_classes(np.array([0.4, 0.6]), 0, 0.5)) == 1


def test_training_metrics_use_the_apps_rule() -> None:
    assert metrics.decide is decide_classes


def test_decide_for_a_model_agrees_with_its_flag(tmp_path: Path) -> None:
    info = get_model("synthetic-ct", make_models_dir(tmp_path / "models"))
    pos = info.positive_index
    probs = np.zeros(len(info.labels), np.float32)
    probs[pos], probs[1 - pos] = 0.4, 0.6
    assert decide(probs, info, 0.35) == (info.positive_label, True)
    assert decide(probs, info, 0.45) == (info.labels[1 - pos], False)
    # without a threshold the manifest's own is used
    expect = probs[pos] >= info.threshold
    assert decide(probs, info)[1] == expect


@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.9])
def test_vector_and_batch_agree(threshold: float) -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=50)
    batch = decide_classes(probs, 2, threshold)
    assert [int(decide_classes(p, 2, threshold)) for p in probs] == batch.tolist()
