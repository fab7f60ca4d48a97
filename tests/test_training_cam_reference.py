"""The CAM scale of a not-flagged scan (``Pipeline.stage_cam_reference``): the median positive
CAM peak of the flagged validation positives, recorded only when there is one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from lunglens.training.data import ImageSet
from lunglens.training.pipeline import Pipeline, PipelineOptions
from lunglens.training.presets import PRESETS


def _pipeline(tmp_path: Path, cams: list[tuple[float, float]]) -> tuple[Pipeline, ImageSet]:
    """A pipeline whose validation positives give ``(CAM peak, P)`` pairs."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "state.json").write_text(json.dumps({"operating_point": {"threshold": 0.5}}))
    opts = PipelineOptions(tmp_path, tmp_path / "m", work, device="cpu")
    pipe = Pipeline(PRESETS["ct-squeezenet-scratch"], opts, log=lambda m: None)
    ds = ImageSet(np.zeros((1, 4, 4), np.uint8), np.zeros(1, int), [], ["covid", "non-covid"])

    def fake(ds: ImageSet, limit: int = 150):  # type: ignore[no-untyped-def]
        for i, (peak, p) in enumerate(cams):
            cam = np.full((2, 3, 3), -1.0, np.float32)
            cam[0, 1, 1] = peak
            yield i, np.zeros((8, 8), np.float32), cam, p

    pipe.positive_validation_cams = fake  # type: ignore[method-assign]
    pipe.val_fold = lambda ds: 4  # type: ignore[method-assign]
    return pipe, ds


def test_reference_is_the_median_peak_of_the_flagged_positives(tmp_path: Path) -> None:
    pipe, ds = _pipeline(tmp_path, [(10.0, 0.9), (2.0, 0.6), (30.0, 0.7), (99.0, 0.2)])
    pipe.stage_cam_reference(ds)
    ref = pipe.state["cam_reference"]
    assert ref["values"] == {"covid": 10.0}, "the not-flagged 99 is left out"
    assert "3 flagged 'covid' images" in ref["rule"] and "threshold 0.5000" in ref["rule"]
    assert ref["flagged_peak_percentiles"]["50"] == 10.0


def test_no_reference_without_flagged_evidence(tmp_path: Path) -> None:
    pipe, ds = _pipeline(tmp_path, [(-3.0, 0.9), (5.0, 0.1)])  # flagged, but all negative
    pipe.stage_cam_reference(ds)
    assert pipe.state["cam_reference"] == {"values": {}, "threshold": 0.5}, "measured, none"


def test_reference_is_measured_again_when_the_threshold_moves(tmp_path: Path) -> None:
    """The flagged set depends on the threshold: a re-run whose CV moved it measures again;
    one at the same threshold does not (150 INT8 inferences saved)."""
    pipe, ds = _pipeline(tmp_path, [(10.0, 0.9), (2.0, 0.6), (30.0, 0.7)])
    pipe.stage_cam_reference(ds)
    assert pipe.state["cam_reference"]["values"] == {"covid": 10.0}
    pipe.state["cam_reference"]["values"] = {"covid": -1.0}  # would show if measured again
    pipe.stage_cam_reference(ds)
    assert pipe.state["cam_reference"]["values"] == {"covid": -1.0}
    pipe.state["operating_point"]["threshold"] = 0.65  # 0.6 no longer flagged
    pipe.stage_cam_reference(ds)
    assert pipe.state["cam_reference"]["values"] == {"covid": 20.0}
    assert pipe.state["cam_reference"]["threshold"] == 0.65
