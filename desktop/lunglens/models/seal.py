"""The seal of a manifest's decision fields (``decision_sha256``, docs/model-contract.md).

``sha256`` covers ``model.onnx`` only; the threshold, the labels, the input contract, the
series rule and the chest-image gate live in ``manifest.json`` beside it, and they decide a
scan as much as the weights do. Without a seal an edited threshold would go unnoticed: the
results would carry the same name, version and model hash as the released model's, with other
decisions. So every manifest the training module writes carries the SHA-256 of those fields
(:data:`SEALED`) in a canonical JSON form, and every reader (the app's registry, the training
stages that measure a shipped folder again, the distribution builds) refuses a manifest without
a seal or whose fields no longer match it.

A seal detects an edit, not an attack: anyone who can change the file can compute a new seal.
What it guarantees is that a threshold is never changed by hand, by a script, or by a merge,
without the app saying so; a site's own threshold (``lunglens validate``) is information, and a
new operating point is a new model version.

Standard library only: ``packaging/shipped.py`` loads this file by path in a bare build
environment (hence ``hashlib`` here rather than :mod:`lunglens.models.hashing`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

#: The manifest key of the seal.
SEAL = "decision_sha256"

#: The fields a scan's decision or its display depends on, and the model's identity with the
#: text reports print beside it: what the seal covers. Documentation (cards' numbers, training
#: facts, ``default_for_modality``: a site's choice of model, which every result names) is left
#: out, so ``--stages cam``/``parity`` rewrite a manifest without touching its seal; the tools
#: that change a sealed field (``--stages quantize``, ``lunglens-train ood``) seal it again.
SEALED = (
    "name",
    "version",
    "architecture",
    "task",
    "modality",
    "labels",
    "positive_label",
    "input",
    "outputs",
    "file",
    "sha256",
    "threshold",
    "threshold_rule",
    "warn_probability",
    "series_aggregation",
    "cam_reference",
    "ood",
    "feature_check",
)


def plain_json(obj: Any) -> Any:
    """``obj`` as strict JSON values: NumPy scalars as Python numbers, tuples as lists and NaN
    as ``null`` (what the manifest writers emit, so a value hashes the same before it is
    written and after it is read back)."""
    if isinstance(obj, Mapping):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain_json(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if callable(getattr(obj, "tolist", None)):  # a NumPy scalar or array (not imported here)
        return plain_json(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _canonical(obj: Any) -> Any:
    """Whole floats as integers (``-600.0`` and ``-600`` are one value; JSON tools such as jq
    or PowerShell write the one or the other)."""
    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    return obj


def decision_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the :data:`SEALED` fields of the JSON object ``manifest``, canonically
    encoded (sorted keys, no spaces, ASCII, whole floats as integers): the same for any
    formatting of the same values."""
    sealed = _canonical(plain_json({k: manifest[k] for k in SEALED if k in manifest}))
    text = json.dumps(sealed, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _finite(obj: Any) -> bool:
    """No NaN or infinity anywhere in ``obj`` (as read: a writer puts ``null`` there)."""
    if isinstance(obj, Mapping):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(_finite(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


def seal_matches(manifest: Mapping[str, Any]) -> bool | None:
    """Whether the manifest's seal matches its fields; ``None`` when it carries no seal.

    A sealed field holding NaN or infinity does not match: the writers put ``null`` there, and
    the canonical form maps both to ``null``, so such a value can only be an edit."""
    claimed = manifest.get(SEAL)
    if claimed is None:
        return None
    if not _finite([manifest[k] for k in SEALED if k in manifest]):
        return False
    return str(claimed).lower() == decision_digest(manifest)
