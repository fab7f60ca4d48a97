"""Registry of shipped models: discover ``models/*/manifest.json``, check them, pick one.

A model folder is trusted only after its ``model.onnx`` matches the SHA-256 recorded in the
manifest, so a truncated download or an edited file can never silently produce scores. Listing is
cheap (manifests only); hashing happens in :func:`verify_model`, which the inference engine calls
once before it creates a session.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lunglens.errors import ModelError, ModelNotFound, ModelRefused
from lunglens.io import SCORED_MODALITIES, Modality
from lunglens.models.hashing import sha256_bytes
from lunglens.models.location import models_dir as _models_dir
from lunglens.models.manifest import MODALITY_CHECK, TRIAGE, GalleryLayer, ModelManifest
from lunglens.preprocess import Preprocessing, Window

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"

#: Preferred models per modality when several fit and none is marked
#: ``"default_for_modality": true`` in its manifest (a model folder that is so marked wins).
#: Otherwise the alphabetically first model of that modality, so adding a model never needs
#: code changes.
PREFERRED: dict[str, tuple[str, ...]] = {
    Modality.CT: ("efficientnet-lite-ct", "squeezenet-light-ct"),
    Modality.CXR: ("efficientnet-lite-cxr", "squeezenet-light-cxr"),
}


@dataclass(frozen=True)
class ModelInfo:
    """What the app needs to know about one shipped model (a checked ``manifest.json``).

    The fields are parsed from :attr:`spec` once, when the folder is loaded.

    Attributes
    ----------
    name, version, architecture, modality
        Identity of the model; ``modality`` is ``"ct"`` or ``"cxr"``.
    labels
        Class names in the order of the ``probs`` output.
    positive_label
        The label whose probability ranks scans (``"covid"``).
    input_size
        ``(H, W)`` the image is resized to before inference.
    window
        CT window the model was trained with (for DICOM loading), or ``None``.
    threshold
        Operating point: a scan is flagged when its positive probability is >= this.
    sha256
        Expected hash of ``model.onnx`` (lower case).
    gallery
        Activation outputs available for the gallery.
    path
        The model folder; ``onnx_path`` is the ONNX file inside it.
    spec
        The manifest as read (:class:`~lunglens.models.manifest.ModelManifest`): metrics,
        training, intended use...
    """

    name: str
    version: str
    architecture: str
    modality: str
    labels: tuple[str, ...]
    positive_label: str
    input_size: tuple[int, int]
    window: Window | None
    preprocessing: Preprocessing
    threshold: float
    sha256: str
    gallery: tuple[GalleryLayer, ...]
    path: Path
    onnx_path: Path
    spec: ModelManifest = field(repr=False, compare=False)

    @classmethod
    def from_manifest(cls, spec: ModelManifest, folder: Path) -> ModelInfo:
        """The app's view of the checked manifest ``spec`` of the model folder ``folder``."""
        return cls(
            name=spec.name,
            version=spec.version,
            architecture=spec.architecture or "",
            modality=spec.modality,
            labels=spec.labels,
            positive_label=spec.positive_label,
            input_size=spec.input_size(),
            window=spec.window(),
            preprocessing=spec.preprocessing(),
            threshold=spec.threshold if spec.threshold is not None else 0.5,
            sha256=spec.sha256.lower(),
            gallery=spec.gallery(),
            path=folder,
            onnx_path=folder / spec.file,
            spec=spec,
        )

    @property
    def manifest(self) -> Mapping[str, Any]:
        """The manifest as its JSON object (:meth:`ModelManifest.to_dict`)."""
        return self.spec.to_dict()

    @property
    def cam_reference(self) -> dict[str, float]:
        """Label -> CAM peak of a typical flagged scan (the floor of a not-flagged scan's map
        scale, :func:`lunglens.explain.display_floor`); empty for a model without one."""
        return self.spec.cam_references()

    @property
    def positive_index(self) -> int:
        """Index of :attr:`positive_label` in :attr:`labels`."""
        return self.labels.index(self.positive_label)

    @property
    def series_aggregation(self) -> tuple[str, int]:
        """``(method, k)`` for CT series, from the manifest (default ``("top_k_mean", 3)``)."""
        agg = self.spec.series_aggregation or {}
        return str(agg.get("method", "top_k_mean")), int(agg.get("k", 3))

    @property
    def series_threshold(self) -> float:
        """Threshold for an aggregated series (``series_aggregation.threshold``, calibrated on
        patient groups), else the slice threshold."""
        agg = self.spec.series_aggregation or {}
        return float(agg.get("threshold", self.threshold))

    @property
    def task(self) -> str:
        """``"triage"`` (COVID-19 models) or ``"modality-check"`` (the CT-vs-X-ray router)."""
        return self.spec.task_or_default()

    @property
    def short_hash(self) -> str:
        """First 12 hex digits of the SHA-256, for display."""
        return self.sha256[:12]


