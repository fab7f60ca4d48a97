"""The ``manifest.json`` schema of a model folder (docs/model-contract.md), as one dataclass.

:class:`ModelManifest` is read by the registry (:func:`lunglens.models.registry.load_manifest`)
and written by the training module (``lunglens.training.pipeline``, ``lunglens.training.modality``
and ``lunglens.training.ood``), so the app and the code that makes the models agree on one
definition of every field, in the spirit of timm's ``PretrainedCfg``.

:meth:`ModelManifest.from_dict` checks what the app relies on (required keys, types, labels,
and the seal of the decision fields, :mod:`lunglens.models.seal`); :meth:`ModelManifest.to_dict`
gives back the JSON object key for key, sealed: a manifest read from disk round-trips unchanged,
including keys written as ``null`` and keys this schema does not know (kept in
:attr:`ModelManifest.extra`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lunglens.errors import ModelRefused
from lunglens.models.seal import SEAL, decision_digest, plain_json, seal_matches
from lunglens.preprocess import WINDOW_PRESETS, Preprocessing, Window

#: Manifest ``task`` values.
TRIAGE = "triage"
MODALITY_CHECK = "modality-check"
#: Keys without which the registry refuses a manifest.
REQUIRED = ("name", "version", "modality", "labels", "positive_label", "input", "file", "sha256")
#: A JSON object in the manifest (``input``, ``metrics``, ``training``...).
JSONObject = Mapping[str, Any]


@dataclass(frozen=True)
class GalleryLayer:
    """One activation output a model exposes for the activation gallery (``act_<k>``)."""

    output: str
    layer: str
    shape: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class ModelManifest:
    """One model's ``manifest.json`` (field meanings: docs/model-contract.md).

    Fields are declared in the order the writers emit them, which is the key order of
    :meth:`to_dict`. An optional field that is ``None`` is left out of the JSON unless its name
    is in :attr:`keep_null` (then it is written as ``null``, e.g. ``cam_in_lungs`` of a model
    that was not measured).

    Attributes
    ----------
    name, version, modality, labels, positive_label, input, file, sha256
        Required: identity, the classes in ``probs`` order, the ``input`` block and the ONNX
        file with its hash (kept as written; the registry compares it lower-cased).
    decision_sha256
        The seal of the fields that decide a scan (:data:`lunglens.models.seal.SEALED`):
        required and checked when read, computed again by :meth:`to_dict`.
    task
        ``"triage"`` when absent, or ``"modality-check"``.
    threshold, series_aggregation, warn_probability, default_for_modality, outputs, ood,
    feature_check, cam_reference
        Read by the app (decision, CT series, modality warning, model choice, gallery, gate,
        the CAM's colour scale on a scan that is not flagged).
    architecture, arch, reference_fp32, threshold_rule, decision_rule, operating_point,
    cam_in_lungs, quantization, export, metrics, training, intended_use
        Documentation for people, model cards, benchmarks and tests.
    extra
        Keys this schema does not define, kept as read and written after the known ones.
    keep_null
        Optional fields written as ``null`` when ``None``.
    """

    name: str
    version: str
    task: str | None = None
    architecture: str | None = None
    arch: str | None = None
    modality: str
    labels: tuple[str, ...]
    positive_label: str
    input: JSONObject
    default_for_modality: bool | None = None
    outputs: JSONObject | None = None
    file: str
    sha256: str
    decision_sha256: str | None = None
    reference_fp32: JSONObject | None = None
    threshold: float | None = None
    threshold_rule: str | None = None
    warn_probability: float | None = None
    decision_rule: str | None = None
    operating_point: JSONObject | None = None
    series_aggregation: JSONObject | None = None
    cam_in_lungs: JSONObject | None = None
    cam_reference: JSONObject | None = None
    quantization: JSONObject | None = None
    export: JSONObject | None = None
    metrics: JSONObject | None = None
    training: JSONObject | None = None
    intended_use: str | None = None
    ood: JSONObject | None = None
    feature_check: JSONObject | None = None
    extra: JSONObject = field(default_factory=dict, repr=False)
    keep_null: frozenset[str] = field(default=frozenset(), repr=False)

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ModelManifest:
        """Read and check the manifest file at ``path`` (see :meth:`from_dict`).

        Raises
        ------
        ModelRefused
            Missing or unreadable file, invalid JSON, or a manifest :meth:`from_dict` refuses.
        """
        return cls.parse(cls.read_text(path), path)

    @staticmethod
    def read_text(path: str | os.PathLike[str]) -> str:
        """The manifest file's text.

        Raises
        ------
        ModelRefused
            Missing or unreadable file, or not UTF-8 (a byte-order mark is allowed).
        """
        path = Path(path)
        try:
            return path.read_text(encoding="utf-8-sig")  # a BOM (Windows Notepad) is harmless
        except FileNotFoundError as exc:
            raise ModelRefused(path, "no manifest.json in the model folder") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelRefused(path, f"manifest is not valid JSON ({exc})", _REINSTALL) from exc

    @classmethod
    def parse(cls, text: str, path: str | os.PathLike[str]) -> ModelManifest:
        """Check the manifest text read from ``path`` (named in errors).

        Raises
        ------
        ModelRefused
            Invalid JSON, or a manifest :meth:`from_dict` refuses.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelRefused(
                Path(path), f"manifest is not valid JSON ({exc})", _REINSTALL
            ) from exc
        return cls.from_dict(data, Path(path))

    @classmethod
    def from_dict(cls, data: object, source: str | Path | None = None) -> ModelManifest:
        """Check a parsed manifest and return it as a :class:`ModelManifest`.

        Parameters
        ----------
        data
            The parsed JSON.
        source
            The manifest file, named in errors.

        Raises
        ------
        ModelRefused
            Not a JSON object, missing required keys, a field of the wrong type (labels,
            input size, window, preprocessing, gallery, threshold...), a ``positive_label``
            that is not one of ``labels``, fewer than two labels, no ``decision_sha256``, or
            decision fields that no longer match it (edited after it was written).
        """
        if not isinstance(data, dict):
            raise ModelRefused(source, "manifest is not a JSON object", _REINSTALL)
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ModelRefused(source, f"manifest lacks {', '.join(missing)}", _REINSTALL)
        known = {f.name for f in fields(cls)} - {"extra", "keep_null"}
        try:
            manifest = cls(
                **{k: _coerced(k, v) for k, v in data.items() if k in known},
                extra={k: v for k, v in data.items() if k not in known},
                keep_null=frozenset(k for k, v in data.items() if k in known and v is None),
            )
            # parse once what the registry derives, so a malformed block is refused here
            manifest.input_size()
            manifest.window()
            manifest.preprocessing()
            manifest.gallery()
            manifest.cam_references()
        except _FieldError as exc:
            raise ModelRefused(source, f"manifest is malformed: {exc}", _REINSTALL) from exc
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelRefused(source, f"manifest is malformed ({exc!r})", _REINSTALL) from exc
        if manifest.positive_label not in manifest.labels:
            raise ModelRefused(
                source,
                f"positive_label {manifest.positive_label!r} is not one of {list(manifest.labels)}",
                _REINSTALL,
            )
        if len(manifest.labels) < 2:
            raise ModelRefused(source, "a model needs at least two labels", _REINSTALL)
        sealed = seal_matches(data)
        if sealed is None:
            raise ModelRefused(
                source,
                f"manifest is not sealed (no {SEAL}): its threshold, labels and input are not "
                "protected against edits",
                "Reinstall the model folder from a LungLens release, or write it again with "
                "lunglens-train.",
            )
        if not sealed:
            raise ModelRefused(
                source,
                "manifest edited after the model was made: its decision fields (threshold, "
                "labels, input, series rule, gate, name, version, model hash) no longer match "
                f"its {SEAL}",
                "Reinstall the model folder. A threshold of your own is not a setting: "
                "`lunglens validate` reports one for information.",
            )
        return manifest

    # -- writing -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``manifest.json``: known fields in declaration order, then
        :attr:`extra`. Values are the objects held (not copies); ``labels`` is a list.
        ``decision_sha256`` is the seal of the fields as they are now (a writer seals what it
        writes), whatever the manifest was read with."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("extra", "keep_null"):
                continue
            if f.name == SEAL:  # its place in the file; the value is computed below
                out[SEAL] = None
                continue
            value = getattr(self, f.name)
            if value is None and f.name not in self.keep_null:
                continue
            out[f.name] = list(value) if f.name == "labels" else value
        out.update(self.extra)
        out[SEAL] = decision_digest(out)  # SEALED does not hold the seal itself
        return out

    def to_json(self) -> str:
        """The text of ``manifest.json`` as every writer writes it: :meth:`to_dict` as strict,
        indented JSON (NumPy values as numbers, NaN as ``null``: what the seal hashed)."""
        return json.dumps(plain_json(self.to_dict()), indent=2)

    # -- what the app derives ----------------------------------------------------------------
    def task_or_default(self) -> str:
        """``task``, ``"triage"`` when the manifest does not say."""
        return self.task if self.task is not None else TRIAGE

    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the model input: ``input.size``, else the last two of ``input.shape``."""
        size = self.input.get("size") or self.input["shape"][-2:]
        return int(size[0]), int(size[1])

    def window(self) -> Window | None:
        """The CT window of ``input.window``: a preset name or ``{name, center, width}``."""
        raw = self.input.get("window")
        if not raw:
            return None
        if isinstance(raw, str):
            return WINDOW_PRESETS.get(raw)
        if "center" in raw and "width" in raw:
            return Window(float(raw["center"]), float(raw["width"]), str(raw.get("name", "custom")))
        return WINDOW_PRESETS.get(str(raw.get("name", "")))

    def preprocessing(self) -> Preprocessing:
        """The crop and intensity step of ``input.preprocessing`` (none when absent)."""
        return Preprocessing.from_manifest(self.input.get("preprocessing"))

    def cam_references(self) -> dict[str, float]:
        """``cam_reference.values``: per label, the CAM peak of a typical flagged scan of that
        label (``docs/model-contract.md``); empty when the manifest has none."""
        ref = self.cam_reference or {}
        if not isinstance(ref, Mapping):
            raise TypeError(f"cam_reference must be an object, not {ref!r}")
        values = ref.get("values") or {}
        if not isinstance(values, Mapping):
            raise TypeError(f"cam_reference values must be an object, not {values!r}")
        out: dict[str, float] = {}
        for label, v in values.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise TypeError(f"cam_reference {label!r}: {v!r} is not a number")
            if label not in self.labels or not math.isfinite(v) or v <= 0:
                raise ValueError(f"cam_reference {label!r}: {v} is not a positive value of a label")
            out[str(label)] = float(v)
        return out

    def gallery(self) -> tuple[GalleryLayer, ...]:
        """The ``act_<k>`` outputs listed in ``outputs.gallery``."""
        outputs = self.outputs or {}
        return tuple(
            GalleryLayer(
                str(g["output"]),
                str(g.get("layer", g["output"])),
                tuple(int(s) for s in g.get("shape", ())),
            )
            for g in outputs.get("gallery", [])
        )


def _as_is(value: Any) -> Any:
    return value


def _optional(convert: Any) -> Any:
    """``convert`` for a value that may be JSON ``null``."""
    return lambda value: None if value is None else convert(value)


#: How :meth:`ModelManifest.from_dict` types each field the app reads; the rest are kept as read.
#: What a refused manifest's message advises.
_REINSTALL = "Reinstall the model folder from the LungLens release or bundle it came with."


class _FieldError(ValueError):
    """A top-level field whose value has the wrong type (named in the refusal)."""


def _coerced(key: str, value: Any) -> Any:
    """``value`` of field ``key`` as the schema wants it; :class:`_FieldError` names the field
    (``threshold: null is not a number``) instead of a bare ``float()`` error."""
    try:
        return _COERCE.get(key, _as_is)(value)
    except (TypeError, ValueError) as exc:
        shown = "null" if value is None else repr(value)
        raise _FieldError(f"{key}: {shown} is not a valid value ({exc})") from exc


_COERCE: dict[str, Any] = {
    "name": str,
    "version": str,
    "modality": str,
    "labels": lambda v: tuple(str(x) for x in v),
    "positive_label": str,
    "file": str,
    "sha256": str,
    "decision_sha256": _optional(str),
    "task": _optional(str),
    "architecture": _optional(str),
    "threshold": float,
    "warn_probability": _optional(float),
}
