"""Which model family fits a scan: the DICOM header, and an image-level check of the pixels.

DICOM files say what they are in ``Modality`` (0008,0060): CT, or CR/DX for radiographs. Plain
PNG/JPEG files say nothing, and headers can be misleading (secondary captures are ``OT``). The
shipped ``modality-check`` model (a tiny CNN trained on the CT and X-ray data sets, see
:mod:`lunglens.training.modality` and its model card) looks at the image itself:

* plain images are routed by it when the chest-image gate agrees: the gate's learned check
  measures how near the image is to the CT and to the X-ray training images
  (:attr:`~lunglens.inference.gate.GateVerdict.nearest`), a second, independent opinion. When
  the two disagree, nothing is routed (:class:`~lunglens.errors.ModalityUncertain`: no score
  until the user chooses the model). Measured on the 5,379 CT and X-ray training images: the
  check's more probable label was wrong for 16 (at p 0.50-0.88; below 0.9 for 45% of the CT
  slices, so its probability alone cannot route), the gate's nearest family for 1 (an image
  it refuses), and the two disagreed on 15 (0.3%), every one a wrong check;
* a plain image that the evidence places in the other family than the chosen model's is
  refused (:func:`find_mismatch`): the check and the gate agreeing on it, or, where the gate did
  not run, a confident check (``warn_probability`` in its manifest, 0.9). A headline from a
  model that never saw that kind of image would read as a triage decision. Where the two
  disagree, the chosen model scores it with a note: the user decides what the pixels cannot;
* a note is added when it is confident that the image is of the other modality than the DICOM
  header (the header decides), and when the check and the gate disagree on a plain image a
  chosen model scores.

Without that model installed everything still works: plain images then need a model choice
(``classify`` and ``demo`` fall back to the CT model with a warning).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from lunglens.errors import ModalityMismatch, ModalityUncertain, ModelNotFound
from lunglens.inference.engine import get_engine
from lunglens.inference.gate import GateVerdict
from lunglens.io.scan import SCORED_MODALITIES, Modality, Scan
from lunglens.models.registry import ModelInfo, default_model_for, modality_checker
from lunglens.preprocess import to_model_input

_NAMES: dict[str, str] = {Modality.CT: "a CT slice", Modality.CXR: "a chest X-ray"}
_PLURALS: dict[str, str] = {Modality.CT: "CT slices", Modality.CXR: "chest X-rays"}


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
        ``probability >= warn_probability`` of the check's manifest: sure enough to refuse a
        chosen model of the other family where the gate did not run (:func:`find_mismatch`),
        and to note a DICOM header the pixels contradict.
    model
        ``"name version"`` of the check, for notes and audit.
    nearest
        The chest-image gate's nearest training modality for the same scan
        (:attr:`~lunglens.inference.gate.GateVerdict.nearest`, joined by :func:`with_gate`);
        ``None`` when the gate's learned check did not run.
    """

    modality: str
    probability: float
    confident: bool
    model: str
    nearest: str | None = None

    @property
    def agrees(self) -> bool:
        """The gate names the same family as the check (or did not run)."""
        return self.nearest is None or self.nearest == self.modality

    def looks_like(self) -> str:
        return f"looks like {_NAMES.get(self.modality, self.modality)} (p={self.probability:.2f})"

    def disagreement(self) -> str:
        """The check and the gate disagreeing, in words (:attr:`agrees` is False)."""
        nearer = _PLURALS.get(self.nearest or "", self.nearest)
        return (
            f"the modality check says it {self.looks_like()} ({self.model}), but it is nearer "
            f"to the {nearer} the models were trained on"
        )


def with_gate(check: ModalityCheck | None, verdict: GateVerdict | None) -> ModalityCheck | None:
    """``check`` with the gate's nearest training modality (``verdict.nearest``) joined."""
    if check is None or verdict is None or verdict.nearest is None:
        return check
    return replace(check, nearest=verdict.nearest)


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
    warn_at = info.spec.warn_probability if info.spec.warn_probability is not None else 0.9
    return ModalityCheck(
        modality=info.labels[idx],
        probability=float(probs[idx]),
        confident=bool(probs[idx] >= warn_at),
        model=f"{info.name} {info.version}",
    )


#: What to do about an image the check cannot place (error rows, refusals).
_UNCERTAIN_HINT = (
    "Score it with the model for its modality (--model NAME, or pick it in the app's list); "
    "a DICOM file names its modality in its header."
)


def routing_modality(scan: Scan, check: ModalityCheck | None, key: str | None = None) -> str:
    """The modality used to pick a default model: the header's, else the image check's.

    ``key`` names the scan in the error (default: its source).

    Raises
    ------
    ModalityUncertain
        A plain image on which the check and the gate disagree: nothing may pick a model for
        it.
    """
    if scan.modality in SCORED_MODALITIES:
        return scan.modality
    if check is None:
        return scan.modality
    if not check.agrees:
        raise ModalityUncertain(
            key or scan.source,
            "cannot tell whether this plain image is a CT slice or a chest X-ray: "
            f"{check.disagreement()}; no model was chosen for it",
            _UNCERTAIN_HINT,
        )
    return check.modality


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
    ModalityUncertain
        A plain image on which the check and the gate disagree (:func:`routing_modality`).
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
_MISMATCH_HINT = (
    "Score it with a model for its modality (--model NAME, or pick it in the app's list), or in "
    "automatic mode (--model auto; the app's 'Automatic (by modality)')."
)


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
        The pixel check that found it for a plain image; ``None`` when the header did.
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
            agreed = " and the chest-image gate agrees" if self.check.nearest else ""
            reason = (
                f"plain image that {self.check.looks_like()} ({self.check.model}){agreed}, but "
                f"model {model} is for {want}"
            )
        return ModalityMismatch(key, reason, _MISMATCH_HINT)


def find_mismatch(scan: Scan, info: ModelInfo, check: ModalityCheck | None) -> Mismatch | None:
    """The one rule for "this scan is not for this model" (viewer, CLI and batch).

    The DICOM header decides when it names a scored modality (CT, or CR/DX for X-rays). A
    plain image carries none, so the pixels decide: it is not scored by a model of the other
    family than the check's more probable label when the chest-image gate's nearest training
    modality agrees with the check (:attr:`ModalityCheck.nearest`), or, where the gate did not
    run, when the check is confident (``warn_probability``). When the two disagree the user's
    choice stands, with a note (:func:`modality_notes`); a missing check raises no mismatch.

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
    if check is not None and check.modality != info.modality:
        sure = check.confident if check.nearest is None else check.nearest == check.modality
        if sure:
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
        if not check.agrees:
            notes.append(f"{check.disagreement()}: check that the model fits the image")
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