def load_manifest(folder: str | os.PathLike[str]) -> ModelInfo:
    """Parse ``folder/manifest.json`` into a :class:`ModelInfo` (no hashing).

    Raises
    ------
    ModelRefused
        Missing or unreadable manifest, invalid JSON, missing keys, inconsistent labels, a
        ``file`` outside the folder, or a missing ONNX file.
    """
    folder = Path(folder)
    mpath = folder / MANIFEST
    info = _parsed(str(folder), ModelManifest.read_text(mpath))
    _confine(mpath, folder, info.onnx_path)
    if not info.onnx_path.is_file():
        raise ModelRefused(info.onnx_path, "model file is missing", "Reinstall the model folder.")
    return info


@functools.lru_cache(maxsize=64)
def _parsed(folder: str, text: str) -> ModelInfo:
    """The checked manifest of ``folder`` whose file holds ``text``.

    Keyed by the text itself (not the file's time stamp), so an edited manifest is parsed and
    checked again, while every classify call, which looks the modality check and its model up
    again, reads a few small files instead of parsing and checking five manifests. The
    folder-confinement and file checks still run on every load.
    """
    path = Path(folder)
    return ModelInfo.from_manifest(ModelManifest.parse(text, path / MANIFEST), path)


def _confine(mpath: Path, folder: Path, onnx_path: Path) -> None:
    """Refuse a manifest ``file`` outside its model folder (``../x.onnx``, ``/etc/hostname``,
    a symbolic link leading out): a model folder is verified and installed as one unit."""
    declared = Path(str(onnx_path.relative_to(folder)) if onnx_path.is_relative_to(folder) else "")
    try:
        inside = onnx_path.resolve().is_relative_to(folder.resolve())
    except OSError:
        inside = False
    if not declared.parts or declared.is_absolute() or ".." in declared.parts or not inside:
        raise ModelRefused(
            mpath,
            f"manifest 'file' points outside the model folder ({onnx_path})",
            "Reinstall the model folder; a model file must be inside it.",
        )


