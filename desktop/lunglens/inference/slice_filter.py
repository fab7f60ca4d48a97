"""Which slices of a CT series are scored: those that look like chest CT to the CT model.

Why: a real chest CT series runs from the neck to the upper abdomen, and the chest-image gate
accepts a series when a quarter of its sampled slices pass (:mod:`lunglens.inference.gate`).
The CT model was trained on chest slices only; it scores head, neck and abdominal slices at
about 0.5 (head slices 0.46-0.53, a pancreas slice 0.51), well over the series threshold
(0.215, a top-3 mean), so a series whose top three came from its non-chest slices would be
flagged on them: 12 untagged head slices and 4 chest slices were flagged at P 0.505 where the
4 chest slices alone give 0.078. Every slice of a series therefore goes through the gate's CT
feature check (:mod:`lunglens.inference.gate_feature_check`), and the series is scored from
the slices that pass; the others are listed in the result ("not scored") and get no
probability of their own in any output.

What it does not catch: CT slices of the neck base and the upper abdomen that pass the check
(a neck-base slice at feature distance 13.7-14.5, a pancreas slice at 15.9, threshold 17.7) are
scored, at P 0.46-0.51, so two or three of them can still flag a series
(docs/measurements.md).

The check costs almost nothing when the CT model it was fitted on scores the series: its
stage-4 output comes from the scoring pass itself (:func:`fused_output`). Another CT model
(``squeezenet-light-ct``) pays a second pass of the fitted model, pruned to stage 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lunglens.errors import NotChestImage
from lunglens.inference.gate_feature_check import FeatureCheck
from lunglens.inference.wording import counted, slice_ranges
from lunglens.models.registry import ModelInfo


def fused_output(check: FeatureCheck | None, info: ModelInfo) -> str | None:
    """The layer output to ask the scoring pass for, when the model ``info`` scoring the series
    is the very folder the check was fitted on (a copy with another input contract computes
    other features; the same folder reached through a link is the same); ``None``: no check
    owed, or a second pass is needed
    (:func:`~lunglens.inference.gate_feature_check.separate_descriptors`)."""
    if check is None or check.model.path.resolve() != info.path.resolve():
        return None
    return check.output


def scoring_outputs(check: FeatureCheck | None, info: ModelInfo) -> tuple[tuple[str, ...], bool]:
    """The outputs a scoring pass of ``info`` asks for, and whether it must run the graph
    pruned to exactly them (:meth:`~lunglens.inference.engine.Engine.predict`)."""
    layer = fused_output(check, info)
    return (("probs", layer), True) if layer else (("probs",), False)


def left_out(check: FeatureCheck, descriptors: np.ndarray, source: str) -> tuple[int, ...]:
    """0-based indices of the slices left out of the score: those whose feature distance is
    over the check's threshold, wherever they lie in the series. (Leaving out only the runs at
    either end was tried: one passing abdominal slice at the end then brought the failing ones
    before it back into the score, and a trial flagged a series on them.)

    Raises
    ------
    NotChestImage
        No slice passes: nothing of the series looks like chest CT to the CT model (the
        gate's quorum on sampled slices lets this through only at the edge of the threshold).
    """
    dist = check.stats.distances(descriptors)[:, 0]
    threshold = float(check.stats.threshold[0])
    out = tuple(int(i) for i in np.flatnonzero(dist > threshold))
    if len(out) == len(dist):
        raise NotChestImage(
            source,
            f"not a chest scan: none of its {len(dist)} slices looks like a chest CT slice to "
            f"the CT model {check.model.name} (least feature distance {dist.min():.1f}, "
            f"threshold {threshold:.1f})",
            "No score is given: LungLens scores chest CT slices and chest X-rays only.",
        )
    return out


def left_out_note(check: FeatureCheck, unscored: Sequence[int], n_slices: int) -> str:
    """What a result says about the slices left out of its score ("" when none were)."""
    if not unscored:
        return ""
    one = len(unscored) == 1
    kept = n_slices - len(unscored)
    rest = "the other slice" if kept == 1 else f"the other {kept} slices"
    return (
        f"{counted(len(unscored), 'slice')} of {n_slices} not scored "
        f"({'slice' if one else 'slices'} {slice_ranges(unscored)}): "
        f"{'it does' if one else 'they do'} not look like chest CT to the CT model "
        f"{check.model.name} (feature distance over {float(check.stats.threshold[0]):.1f}); "
        f"the series score comes from {rest}"
    )
