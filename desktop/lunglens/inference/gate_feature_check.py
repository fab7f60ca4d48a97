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

import numpy as np

from lunglens.errors import ModelNotFound, ModelRefused
from lunglens.inference.engine import get_engine
from lunglens.inference.gate_features import FEATURE_DESCRIPTOR_VERSION, feature_descriptor
from lunglens.inference.gate_stats import GateStats, load_stats, sample_slices
from lunglens.io.scan import Modality, Scan
from lunglens.models.registry import ModelInfo, get_model
from lunglens.preprocess import to_model_input

#: Manifest block of the modality check that names the feature check.
BLOCK = "feature_check"
#: The family whose scans the check applies to (its statistics' one label).
MODALITY = Modality.CT.value
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


def feature_model(gate: ModelInfo, models_dir: str | os.PathLike[str] | None) -> ModelInfo | None:
    """The CT model the modality check ``gate``'s feature check was fitted on, as installed
    (``None`` when the gate names no feature check).

    Raises
    ------
    ModelRefused
        It is not installed, or its ONNX file is not the one the statistics were fitted on (a
        CT model updated without ``lunglens-train ood``): features of another file mean nothing
        to them, and the gate must not pass CT silently.
    """
    entry = gate.spec.feature_check
    if not entry:
        return None
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
    return model


def load_feature_check(
    gate: ModelInfo, models_dir: str | os.PathLike[str] | None = None
) -> FeatureCheck | None:
    """The feature check named by the modality check ``gate``, or ``None`` if it names none.

    Raises
    ------
    ModelRefused
        The statistics failed their integrity check, are of another descriptor version or of
        another family than CT, or :func:`feature_model` refuses the CT model.
    """
    model = feature_model(gate, models_dir)
    if model is None:
        return None
    stats = load_stats(gate, BLOCK, FEATURE_DESCRIPTOR_VERSION)
    assert stats is not None  # the block exists
    if stats.labels != (MODALITY,):
        raise ModelRefused(
            gate.path / "manifest.json",
            f"the CT feature check's statistics are for {list(stats.labels)}, not [{MODALITY!r}]",
            "Refit the gate with 'lunglens-train ood'.",
        )
    entry = gate.spec.feature_check or {}
    return FeatureCheck(model, str(entry["output"]), str(entry.get("layer", "")), stats)


def separate_descriptors(images: np.ndarray, check: FeatureCheck) -> np.ndarray:
    """``[N, C]`` feature descriptors of ``images`` (``[N, H, W]``, one batch) from a pass of
    the check's own model pruned to its layer (when no scoring pass has them)."""
    model = check.model
    batch = to_model_input(images, model.input_size, model.preprocessing)
    out = get_engine(model).predict(batch, (check.output,), exact=True)[check.output]
    return feature_descriptor(out)


def feature_ratios(
    scan: Scan,
    check: FeatureCheck,
    activations: np.ndarray | None = None,
    descriptors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature distances of ``scan``'s sampled slices (:func:`sample_slices`, the learned
    check's) and their ratios to the threshold (a slice passes at <= 1); ``activations``: the
    layer output on those slices, or ``descriptors`` (:func:`feature_descriptor` of it), when
    the caller already has it."""
    if descriptors is None and activations is not None:
        descriptors = feature_descriptor(activations)
    elif descriptors is None:
        descriptors = separate_descriptors(scan.image[sample_slices(scan.n_slices)], check)
    dist = check.stats.distances(descriptors)[:, 0]
    return dist, dist / check.stats.threshold[0]
