"""The :class:`ScanResult` every classification returns (CLI, GUI, batch and reports read it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lunglens import DISCLAIMER
from lunglens.inference.wording import headline
from lunglens.io.scan import Modality


@dataclass
class ScanResult:
    """Outcome of classifying one scan (an image or a CT series).

    Attributes
    ----------
    source
        What was scored (the scan's source path).
    model, model_version, model_sha256
        The exact model that produced the numbers (for audit and reproducibility).
    labels
        Class names, in the model's output order.
    probs
        Label -> probability; for a series the aggregate (see
        :mod:`lunglens.inference.aggregate`).
    prediction
        The positive label when ``flagged``, else the most probable other label.
    positive_label, positive_prob
        The triage class and its (aggregated) probability.
    flagged
        ``positive_prob >= threshold``: the scan should be looked at first.
    threshold
        The model's operating threshold from its manifest.
    n_slices
        Slices of the scan (1 for a single image), scored or not.
    slice_probs
        float32 ``[S, C]`` per-slice probabilities (rows of ``unscored_slices`` included: the
        model ran on them, but no output shows them).
    top_slices
        0-based indices of the most suspicious slices (highest positive probability), best
        first; outputs a person reads number slices from 1
        (:func:`lunglens.inference.wording.slice_numbers`).
    representative_slice
        The slice the CAM belongs to (most probable for ``cam_class``).
    cam_class
        Label the representative slice was chosen for (default: the positive label).
    cam
        float32 ``[C, h, w]`` raw class activation maps of the representative slice, or
        ``None`` when not requested. Turn into a heat map with :func:`lunglens.explain.cam_map`.
    cam_reference
        Label -> the model's CAM peak of a typical flagged slice or image (manifest
        ``cam_reference``): the map of a slice that is not flagged on its own is drawn against
        it, not only its own peak (:func:`lunglens.explain.display_floor`). Empty for a model
        without one.
    slice_threshold
        The model's threshold for one slice or image (a series is judged by its own,
        ``threshold``); ``None``: the same as ``threshold``.
    elapsed_ms
        Wall time of preprocessing plus inference.
    modality
        The scan's modality; ``model_modality`` the model's.
    unscored_slices
        0-based indices of the slices of a CT series left out of its score: they do not look
        like chest CT to the CT model (:mod:`lunglens.inference.slice_filter`); the notes say
        so in words. ``top_slices`` and ``representative_slice`` are never among them.
    notes
        Warnings worth showing (e.g. a model of another modality was used).
    disclaimer
        :data:`lunglens.DISCLAIMER`, carried with every result so no output omits it.
    """

    source: str
    model: str
    model_version: str
    model_sha256: str
    labels: tuple[str, ...]
    probs: dict[str, float]
    prediction: str
    positive_label: str
    positive_prob: float
    flagged: bool
    threshold: float
    n_slices: int
    slice_probs: np.ndarray
    top_slices: list[int]
    representative_slice: int
    cam_class: str
    cam: np.ndarray | None = None
    cam_reference: dict[str, float] = field(default_factory=dict)
    slice_threshold: float | None = None
    elapsed_ms: float = 0.0
    modality: str = Modality.UNKNOWN
    model_modality: str = Modality.UNKNOWN
    notes: list[str] = field(default_factory=list)
    disclaimer: str = DISCLAIMER
    unscored_slices: tuple[int, ...] = ()

    def slice_flagged(self, index: int) -> bool:
        """Whether slice ``index`` alone reaches the slice threshold (the unit the CAM's
        reference peak was measured in; a series' own decision is :attr:`flagged`); never for a
        slice left out of the score."""
        if index in self.unscored_slices:
            return False
        pos = self.labels.index(self.positive_label)
        limit = self.threshold if self.slice_threshold is None else self.slice_threshold
        return bool(self.slice_probs[index, pos] >= limit)

    @property
    def headline(self) -> str:
        """The triage decision in words, as every output shows it
        (:func:`lunglens.inference.wording.headline`)."""
        return headline(self)

    def to_dict(self, *, slice_probs: bool = False) -> dict[str, Any]:
        """JSON-ready dict (no arrays except optional per-slice probabilities, ``null`` for the
        slices left out of the score). Slice indices (``top_slices``, ``representative_slice``,
        ``unscored_slices``) count from 0, as in Python; what users read counts from 1
        (``classify --json`` converts them with :func:`~lunglens.inference.wording.slice_numbers`).
        """
        out: dict[str, Any] = {
            "source": self.source,
            "model": self.model,
            "model_version": self.model_version,
            "model_sha256": self.model_sha256,
            "modality": self.modality,
            "model_modality": self.model_modality,
            "labels": list(self.labels),
            "probs": {k: round(float(v), 6) for k, v in self.probs.items()},
            "headline": self.headline,
            "prediction": self.prediction,
            "positive_label": self.positive_label,
            "positive_prob": round(float(self.positive_prob), 6),
            "flagged": self.flagged,
            "threshold": self.threshold,
            "n_slices": self.n_slices,
            "top_slices": list(self.top_slices),
            "representative_slice": self.representative_slice,
            "unscored_slices": list(self.unscored_slices),
            "cam_class": self.cam_class,
            "elapsed_ms": round(self.elapsed_ms, 2),
            "notes": list(self.notes),
            "disclaimer": self.disclaimer,
        }
        if slice_probs:  # a slice left out of the score shows no probability: null
            rows = np.round(self.slice_probs, 6).tolist()
            out["slice_probs"] = [
                None if i in self.unscored_slices else row for i, row in enumerate(rows)
            ]
        return out
