"""Which model family fits a scan: the DICOM header, and an image-level check of the pixels.

DICOM files say what they are in ``Modality`` (0008,0060): CT, or CR/DX for radiographs. Plain
PNG/JPEG files say nothing, and headers can be misleading (secondary captures are ``OT``). The
shipped ``modality-check`` model (a tiny CNN trained on the CT and X-ray data sets, see
:mod:`lunglens.training.modality` and its model card) looks at the image itself:

* plain images are routed by it (the user can still choose another model);
* a warning is raised when it is confident (``warn_probability`` in its manifest, 0.9) that
  the image is of the other modality than the DICOM header or the chosen model.

Without that model installed everything still works: plain images then need a model choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from lunglens.errors import ModalityMismatch, ModelNotFound
from lunglens.inference.engine import get_engine
from lunglens.io.scan import SCORED_MODALITIES, Modality, Scan
from lunglens.models.registry import ModelInfo, default_model_for, modality_checker
from lunglens.preprocess import to_model_input

_NAMES: dict[str, str] = {Modality.CT: "a CT slice", Modality.CXR: "a chest X-ray"}


@dataclass(frozen=True)
class ModalityCheck:
    """The image-level check's answer for one scan.

    Attributes
    ----------
    modality
        One of :data:`~lunglens.io.SCORED_MODALITIES` (the check's labels): the more probable.
    probability
        Its probability.
    confident
        ``probability >= warn_probability`` of the check's manifest.
    model
        ``"name version"`` of the check, for notes and audit.
    """

    modality: str
    probability: float
    confident: bool
    model: str

    def looks_like(self) -> str:
        return f"looks like {_NAMES.get(self.modality, self.modality)} (p={self.probability:.2f})"


def check_modality(
    scan: Scan, models_dir: str | os.PathLike[str] | None = None
) -> ModalityCheck | None:
    """Run the modality check on the scan's middle slice; ``None`` if it is not installed.

    Raises
    ------
    ModelRefused
        The check is installed but fails its verification (hash, manifest, graph): it routes
        plain images to a model, so a tampered one is an error like a tampered triage model.
    """
    info = modality_checker(models_dir)
    return None if info is None else check_with(info, scan)


def check_with(info: ModelInfo, scan: Scan) -> ModalityCheck | None:
    """:func:`check_modality` with the check model already found (batches look it up once,
    not by re-reading every manifest for each plain image)."""
    engine = get_engine(info)  # ModelRefused for a tampered check, as for any model
    image = scan.image[scan.n_slices // 2]
    batch = to_model_input(image, info.input_size, info.preprocessing)
    probs = engine.predict(batch, ("probs",))["probs"][0]
    idx = int(np.argmax(probs))
    warn_at = float(info.manifest.get("warn_probability", 0.9))
    return ModalityCheck(
        modality=info.labels[idx],
        probability=float(probs[idx]),
        confident=bool(probs[idx] >= warn_at),
        model=f"{info.name} {info.version}",
    )


def routing_modality(scan: Scan, check: ModalityCheck | None) -> str:
    """The modality used to pick a default model: the header's, else the image check's."""
    if scan.modality in SCORED_MODALITIES:
        return scan.modality
    return check.modality if check is not None else scan.modality


def choose_model(
    scan: Scan,
    models_dir: str | os.PathLike[str] | None = None,
    check: ModalityCheck | None = None,
) -> ModelInfo:
    """The default triage model for ``scan``: by DICOM modality, else by the image check.

    Raises
    ------
    ModelNotFound
        A plain image and no modality check installed, or no model for that modality.
    """
    if check is None and scan.modality not in SCORED_MODALITIES:
        check = check_modality(scan, models_dir)
    return default_model_for(routing_modality(scan, check), models_dir)


def default_models(models_dir: str | os.PathLike[str] | None = None) -> dict[str, ModelInfo]:
    """Automatic mode's model per modality: :func:`default_model_for` of each installed one.

    Raises
    ------
    ModelNotFound
        No triage model is installed for any modality.
    """
    found: dict[str, ModelInfo] = {}
    for modality in SCORED_MODALITIES:  # automatic mode routes each to its default model
        try:
            found[modality] = default_model_for(modality, models_dir)
        except ModelNotFound:
            continue
    if not found:
        raise ModelNotFound(
            None if models_dir is None else str(models_dir),
            "no triage model is installed",
            "Reinstall LungLens or set --models-dir.",
        )
    return found


def plain_check(checker: ModelInfo | None, scan: Scan) -> ModalityCheck | None:
    """The pixel check a mismatch of a plain image needs: ``None`` when the scan's header
    names a scored modality (the header decides) or when no check is installed."""
    if scan.modality in SCORED_MODALITIES or checker is None:
        return None
    return check_with(checker, scan)


#: What to do about a mismatch (batch error rows).
_MISMATCH_HINT = "Score it with a model for its modality (--model), or with --model auto."


@dataclass(frozen=True)
class Mismatch:
    """A scan given to a model for the other modality.

    Attributes
    ----------
    modality
        What the scan is: its DICOM Modality (0008,0060), or for a plain image what the pixel
        check says.
    info
        The model it was given to.
    check
        The confident pixel check that found it for a plain image; ``None`` when the header
        did.
    """

    modality: str
    info: ModelInfo
    check: ModalityCheck | None = None

    def error(self, key: str) -> ModalityMismatch:
        """The typed error naming ``key``: the scan is refused, never scored (an error row in
        batch, exit 3 in ``classify``, a red banner in the viewer)."""
        model, want = self.info.name, self.info.modality.upper()
        if self.check is None:
            reason = f"the scan is {self.modality.upper()} but model {model} is for {want}"
        else:
            reason = (
                f"plain image that {self.check.looks_like()} ({self.check.model}), but model "
                f"{model} is for {want}"
            )
        return ModalityMismatch(key, reason, _MISMATCH_HINT)


def find_mismatch(scan: Scan, info: ModelInfo, check: ModalityCheck | None) -> Mismatch | None:
    """The one rule for "this scan is not for this model" (viewer, CLI and batch).

    The DICOM header decides when it names a scored modality (CT, or CR/DX for X-rays); a
    plain image carries none, so only a *confident* pixel check (``warn_probability`` of its
    manifest) can tell, and an unsure or missing check never raises a mismatch.

    Parameters
    ----------
    scan
        The loaded scan.
    info
        The model chosen for it.
    check
        The pixel check of the scan (:func:`check_with`), or ``None`` when it was not run;
        only used for plain images.

    Returns
    -------
    Mismatch or None
        ``None`` when the scan fits the model (or nothing can tell).
    """
    if scan.modality in SCORED_MODALITIES:
        return None if scan.modality == info.modality else Mismatch(scan.modality, info)
    if check is not None and check.confident and check.modality != info.modality:
        return Mismatch(check.modality, info, check)
    return None


def modality_notes(scan: Scan, check: ModalityCheck | None) -> list[str]:
    """What the user must know about modality: how a plain image looks, and the header and the
    pixels disagreeing. (A scan that does not fit the model, :func:`find_mismatch`, is refused
    before it is scored, so it has no notes.)"""
    notes = []
    if scan.modality not in SCORED_MODALITIES and check is not None:
        notes.append(
            f"plain image without modality information; the image {check.looks_like()} "
            f"by {check.model}"
        )
    if (
        scan.modality in SCORED_MODALITIES
        and check is not None
        and check.confident
        and check.modality != scan.modality
    ):
        notes.append(
            f"the DICOM header says {scan.modality.upper()}, but the image {check.looks_like()}; "
            "check that the file is what it claims to be"
        )
    return notes