def _lenient(folder: Path) -> dict[str, Any] | None:
    """A manifest's JSON object read without any check (for a folder whose manifest failed:
    what it claims to be), ``None`` when it cannot be read as one."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _task_of(folder: Path) -> str:
    """The ``task`` a manifest declares, read leniently (for a folder whose manifest failed)."""
    data = _lenient(folder)
    if data is None:
        return MODALITY_CHECK if folder.name == MODALITY_CHECK else ""
    return str(data.get("task", TRIAGE))


def discover_models(
    models_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[ModelInfo], list[ModelError]]:
    """Parse every ``<models_dir>/*/manifest.json``.

    Returns
    -------
    models, problems
        Valid models sorted by name, and one :class:`~lunglens.errors.ModelError` per folder
        that could not be used (so one bad folder never hides the good ones).
    """
    models, refused = _scan(_models_dir(models_dir))
    return [models[k] for k in sorted(models)], [exc for _, exc in refused]


def _scan(root: Path) -> tuple[dict[str, ModelInfo], list[tuple[Path, ModelError]]]:
    """:func:`discover_models` with each refused folder kept beside its error."""
    models: dict[str, ModelInfo] = {}
    refused: list[tuple[Path, ModelError]] = []
    if not root.is_dir():
        return {}, []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (folder / MANIFEST).exists():
            continue  # not a model folder (e.g. a README or scratch space)
        try:
            info = load_manifest(folder)
        except ModelError as exc:
            refused.append((folder, exc))
            continue
        if info.name in models:
            refused.append((folder, ModelRefused(folder, f"duplicate model name {info.name!r}")))
            continue
        models[info.name] = info
    return models, refused


def list_models(
    models_dir: str | os.PathLike[str] | None = None, task: str | None = TRIAGE
) -> list[ModelInfo]:
    """Return the usable models of ``task`` (``None``: all); bad folders are logged, not fatal.

    The default lists only triage models: the modality check is a helper the user never
    picks, so model choosers and defaults must not offer it.
    """
    models, problems = discover_models(models_dir)
    for problem in problems:
        log.warning("skipping model: %s", problem)
    return [m for m in models if task is None or m.task == task]


def modality_checker(models_dir: str | os.PathLike[str] | None = None) -> ModelInfo | None:
    """The installed image-level modality check (``task: modality-check``), if any.

    Raises
    ------
    ModelRefused
        A modality-check folder is installed but its manifest is broken: it is an error like a
        broken triage model, never read as "no check installed" (plain images would then be
        scored by a model of the wrong modality).
    """
    models, problems = discover_models(models_dir)
    for problem in problems:
        folder = Path(problem.path or "")
        folder = folder if folder.is_dir() else folder.parent
        if _task_of(folder) == MODALITY_CHECK:
            raise problem
    found = [m for m in models if m.task == MODALITY_CHECK]
    return found[0] if found else None


def get_model(name: str, models_dir: str | os.PathLike[str] | None = None) -> ModelInfo:
    """Return the model called ``name``.

    Raises
    ------
    ModelNotFound
        No valid model of that name (the message lists the available ones).
    ModelRefused
        A folder of that name exists but its manifest is broken.
    """
    models, problems = discover_models(models_dir)
    by_name = {m.name: m for m in models}
    if name in by_name:
        return by_name[name]
    for problem in problems:
        # A folder named like the model whose manifest or ONNX file is broken: say so.
        if problem.path and name in (Path(problem.path).parent.name, Path(problem.path).name):
            raise problem
    available = ", ".join(by_name) or "none"
    raise ModelNotFound(
        _models_dir(models_dir),
        f"no model named {name!r} (available: {available})",
        "Run 'lunglens models' to list them.",
    )


def default_model_for(modality: str, models_dir: str | os.PathLike[str] | None = None) -> ModelInfo:
    """Return the model used for ``modality`` (``"ct"`` or ``"cxr"``) when none is chosen.

    Raises
    ------
    ModelNotFound
        No installed model handles that modality (e.g. ``"unknown"`` for a plain PNG).
    ModelRefused
        The model automatic mode would use (marked default, else preferred) is refused (a
        manifest edited after its seal, a missing file...): the next one is never used instead.
    """
    models, refused = _scan(_models_dir(models_dir))
    for _, problem in refused:
        log.warning("skipping model: %s", problem)
    fitting = {n: m for n, m in models.items() if m.modality == modality and m.task == TRIAGE}
    # what automatic mode would choose, refused folders included (as their manifests claim):
    # a refused default is reported, never silently replaced by the next model
    ranked: list[tuple[tuple[int, int, str], ModelInfo | tuple[str, ModelError]]] = [
        (_rank(m.name, modality, bool(m.spec.default_for_modality)), m) for m in fitting.values()
    ]
    for folder, problem in refused:
        claims = _lenient(folder) or {}
        if claims.get("modality") == modality and claims.get("task", TRIAGE) == TRIAGE:
            name = str(claims.get("name", folder.name))
            marked = claims.get("default_for_modality") is True
            ranked.append((_rank(name, modality, marked), (name, problem)))
    if ranked:
        _, first = min(ranked, key=lambda pair: pair[0])
        if isinstance(first, ModelInfo):
            return first
        name, problem = first
        raise ModelRefused(
            problem.path,
            f"the {modality} model automatic mode uses, {name}, is refused: {problem.reason}",
            "Reinstall it, or choose another model by name (--model NAME; in the app, the Model "
            "list): automatic mode does not fall back to a model that is not the default.",
        )
    if modality not in SCORED_MODALITIES:
        raise ModelNotFound(
            None,
            f"the scan's modality is {modality!r}, so no model can be chosen automatically",
            "Choose one with --model (see 'lunglens models').",
        )
    raise ModelNotFound(
        _models_dir(models_dir),
        f"no installed model handles {modality!r} scans",
        "Install a model folder or pick one with --model.",
    )


def _rank(name: str, modality: str, marked: bool) -> tuple[int, int, str]:
    """Automatic mode's order: a model marked ``default_for_modality``, then :data:`PREFERRED`,
    then by name."""
    preferred = PREFERRED.get(modality, ())
    order = preferred.index(name) if name in preferred else len(preferred)
    return (0 if marked else 1, order, name)


def read_verified(info: ModelInfo) -> bytes:
    """Return the ONNX bytes after checking their SHA-256.

    The engine builds its session from these exact bytes, so the file cannot change between
    the check and the load.

    Raises
    ------
    ModelRefused
        Missing file or hash mismatch (tampered, truncated or replaced model).
    """
    try:
        data = info.onnx_path.read_bytes()
    except OSError as exc:
        raise ModelRefused(
            info.onnx_path,
            f"model file cannot be read ({exc.strerror})",
            "Reinstall the model folder.",
        ) from exc
    actual = sha256_bytes(data)
    if actual != info.sha256:
        raise ModelRefused(
            info.onnx_path,
            f"model {info.name} {info.version} failed its integrity check: SHA-256 is "
            f"{actual[:12]}..., manifest says {info.sha256[:12]}... (file size {len(data)} bytes); "
            "the file is damaged, truncated or was modified",
            "Reinstall the model folder; do not use it.",
        )
    return data


def verify_model(info: ModelInfo) -> ModelInfo:
    """Check ``info``'s ONNX file against its manifest hash; return ``info`` when it matches.

    Raises
    ------
    ModelRefused
        The file is missing or its SHA-256 differs from the manifest.
    """
    read_verified(info)
    return info
