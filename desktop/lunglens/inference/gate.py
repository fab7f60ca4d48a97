"""Out-of-distribution gate: anything that is not a chest CT slice or chest X-ray gets no score.

The triage models were trained on chest images only; given a photo, a text page or a brain CT
they still return a probability, often a high one. Every scoring path (``classify_scan``, batch
scoring, the GUI) therefore asks this gate first, before any triage model runs, and turns a
refusal into :class:`~lunglens.errors.NotChestImage` whose message gives the reason in words.

Rules, checked in order (a small registry; :func:`register_rule` adds one):

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
   layout of the image, its grey-level histogram and edge statistics (:func:`descriptor`). Each
   modality's threshold is the 99.5th percentile of held-out training distances (group-wise
   folds), so >= 99.5 % of real chest images pass; the statistics live in
   ``models/modality-check/ood.npz``, hashed in that model's manifest and verified on load.
   ``lunglens-train ood`` refits them.

A CT series is accepted when at least a quarter of up to :data:`SERIES_SAMPLES` evenly spaced
slices pass (series start above the lungs and end below them).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lunglens.errors import ModelError, ModelRefused, NotChestImage
from lunglens.inference.engine import Engine, get_engine
from lunglens.io.dicom_rules import CHEST_WORDS
from lunglens.io.scan import Scan
from lunglens.models.registry import ModelInfo, modality_checker
from lunglens.preprocess import to_model_input

#: Modality (0008,0060) values that are clearly not a chest CT or chest radiograph.
NON_CHEST_MODALITIES: dict[str, str] = {
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "PET",
    "SR": "structured report",
    "KO": "key object selection",
    "PR": "presentation state",
    "MG": "mammography",
    "XA": "angiography",
    "RF": "fluoroscopy",
    "ES": "endoscopy",
    "OP": "ophthalmic photography",
    "OPT": "ophthalmic tomography",
    "IO": "intra-oral radiography",
    "PX": "panoramic dental",
    "SM": "slide microscopy",
    "GM": "general microscopy",
    "XC": "external-camera photography",
    "ECG": "ECG",
    "HD": "haemodynamic waveform",
    "AU": "audio",
    "DOC": "document",
    "SEG": "segmentation",
    "REG": "registration",
    "RTSTRUCT": "RT structure set",
    "RTPLAN": "RT plan",
    "RTDOSE": "RT dose",
    "RTIMAGE": "RT image",
    "BMD": "bone densitometry",
    "IVUS": "intravascular ultrasound",
    "OCT": "optical coherence tomography",
}
#: BodyPartExamined values (PS3.16 Annex L defined terms, spaces/underscores removed) that are
#: not the chest. A part naming the chest too (``CHESTABDOMEN``) is accepted by CHEST_WORDS.
NON_CHEST_BODY_PARTS = frozenset(
    {
        "HEAD",
        "SKULL",
        "BRAIN",
        "FACE",
        "SINUS",
        "JAW",
        "TMJ",
        "EAR",
        "EYE",
        "ORBIT",
        "NECK",
        "HEADNECK",
        "CSPINE",
        "LSPINE",
        "SSPINE",
        "TSPINE",
        "COCCYX",
        "SACRUM",
        "HAND",
        "FINGER",
        "WRIST",
        "FOREARM",
        "ELBOW",
        "HUMERUS",
        "ARM",
        "SHOULDER",
        "CLAVICLE",
        "FOOT",
        "TOE",
        "ANKLE",
        "HEEL",
        "KNEE",
        "PATELLA",
        "LEG",
        "LOWERLEG",
        "FEMUR",
        "TIBIA",
        "HIP",
        "PELVIS",
        "ABDOMEN",
        "KIDNEY",
        "LIVER",
        "BLADDER",
        "PROSTATE",
        "BREAST",
        "EXTREMITY",
    }
)
#: Image Type (0008,0008) values of projection localizers (CT scout / topogram).
LOCALIZER_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM"})

#: Hasler & Susstrunk (2003) colourfulness (0-255 scale) at or above which an image is a colour
#: picture; their scale calls 15 "slightly" and 33 "moderately colourful". A grey radiograph
#: scores 0, one with a coloured arrow or caption stays far below.
COLOURFUL = 25.0
#: Grey-level standard deviation (0-1 scale, on the model-size image) below which an image is
#: blank.
BLANK_STD = 0.01
#: Lag-1 neighbour correlation below which the image is noise: any photographed or
#: reconstructed image is smooth at 64 x 64 (chest training images: >= 0.6), white noise is ~0.
NOISE_CORRELATION = 0.3
#: Slices sampled from a series; a series passes when at least ``SERIES_QUORUM`` of them pass.
SERIES_SAMPLES = 16
SERIES_QUORUM = 0.25
#: Thumbnail size of the layout part of :func:`descriptor`.
LAYOUT = 8
#: Grey-level histogram bins of :func:`descriptor`.
HIST_BINS = 16
#: Version of :func:`descriptor`; ``ood.npz`` records the one it was fitted with.
DESCRIPTOR_VERSION = 1

_PLACES = {"ct": "a chest CT slice", "cxr": "a chest X-ray"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """One gate rule: ``check(scan)`` returns the refusal reason in words, or ``None``."""

    name: str
    check: Callable[[Scan], str | None]


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
        The learned check's distance and the threshold it was compared with (``None`` when it
        did not run: refused earlier, or no statistics installed).
    """

    accepted: bool
    reason: str = ""
    rule: str = ""
    distance: float | None = None
    threshold: float | None = None

    def error(self, source: str) -> NotChestImage:
        """The :class:`NotChestImage` for a refused verdict."""
        return NotChestImage(
            source,
            f"not a chest scan: {self.reason}",
            "No score is given: LungLens scores chest CT slices and chest X-rays only.",
        )


