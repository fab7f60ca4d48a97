"""The learned gate's statistics: one Gaussian per modality, Mahalanobis distance to each.

Lee et al. (2018, NeurIPS): an image whose descriptor (:mod:`lunglens.inference.gate_features`)
is far, in Mahalanobis distance, from every modality's training images is out of distribution.
:func:`fit_stats` fits the means and shrunk inverse covariances and takes each modality's
threshold from held-out folds; :func:`load_stats` reads the fitted ``ood.npz`` of the
``modality-check`` model after checking its SHA-256 against the manifest.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lunglens.errors import ModelRefused
from lunglens.inference.gate_features import DESCRIPTOR_VERSION
from lunglens.io.scan import SCORED_MODALITIES
from lunglens.models.hashing import sha256_bytes
from lunglens.models.registry import ModelInfo

#: Slices sampled from a series; a series passes when at least ``SERIES_QUORUM`` of them pass.
SERIES_SAMPLES = 16
SERIES_QUORUM = 0.25


def sample_slices(n: int, limit: int = SERIES_SAMPLES) -> np.ndarray:
    """Up to ``limit`` evenly spaced slice indices of an ``n``-slice scan."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def quorum_slice(ratio: np.ndarray) -> int:
    """Index of the slice that decides a series: the ``SERIES_QUORUM``-th best ``ratio``
    (distance / threshold), so a series passes when at least that share of its sampled slices
    pass (series start above the lungs and end below them). One slice decides itself."""
    order = np.argsort(ratio)
    return int(order[max(0, int(np.ceil(SERIES_QUORUM * len(ratio))) - 1)])


@dataclass(frozen=True)
class GateStats:
    """Fitted statistics of the learned check (``ood.npz``).

    Attributes
    ----------
    labels
        Modalities, e.g. :data:`~lunglens.io.SCORED_MODALITIES`.
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

    def to_bytes(self, version: int = DESCRIPTOR_VERSION) -> bytes:
        """``.npz`` bytes (no pickles) for :func:`load_stats`, recording the ``version`` of the
        descriptor the statistics were fitted on."""
        buf = io.BytesIO()
        np.savez(
            buf,
            labels=np.array(self.labels),
            mean=self.mean,
            precision=self.precision,
            threshold=self.threshold,
            descriptor_version=np.array(version),
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
    labels: tuple[str, ...] = SCORED_MODALITIES,
    acceptance: float | Mapping[str, float] = 0.995,
    shrink: float = 0.01,
) -> tuple[GateStats, np.ndarray]:
    """Fit the learned check; thresholds from held-out folds.

    For each fold ``k`` the Gaussians are fitted on the other folds and the distances of fold
    ``k``'s images to their own modality are recorded; each modality's threshold is the
    ``acceptance`` quantile of its held-out distances (one share for all, or one per label). The
    returned statistics are then fitted on all images with those thresholds.

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
    share = {
        lab: acceptance[lab] if isinstance(acceptance, Mapping) else acceptance for lab in labels
    }
    thresholds = np.array(
        [np.quantile(heldout[modality == lab, m], share[lab]) for m, lab in enumerate(labels)]
    )
    fitted = [shrunk_precision(desc[modality == lab], shrink) for lab in labels]
    means, precs = [f[0] for f in fitted], [f[1] for f in fitted]
    stats = GateStats(tuple(labels), np.stack(means), np.stack(precs), thresholds)
    return stats, (heldout / thresholds).min(axis=1)


def load_stats(
    info: ModelInfo, block: str = "ood", version: int = DESCRIPTOR_VERSION
) -> GateStats | None:
    """The statistics file named in ``info``'s manifest block ``block``, verified.

    ``ood`` holds the learned check's statistics, ``feature_check`` those of the CT feature
    check (:mod:`lunglens.inference.gate_feature_check`). Returns ``None`` when the manifest
    has no such block.

    Raises
    ------
    ModelRefused
        The file is missing, its SHA-256 differs from the manifest, or it is not the
        statistics of descriptor ``version`` (:func:`descriptor`'s, or for ``feature_check``
        :func:`feature_descriptor`'s).
    """
    entry = getattr(info.spec, block, None)  # the field: info.manifest rebuilds JSON and seal
    if not entry:
        return None
    path = info.path / str(entry["file"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelRefused(path, f"gate statistics cannot be read ({exc.strerror})") from exc
    actual = sha256_bytes(data)
    if actual != str(entry.get("sha256", "")).lower():
        raise ModelRefused(
            path,
            f"gate statistics failed their integrity check: SHA-256 is {actual[:12]}..., "
            f"manifest says {str(entry.get('sha256', ''))[:12]}...",
            "Reinstall the model folder; do not use it.",
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            found = int(npz["descriptor_version"])
            stats = GateStats(
                tuple(str(x) for x in npz["labels"]),
                np.asarray(npz["mean"], np.float64),
                np.asarray(npz["precision"], np.float64),
                np.asarray(npz["threshold"], np.float64),
            )
    except (KeyError, ValueError, OSError) as exc:
        raise ModelRefused(path, f"gate statistics are malformed ({exc})") from exc
    if found != version:
        raise ModelRefused(
            path,
            f"gate statistics are for descriptor version {found}, this app computes {version}",
            "Refit them with 'lunglens-train ood'.",
        )
    return stats
