"""Out-of-distribution gate: anything that is not a chest CT slice or chest X-ray gets no score.

The triage models were trained on chest images only; given a photo, a text page or a brain CT
they still return a probability, often a high one. Every scoring path (``classify_scan``, batch
scoring, the GUI) therefore asks this gate first, before any triage model runs, and turns a
refusal into :class:`~lunglens.errors.NotChestImage` whose message gives the reason in words.

Rules, checked in order (a small registry, :mod:`lunglens.inference.gate_rules`;
:func:`register_rule` adds one):

1. DICOM header (cheap, exact when the tags are filled in):
   Modality (0008,0060) of another imaging kind (MR, US, NM, PT, MG, XA, ...);
   BodyPartExamined (0018,0015) (or the Anatomic Region Sequence) naming another part (HEAD,
   BRAIN, ABDOMEN, KNEE, ...); ImageType (0008,0008) LOCALIZER, i.e. a CT scout / topogram,
   which is a projection of the whole body, not an axial slice (PS3.3 C.8.2.1.1.1).
   Free-text body parts that merely are not recognised (e.g. ``TRUNK``) pass to the pixel check.
2. Explicit pixel rules, for plain images and DICOM without usable tags: a blank image (one
   grey level), pure noise (neighbouring pixels uncorrelated) and a colour photograph (Hasler &
   Susstrunk 2003 colourfulness of the file's own colours, before they are turned to grey).
3. A learned check: the Mahalanobis distance (Lee et al. 2018, NeurIPS) of the image's
   descriptor to the chest CT and chest X-ray training images, per modality. The descriptor
   joins the ``modality-check`` model's pooled activations with the contrast-normalised 8 x 8
   layout of the image, its grey-level histogram and edge statistics (:func:`descriptor`,
   :mod:`lunglens.inference.gate_features`; statistics: :mod:`lunglens.inference.gate_stats`). Each
   modality's threshold is the 99.5th percentile of held-out training distances (group-wise
   folds), so >= 99.5 % of real chest images pass; the statistics live in
   ``models/modality-check/ood.npz``, hashed in that model's manifest and verified on load.
   ``lunglens-train ood`` refits them.
   An image the learned check accepts is refused when its grey-inverted copy is clearly nearer
   to the chest images than itself (:func:`inversion_check`): an export with the wrong
   polarity, which the triage models score at random.
4. For a scan scored as CT, the CT feature check
   (:mod:`lunglens.inference.gate_feature_check`): the same distance in the default CT
   model's own stage-4 features, which sets head, neck and abdominal CT slices apart from
   chest CT where the learned check does not.

A CT series is accepted when at least a quarter of up to :data:`SERIES_SAMPLES` evenly spaced
slices pass (series start above the lungs and end below them); it is then scored from its
slices that pass the CT feature check only (:mod:`lunglens.inference.slice_filter`).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lunglens.errors import InvertedImage, NotChestImage
from lunglens.inference.engine import Engine, get_engine
from lunglens.inference.gate_feature_check import MODALITY as FEATURE_MODALITY
from lunglens.inference.gate_feature_check import (
    FeatureCheck,
    feature_model,
    feature_ratios,
    load_feature_check,
)
from lunglens.inference.gate_features import DESCRIPTOR_VERSION, descriptor
from lunglens.inference.gate_rules import RULES, Rule, register_rule
from lunglens.inference.gate_stats import (
    SERIES_QUORUM,
    SERIES_SAMPLES,
    GateStats,
    fit_stats,
    load_stats,
    quorum_slice,
    sample_slices,
)
from lunglens.io.scan import SCORED_MODALITIES, Modality, Scan
from lunglens.models.registry import ModelInfo, modality_checker
from lunglens.preprocess import to_model_input

__all__ = [  # the rules, descriptor and statistics are re-exported: callers met them here
    "DESCRIPTOR_VERSION",
    "RULES",
    "SERIES_QUORUM",
    "SERIES_SAMPLES",
    "GateStats",
    "GateVerdict",
    "Rule",
    "check_chest",
    "descriptor",
    "fit_stats",
    "learned_check",
    "load_stats",
    "register_rule",
    "require_chest",
    "sample_slices",
]

_PLACES: dict[str, str] = {Modality.CT: "a chest CT slice", Modality.CXR: "a chest X-ray"}
#: The training images a distance is measured to, by family (what the inversion refusal names).
_TRAINED: dict[str, str] = {
    Modality.CT: "the chest CT slices the gate was fitted on",
    Modality.CXR: "the chest X-rays the gate was fitted on",
}
log = logging.getLogger(__name__)


@dataclass
class GateVerdict:
    """What the gate decided for one scan.

    Attributes
    ----------
    accepted
        False when a rule refused the scan.
    reason
        The refusal in words (``"body part BRAIN"``), empty when accepted.
    rule
        Name of the rule that refused, or ``""``.
    distance, threshold
        The distance that decided and the threshold it was compared with: the learned check's,
        or for rule ``ct-features`` the CT feature check's (``None`` when neither ran: refused
        earlier, or no statistics installed).
    nearest
        The modality whose training images the scan is nearest to (distance over that
        modality's threshold), ``None`` when the learned check did not run. A second opinion on
        what a plain image is, beside the modality check (:mod:`lunglens.inference.modality`):
        on the 5,379 CT and X-ray training images it names the wrong family once, for an image
        it refuses anyway, where the check's more probable label is wrong 16 times.
    slice_ratios
        The learned check's distance over threshold for each sampled slice
        (:func:`sample_slices`), so the CT feature check can ask a series for a quarter of its
        slices passing both checks, not each check on its own quarter.
    """

    accepted: bool
    reason: str = ""
    rule: str = ""
    distance: float | None = None
    threshold: float | None = None
    nearest: str | None = None
    slice_ratios: tuple[float, ...] = ()

    def error(self, source: str) -> NotChestImage:
        """The :class:`NotChestImage` for a refused verdict."""
        if self.rule == "inverted":  # a chest image, most likely, with the wrong polarity
            return InvertedImage(
                source,
                self.reason,
                "No score is given: export the image with the usual grey levels (air dark); "
                "for a DICOM file, check its Photometric Interpretation (0028,0004).",
            )
        return NotChestImage(
            source,
            f"not a chest scan: {self.reason}",
            "No score is given: LungLens scores chest CT slices and chest X-rays only.",
        )


_STATS: dict[tuple[str, str], GateStats | None] = {}
_CHECKS: dict[tuple[str, str, str], tuple[FeatureCheck, tuple[tuple[int, ...], ...]]] = {}
_STATS_LOCK = threading.Lock()


def _cached_stats(info: ModelInfo) -> GateStats | None:
    entry = info.spec.ood or {}  # the field itself: info.manifest rebuilds the JSON and seal
    key = (str(info.path.resolve()), str(entry.get("sha256", "")))
    with _STATS_LOCK:
        if key not in _STATS:
            _STATS[key] = load_stats(info)
        return _STATS[key]


def _stamp(model: ModelInfo) -> tuple[tuple[int, ...], ...]:
    """Inode, size, modification and status-change times of ``model``'s manifest and ONNX
    file (missing: ``(-1,)``): a copy over them with its times preserved still changes the
    status-change time."""
    out: list[tuple[int, ...]] = []
    for path in (model.path / "manifest.json", model.onnx_path):
        try:
            st = path.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except OSError:
            out.append((-1,))
    return tuple(out)


def _cached_check(
    info: ModelInfo, models_dir: str | os.PathLike[str] | None
) -> FeatureCheck | None:
    """The feature check, loaded once per gate, folder and CT model files: a CT model replaced
    while the app runs (its files' size or time changed) is looked up and checked again."""
    entry = info.spec.feature_check or {}
    if not entry:
        return None
    where = str(Path(models_dir).resolve()) if models_dir is not None else ""
    key = (str(info.path.resolve()), str(entry.get("sha256", "")), where)
    with _STATS_LOCK:
        cached = _CHECKS.get(key)
        if cached is None or _stamp(cached[0].model) != cached[1]:
            model = feature_model(info, models_dir)  # ModelRefused: missing or changed
            assert model is not None  # the block exists
            stamp = _stamp(model)  # before reading: a change while loading is seen next time
            check = load_feature_check(info, models_dir)
            assert check is not None
            cached = _CHECKS[key] = (check, stamp)
        return cached[0]


def _routed_to(scan: Scan, verdict: GateVerdict, info: ModelInfo) -> str | None:
    """The family automatic routing scores ``scan`` as: its DICOM modality, or for a plain
    image the learned check's nearest training set where the modality check ``info`` agrees
    (``None`` where they disagree: routing refuses such an image as uncertain, and it must not
    read "not a chest CT slice" for an X-ray with black padding). Scoring paths defer the
    check until a model is chosen and judge it for that model's family instead
    (:func:`pending_features`)."""
    if scan.modality in SCORED_MODALITIES:
        return str(scan.modality)
    from lunglens.inference.modality import check_with  # modality imports this module

    says = check_with(info, scan)
    return verdict.nearest if says is not None and says.modality == verdict.nearest else None


def _pair(distance: float, threshold: float) -> str:
    """``"d > t"`` with enough decimals that the two numbers differ as printed."""
    for digits in range(1, 7):
        if round(distance, digits) != round(threshold, digits):
            break
    return f"{distance:.{digits}f} > {threshold:.{digits}f}"


def feature_check(
    scan: Scan, info: ModelInfo, verdict: GateVerdict, models_dir: str | os.PathLike[str] | None
) -> GateVerdict:
    """The CT feature check (:mod:`lunglens.inference.gate_feature_check`) on a scan the
    learned check accepted and routing scores as CT; ``verdict`` when it does not apply (an
    X-ray, no check installed). A series passes when a quarter of its sampled slices pass both
    checks."""
    if _routed_to(scan, verdict, info) != FEATURE_MODALITY:
        return verdict
    check = _cached_check(info, models_dir)
    return verdict if check is None else judge_features(scan, verdict, check)


def pending_features(
    scan: Scan, verdict: GateVerdict, model: ModelInfo, models_dir: str | os.PathLike[str] | None
) -> FeatureCheck | None:
    """The CT feature check still owed to ``scan`` before ``model`` scores it, when the gate
    ran without it (``check_chest(..., features=False)``); ``None`` when none is owed (an
    X-ray model, no check installed). It is owed for the family of the model that scores, so
    a CT model named for a plain image the learned check placed nearer the X-rays owes it too."""
    if not verdict.accepted or model.modality != FEATURE_MODALITY:
        return None
    info = modality_checker(models_dir)
    return None if info is None else _cached_check(info, models_dir)


def judge_features(
    scan: Scan,
    verdict: GateVerdict,
    check: FeatureCheck,
    activations: np.ndarray | None = None,
    descriptors: np.ndarray | None = None,
) -> GateVerdict:
    """``verdict`` when ``scan`` passes the CT feature ``check``, else the refusal.

    ``activations``: the check's layer output for the sampled slices, or ``descriptors`` of
    it, when the caller already ran the CT model on exactly them (scoring one slice with that
    model computes it in the same call, which saves a second pass)."""
    dist, ratio = feature_ratios(scan, check, activations, descriptors)
    both = ratio
    if len(verdict.slice_ratios) == len(ratio):
        both = np.maximum(ratio, np.asarray(verdict.slice_ratios))
    pick = quorum_slice(both)
    if both[pick] <= 1.0:
        return verdict
    distance, threshold = float(dist[pick]), float(check.stats.threshold[0])
    place = _PLACES.get(FEATURE_MODALITY, FEATURE_MODALITY)
    if len(ratio) > 1:
        learned = f"; image check at {both[pick]:.2f} of its threshold" if ratio[pick] <= 1 else ""
        what = (
            f"fewer than a quarter of {len(ratio)} sampled slices look like {place} both to "
            f"the image check and to the CT model {check.model.name} ({int((both <= 1).sum())} "
            f"of {len(ratio)} do; deciding slice: "
            f"feature distance {distance:.1f}, threshold {threshold:.1f}{learned})"
        )
    else:
        what = (
            f"does not look like {place} to the CT model {check.model.name} "
            f"(feature distance {_pair(distance, threshold)})"
        )
    return GateVerdict(False, what, "ct-features", distance, threshold, verdict.nearest)


#: An image is refused as inverted when its grey-inverted copy is at most this share of its own
#: distance ratio from the chest images (median over a series' sampled slices), per family (the
#: stricter of the image's nearest and its copy's). CT: of the 4,588 chest CT slices the learned
#: check accepts, the copy is nearer for 3 (0.924-0.996) and at most 0.95 for one. X-ray: the 159
#: inverted X-rays the learned check accepts are at 0.47 (median), 0.80 (99th percentile), 0.96
#: (max); real X-rays with a bright frame (collimation, white padding) at 0.73 and more (a review:
#: 0.95 refused 34 of 100 X-rays with an 8% white frame). 0.8 leaves about 1% of inverted X-rays
#: to the triage model and refuses a few framed ones (docs/measurements.md).
INVERTED_MARGIN: dict[str, float] = {Modality.CT.value: 0.95, Modality.CXR.value: 0.8}
#: The same share for an image the learned check refused, to be told "inverted" rather than "not
#: a chest scan" (both get no score: only the words differ). Inverted chest images whose copy
#: passes are at most 0.74 (X-ray) and 0.84 (CT, 99th percentile); framed real X-rays at 0.60 and
#: more, two rendered text pages at 0.86-0.95.
INVERTED_MARGIN_REFUSED = 0.7


def inversion_check(
    engine: Engine,
    stats: GateStats,
    inverted: np.ndarray,
    ratio: np.ndarray,
    nearest: str,
    refused: bool = False,
) -> GateVerdict | None:
    """The refusal of an image whose grey levels are inverted (air light, bone dark: an
    export with the wrong polarity, a MONOCHROME1 image saved as it is stored), else ``None``.

    Why: half the inverted chest CT slices and a fifth of the inverted X-rays pass the learned
    check, and the triage models score them at random (non-COVID CT slices at P 0.05-0.27
    came out near 0.5 inverted, flagged). Their own inverted copy (``inverted``: the model
    input of the sampled slices with their grey levels reversed), i.e. the image as it should
    be, is nearer to the chest images than they are; for real chest images it is the other way
    round. One more pass of the small modality-check network on the sampled slices. For an
    image the learned check ``refused``, the copy must also pass it, so the refusal can say
    "inverted" instead of "not a chest scan".
    """
    dist = stats.distances(descriptor(engine, inverted)) / stats.threshold
    inv = dist.min(axis=1)
    share = float(np.median(inv / np.maximum(ratio, 1e-9)))
    pick = quorum_slice(inv)
    label = str(stats.labels[int(dist[pick].argmin())])
    margin = min(INVERTED_MARGIN.get(label, 0.8), INVERTED_MARGIN.get(nearest, 0.8))
    if share > (min(margin, INVERTED_MARGIN_REFUSED) if refused else margin):
        return None
    if refused and inv[pick] > 1.0:  # reversed, it is no chest image either
        return None
    place = _TRAINED.get(label, label)
    return GateVerdict(
        False,
        "inverted grey levels (air light, bone dark): reversed, it is "
        + (f"near {place}; as it is, it is not" if refused else f"much nearer to {place}"),
        "inverted",
        nearest=label,
    )


def learned_check(scan: Scan, info: ModelInfo, stats: GateStats) -> GateVerdict:
    """The distance rule on ``scan`` (see the module docstring for series)."""
    engine = get_engine(info)
    idx = sample_slices(scan.n_slices)
    batch = to_model_input(scan.image[idx], info.input_size, info.preprocessing)
    dist = stats.distances(descriptor(engine, batch))
    ratio = dist / stats.threshold
    best = ratio.argmin(axis=1)  # nearest modality per slice
    slice_ratio = ratio[np.arange(len(idx)), best]
    pick = quorum_slice(slice_ratio)
    m = int(best[pick])
    distance, threshold = float(dist[pick, m]), float(stats.threshold[m])
    nearest = str(stats.labels[m])
    ratios = tuple(float(r) for r in slice_ratio)
    # the inverted copy made from the image, not from the model input: the same only while the
    # modality check's preprocessing is the identity
    flipped = to_model_input(1.0 - scan.image[idx], info.input_size, info.preprocessing)
    if slice_ratio[pick] <= 1.0:
        inverted = inversion_check(engine, stats, flipped, slice_ratio, nearest)
        return inverted or GateVerdict(True, "", "", distance, threshold, nearest, ratios)
    if inverted := inversion_check(engine, stats, flipped, slice_ratio, nearest, refused=True):
        return inverted  # a chest image the wrong way round: say so, with what to do
    what = " or ".join(_PLACES.get(lab, lab) for lab in stats.labels)
    series = f", {len(idx)} slices checked" if len(idx) > 1 else ""
    return GateVerdict(
        False,
        f"does not look like {what} (distance {_pair(distance, threshold)} "
        f"for {_PLACES.get(stats.labels[m], stats.labels[m])}{series})",
        "distance",
        distance,
        threshold,
        nearest,
    )


def check_chest(
    scan: Scan, models_dir: str | os.PathLike[str] | None = None, *, features: bool = True
) -> GateVerdict:
    """Run the gate on ``scan``: header and pixel rules, then the learned check and, for a scan
    routed to CT, the CT feature check (``features=False`` leaves that to the caller, which
    then owes it: :func:`pending_features`, :func:`judge_features`).

    Parameters
    ----------
    scan
        A loaded scan.
    models_dir
        Folder of models holding ``modality-check`` (default: the registry's search order).

    Raises
    ------
    ModelRefused
        The gate statistics failed their integrity check (a tampered gate must not pass
        everything silently), or the CT feature check's model is missing or changed.
    ModelError
        Any other failure of the gate's models: it fails closed, the scan gets no score.
    """
    for rule in RULES:
        reason = rule.check(scan)
        if reason:
            return GateVerdict(False, reason, rule.name)
    info = modality_checker(models_dir)
    stats = _cached_stats(info) if info is not None else None
    if info is None or stats is None:  # only in development set-ups: the app ships both
        log.warning("chest-image gate: no learned check installed; tags and pixel rules only")
        return GateVerdict(True)
    # any model error propagates: a gate that cannot run must not pass the scan (fail closed)
    verdict = learned_check(scan, info, stats)
    if not (verdict.accepted and features):
        return verdict
    return feature_check(scan, info, verdict, models_dir)


def require_chest(
    scan: Scan, models_dir: str | os.PathLike[str] | None = None, *, features: bool = True
) -> GateVerdict:
    """:func:`check_chest`, raising :class:`NotChestImage` on refusal.

    Raises
    ------
    NotChestImage
        The scan is not a chest CT slice or chest X-ray; the message says why.
    """
    verdict = check_chest(scan, models_dir, features=features)
    if not verdict.accepted:
        raise verdict.error(scan.source)
    return verdict