# ------------------------------------------------------------------------------ header rules
def _meta(scan: Scan, key: str) -> str:
    return str(scan.metadata.get(key, "")).strip().upper()


def modality_rule(scan: Scan) -> str | None:
    """Modality (0008,0060) of another imaging kind (MR, US, PT, ...)."""
    modality = _meta(scan, "dicom_modality")
    if modality in NON_CHEST_MODALITIES:
        return f"modality {modality} ({NON_CHEST_MODALITIES[modality]})"
    return None


def body_part_rule(scan: Scan) -> str | None:
    """BodyPartExamined (0018,0015) (or Anatomic Region Sequence) naming another body part."""
    part = _meta(scan, "body_part")
    if not part or any(w in part for w in CHEST_WORDS):
        return None
    if part.replace(" ", "").replace("_", "").replace("-", "") in NON_CHEST_BODY_PARTS:
        return f"body part {part}"
    return None


def localizer_rule(scan: Scan) -> str | None:
    """ImageType (0008,0008) LOCALIZER: a CT scout/topogram, not an axial slice."""
    values = {v.strip() for v in _meta(scan, "image_type").split("\\")}
    if _meta(scan, "dicom_modality") == "CT" and values & LOCALIZER_TYPES:
        return "CT localizer (scout) image, not an axial slice"
    return None


