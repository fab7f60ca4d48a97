"""The gate's explicit rules: DICOM tags first, then the pixels (no model needed).

Header rules read the metadata the DICOM readers record (:mod:`lunglens.io.dicom_rules`):
Modality (0008,0060) of another imaging kind, BodyPartExamined (0018,0015) naming another body
part, Image Type (0008,0008) LOCALIZER. Pixel rules catch what plain images cannot say about
themselves: a colour photograph, a blank image, pure noise. :data:`RULES` runs in order;
:func:`register_rule` adds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lunglens.io.dicom_rules import CHEST_WORDS
from lunglens.io.scan import Scan
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


@dataclass(frozen=True)
class Rule:
    """One gate rule: ``check(scan)`` returns the refusal reason in words, or ``None``."""

    name: str
    check: Callable[[Scan], str | None]


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
