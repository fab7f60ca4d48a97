"""The chest-image gate's CT feature check: the CT model's own features must look like chest CT.

Why: the learned check (:func:`lunglens.inference.gate.learned_check`) compares an image with
the training images in the small ``modality-check`` network's features and the image's layout.
A CT slice of the head, neck or abdomen saved without its header (a PNG, a JPEG) passes it at
0.6-0.9 of the CT threshold, and the CT model then flags it (P about 0.5). The default CT
model's mid-level features (EfficientNet-Lite0 stage 4: ImageNet-pretrained, fine-tuned on chest
CT) tell them apart: the Mahalanobis distance (Lee et al. 2018, NeurIPS) of the slice's
:func:`~lunglens.inference.gate_features.feature_descriptor` to the chest CT training slices,
with the threshold at a quantile of held-out distances (group-wise folds).

The modality check's manifest names it (block ``feature_check``, sealed): the model by name and
the SHA-256 of its ONNX file (features of another file mean nothing to these statistics), the
layer output, and the statistics file with its own SHA-256. ``lunglens-train ood`` fits it;
``models/modality-check/MODEL_CARD.md`` has what it was measured on, and its limits.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from lunglens.errors import ModelNotFound, ModelRefused
from lunglens.inference.engine import get_engine
from lunglens.inference.gate_features import feature_descriptor
from lunglens.inference.gate_stats import GateStats, load_stats, quorum_slice, sample_slices
from lunglens.io.scan import Scan
from lunglens.models.registry import ModelInfo, get_model
from lunglens.preprocess import to_model_input

#: Manifest block of the modality check that names the feature check.
BLOCK = "feature_check"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureCheck:
    """A fitted feature check: whose features, which output, and the statistics.

    Attributes
    ----------
    model
        The triage model whose layer output is compared (its file's hash was checked).
    output, layer
        The ONNX output (``act_3``) and the layer it is (``stage4``), for messages.
    stats
        One Gaussian (label = the modality, ``ct``) and its threshold.
    """

    model: ModelInfo
    output: str
    layer: str
    stats: GateStats

    @property
    def modality(self) -> str:
        return self.stats.labels[0]


@dataclass(frozen=True)
class FeatureDistance:
    """The distance of the slice that decides (see :func:`quorum_slice`)."""

    distance: float
    threshold: float
    slices: int

    @property
    def passed(self) -> bool:
        return self.distance <= self.threshold


def load_feature_check(
    gate: ModelInfo, models_dir: str | os.PathLike[str] | None = None
) -> FeatureCheck | None:
    """The feature check named by the modality check ``gate``, or ``None`` if it names none.

    Raises
    ------
    ModelRefused
        The statistics failed their integrity check, the named model is not installed in a
        folder where the gate expects it, or its ONNX file is not the one the statistics were
        fitted on (a CT model updated without ``lunglens-train ood``): the gate must not pass
        everything silently.
    """
    entry = gate.manifest.get(BLOCK)
    if not entry:
        return None
    stats = load_stats(gate, BLOCK)
    assert stats is not None  # the block exists
    name = str(entry.get("model", ""))
    try:
        model = get_model(name, models_dir)
    except ModelNotFound as exc:
        raise ModelRefused(
            gate.path / "manifest.json",
            f"the chest-image gate's CT feature check needs the model {name!r}, which is not "
            "installed",
            "Install the models shipped with this version, or refit the gate with "
            "'lunglens-train ood'.",
        ) from exc
    want = str(entry.get("model_sha256", "")).lower()
    if model.sha256.lower() != want:
        raise ModelRefused(
            model.path,
            f"the chest-image gate's CT feature check was fitted on {name} {want[:12]}..., the "
            f"installed file is {model.sha256[:12]}...",
            "Refit the gate with 'lunglens-train ood' after changing a model.",
        )
    return FeatureCheck(model, str(entry["output"]), str(entry.get("layer", "")), stats)


def feature_distance(scan: Scan, check: FeatureCheck) -> FeatureDistance:
    """Distance of ``scan``'s deciding slice (up to 16 sampled, a quarter must pass)."""
    idx = sample_slices(scan.n_slices)
    batch = to_model_input(scan.image[idx], check.model.input_size, check.model.preprocessing)
    out = get_engine(check.model).predict(batch, (check.output,))[check.output]
    dist = check.stats.distances(feature_descriptor(out))[:, 0]
    pick = quorum_slice(dist / check.stats.threshold[0])
    return FeatureDistance(float(dist[pick]), float(check.stats.threshold[0]), len(idx))