# ------------------------------------------------------------------------------- pixel rules
def _middle(scan: Scan) -> np.ndarray:
    return np.asarray(scan.image[scan.n_slices // 2], dtype=np.float32)


def _small(image: np.ndarray) -> np.ndarray:
    return to_model_input(image, (64, 64))[0, 0].astype(np.float64)


def colour_rule(scan: Scan) -> str | None:
    """A colour picture: colourfulness of the file's own colours (recorded by the readers)."""
    try:
        value = float(scan.metadata.get("colourfulness", 0.0))
    except ValueError:
        return None
    if value >= COLOURFUL:
        return f"a colour picture (colourfulness {value:.0f} >= {COLOURFUL:.0f})"
    return None


def blank_rule(scan: Scan) -> str | None:
    """One grey level (or nearly): nothing to score."""
    std = float(_small(_middle(scan)).std())
    if std < BLANK_STD:
        return f"the image is blank (grey-level spread {std:.3f})"
    return None


def neighbour_correlation(image: np.ndarray) -> float:
    """Mean lag-1 correlation of horizontal and vertical neighbours of a 2-D image."""
    out = []
    for a, b in ((image[:, :-1], image[:, 1:]), (image[:-1], image[1:])):
        a = a.ravel() - a.mean()
        b = b.ravel() - b.mean()
        den = float(np.sqrt((a * a).sum() * (b * b).sum()))
        out.append(float((a * b).sum()) / den if den > 0 else 1.0)
    return float(np.mean(out))


def noise_rule(scan: Scan) -> str | None:
    """Pure noise: neighbouring pixels are uncorrelated even after shrinking to 64 x 64."""
    small = _small(_middle(scan))
    if small.std() < BLANK_STD:
        return None
    corr = neighbour_correlation(small)
    if corr < NOISE_CORRELATION:
        return f"the image is noise (neighbour correlation {corr:.2f})"
    return None


#: Rules on tags, then on pixels; the learned check runs after them (it needs the model).
RULES: list[Rule] = [
    Rule("modality", modality_rule),
    Rule("body-part", body_part_rule),
    Rule("localizer", localizer_rule),
    Rule("colour", colour_rule),
    Rule("blank", blank_rule),
    Rule("noise", noise_rule),
]


def register_rule(rule: Rule, *, first: bool = False) -> None:
    """Add a rule (``first=True``: before the built-in ones)."""
    if first:
        RULES.insert(0, rule)
    else:
        RULES.append(rule)


# ---------------------------------------------------------------------------- learned check
def descriptor(engine: Engine, batch: np.ndarray) -> np.ndarray:
    """``[N, D]`` float64 descriptors of a ``[N, 1, H, W]`` model-input batch.

    Joins (i) the ``modality-check`` model's gallery activations, averaged over space (what
    the network sees), (ii) the image's ``LAYOUT x LAYOUT`` thumbnail standardised to zero
    mean and unit spread (where dark and bright are: lungs, mediastinum, body outline, with
    window and exposure removed), (iii) a ``HIST_BINS``-bin grey-level histogram and (iv) edge
    statistics (mean absolute neighbour difference relative to the spread; spread; mean).
    The network features alone separate photos from chest images poorly (measured in the
    model card), the layout and histogram carry most of the power.
    """
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    names = [g.output for g in engine.info.gallery]
    out = engine.predict(batch, names)
    pooled = [np.asarray(out[n], np.float64).mean(axis=(2, 3)) for n in names]
    im = batch[:, 0].astype(np.float64)
    n, h, w = im.shape
    thumb = im.reshape(n, LAYOUT, h // LAYOUT, LAYOUT, w // LAYOUT).mean(axis=(2, 4))
    thumb = thumb.reshape(n, -1)
    thumb = (thumb - thumb.mean(1, keepdims=True)) / (thumb.std(1, keepdims=True) + 0.02)
    flat = im.reshape(n, -1)
    hist = np.stack([np.histogram(x, bins=HIST_BINS, range=(0.0, 1.0))[0] for x in flat])
    spread = im.std(axis=(1, 2)) + 1e-3
    edges = np.stack(
        [
            np.abs(np.diff(im, axis=2)).mean(axis=(1, 2)) / spread,
            np.abs(np.diff(im, axis=1)).mean(axis=(1, 2)) / spread,
            spread,
            im.mean(axis=(1, 2)),
        ],
        axis=1,
    )
    return np.concatenate([*pooled, thumb, hist / flat.shape[1], edges], axis=1)


@dataclass(frozen=True)
class GateStats:
    """Fitted statistics of the learned check (``ood.npz``).

    Attributes
    ----------
    labels
        Modalities, e.g. ``("ct", "cxr")``.
    mean, precision
        Per modality: descriptor mean ``[M, D]`` and inverse shrunk covariance ``[M, D, D]``.
    threshold
        Per modality ``[M]``: the distance accepting the target share of held-out images.
    """

    labels: tuple[str, ...]
    mean: np.ndarray
    precision: np.ndarray
    threshold: np.ndarray

    def distances(self, desc: np.ndarray) -> np.ndarray:
        """``[N, M]`` Mahalanobis distances of descriptors to each modality."""
        out = np.empty((desc.shape[0], len(self.labels)))
        for m in range(len(self.labels)):
            z = desc - self.mean[m]
            out[:, m] = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, self.precision[m], z), 0))
        return out

    def to_bytes(self) -> bytes:
        """``.npz`` bytes (no pickles) for :func:`load_stats`."""
        buf = io.BytesIO()
        np.savez(
            buf,
            labels=np.array(self.labels),
            mean=self.mean,
            precision=self.precision,
            threshold=self.threshold,
            descriptor_version=np.array(DESCRIPTOR_VERSION),
        )
        return buf.getvalue()


def shrunk_precision(x: np.ndarray, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and inverse covariance shrunk towards a scaled identity (Ledoit-Wolf style target):
    ``(1 - s) C + s tr(C)/D I`` keeps the inverse stable with ~100 features per 800 images."""
    mu = x.mean(axis=0)
    cov = np.cov(x, rowvar=False)
    d = cov.shape[0]
    cov = (1.0 - shrink) * cov + shrink * np.trace(cov) / d * np.eye(d)
    return mu, np.linalg.inv(cov)


def fit_stats(
    desc: np.ndarray,
    modality: np.ndarray,
    folds: np.ndarray,
    *,
    labels: tuple[str, ...] = ("ct", "cxr"),
    acceptance: float = 0.995,
    shrink: float = 0.01,
) -> tuple[GateStats, np.ndarray]:
    """Fit the learned check; thresholds from held-out folds.

    For each fold ``k`` the Gaussians are fitted on the other folds and the distances of fold
    ``k``'s images to their own modality are recorded; each modality's threshold is the
    ``acceptance`` quantile of its held-out distances. The returned statistics are then fitted on
    all images with those thresholds.

    Returns
    -------
    stats, heldout
        The statistics and the ``[N]`` held-out distance ratios (distance / threshold, minimum
        over modalities): an image is accepted when its ratio is <= 1.
    """
    desc = np.asarray(desc, np.float64)
    heldout = np.empty((desc.shape[0], len(labels)))
    for k in np.unique(folds):
        test = folds == k
        for m, label in enumerate(labels):
            mu, prec = shrunk_precision(desc[~test & (modality == label)], shrink)
            z = desc[test] - mu
            heldout[test, m] = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, prec, z), 0))
    thresholds = np.array(
        [np.quantile(heldout[modality == lab, m], acceptance) for m, lab in enumerate(labels)]
    )
    fitted = [shrunk_precision(desc[modality == lab], shrink) for lab in labels]
    means, precs = [f[0] for f in fitted], [f[1] for f in fitted]
    stats = GateStats(tuple(labels), np.stack(means), np.stack(precs), thresholds)
    return stats, (heldout / thresholds).min(axis=1)


def load_stats(info: ModelInfo) -> GateStats | None:
    """The learned check's statistics named in ``info``'s manifest (``ood``), verified.

    Returns ``None`` when the manifest names none.

    Raises
    ------
    ModelRefused
        The file is missing, its SHA-256 differs from the manifest, or it is not the
        statistics of this version of :func:`descriptor`.
    """
    entry = info.manifest.get("ood")
    if not entry:
        return None
    path = info.path / str(entry["file"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelRefused(path, f"gate statistics cannot be read ({exc.strerror})") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != str(entry.get("sha256", "")).lower():
        raise ModelRefused(
            path,
            f"gate statistics failed their integrity check: SHA-256 is {actual[:12]}..., "
            f"manifest says {str(entry.get('sha256', ''))[:12]}...",
            "Reinstall the model folder; do not use it.",
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            version = int(npz["descriptor_version"])
            stats = GateStats(
                tuple(str(x) for x in npz["labels"]),
                np.asarray(npz["mean"], np.float64),
                np.asarray(npz["precision"], np.float64),
                np.asarray(npz["threshold"], np.float64),
            )
    except (KeyError, ValueError, OSError) as exc:
        raise ModelRefused(path, f"gate statistics are malformed ({exc})") from exc
    if version != DESCRIPTOR_VERSION:
        raise ModelRefused(
            path,
            f"gate statistics are for descriptor version {version}, this app computes "
            f"{DESCRIPTOR_VERSION}",
            "Refit them with 'lunglens-train ood'.",
        )
    return stats


_STATS: dict[tuple[str, str], GateStats | None] = {}
_STATS_LOCK = threading.Lock()


def _cached_stats(info: ModelInfo) -> GateStats | None:
    entry = info.manifest.get("ood") or {}
    key = (str(info.path.resolve()), str(entry.get("sha256", "")))
    with _STATS_LOCK:
        if key not in _STATS:
            _STATS[key] = load_stats(info)
        return _STATS[key]


def sample_slices(n: int, limit: int = SERIES_SAMPLES) -> np.ndarray:
    """Up to ``limit`` evenly spaced slice indices of an ``n``-slice scan."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def learned_check(scan: Scan, info: ModelInfo, stats: GateStats) -> GateVerdict:
    """The distance rule on ``scan`` (see the module docstring for series)."""
    engine = get_engine(info)
    idx = sample_slices(scan.n_slices)
    batch = to_model_input(scan.image[idx], info.input_size, info.preprocessing)
    dist = stats.distances(descriptor(engine, batch))
    ratio = dist / stats.threshold
    best = ratio.argmin(axis=1)  # nearest modality per slice
    slice_ratio = ratio[np.arange(len(idx)), best]
    # the quorum-th best slice decides: at least SERIES_QUORUM of the slices must pass
    order = np.argsort(slice_ratio)
    pick = order[max(0, int(np.ceil(SERIES_QUORUM * len(idx))) - 1)]
    m = int(best[pick])
    distance, threshold = float(dist[pick, m]), float(stats.threshold[m])
    if slice_ratio[pick] <= 1.0:
        return GateVerdict(True, distance=distance, threshold=threshold)
    what = " or ".join(_PLACES.get(lab, lab) for lab in stats.labels)
    series = f", {len(idx)} slices checked" if len(idx) > 1 else ""
    return GateVerdict(
        False,
        f"does not look like {what} (distance {distance:.1f} > {threshold:.1f} "
        f"for {_PLACES.get(stats.labels[m], stats.labels[m])}{series})",
        "distance",
        distance,
        threshold,
    )


def check_chest(scan: Scan, models_dir: str | os.PathLike[str] | None = None) -> GateVerdict:
    """Run the gate on ``scan``: header and pixel rules, then the learned check.

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
        everything silently).
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
    try:
        return learned_check(scan, info, stats)
    except ModelRefused:
        raise
    except ModelError as exc:
        log.warning("chest-image gate: learned check unavailable (%s)", exc)
        return GateVerdict(True)


def require_chest(scan: Scan, models_dir: str | os.PathLike[str] | None = None) -> GateVerdict:
    """:func:`check_chest`, raising :class:`NotChestImage` on refusal.

    Raises
    ------
    NotChestImage
        The scan is not a chest CT slice or chest X-ray; the message says why.
    """
    verdict = check_chest(scan, models_dir)
    if not verdict.accepted:
        raise verdict.error(scan.source)
    return verdict
