"""What a DICOM file says it is: Modality (0008,0060), body part and Image Type (0008,0008).

These rules pick the pixel pipeline (CT: Hounsfield units and the lung window; X-ray: the
file's VOI) and the default model family. Whether the scan is a chest scan at all (MR, a BRAIN
body part, a CT localizer...) is decided for every scan by :mod:`lunglens.inference.gate`, which
reuses :data:`CHEST_WORDS` and the metadata these helpers fill in.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from lunglens.io.dicom_common import text
from lunglens.io.scan import Modality

#: Modality (0008,0060) values of projection radiography: chest X-ray candidates.
XRAY_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
#: Captures / "other": chest only if the body part or a description says so.
CAPTURE_MODALITIES = frozenset({"SC", "OT", ""})
#: Words in BodyPartExamined (0018,0015) or descriptions that mean "chest".
CHEST_WORDS = ("CHEST", "THORAX", "THORAC", "TORAX", "THORAKS", "LUNG", "PULM", "CXR", "RIBS")


def body_part(ds: Dataset) -> str:
    """BodyPartExamined (0018,0015), else the Anatomic Region Sequence (0008,2218) meaning."""
    part = text(ds, "BodyPartExamined").upper()
    if part:
        return part
    for keyword in ("AnatomicRegionSequence",):
        seq = ds.get(keyword)
        if seq:
            return str(seq[0].get("CodeMeaning", "")).upper()
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        anat = shared[0].get("FrameAnatomySequence")
        if anat and anat[0].get("AnatomicRegionSequence"):
            return str(anat[0].AnatomicRegionSequence[0].get("CodeMeaning", "")).upper()
    return ""


def image_type(ds: Dataset) -> str:
    """Image Type (0008,0008) values joined by backslashes, as DICOM writes them."""
    value = ds.get("ImageType")
    if value is None:
        return ""
    items = [value] if isinstance(value, str) else list(value)
    return "\\".join(str(v).strip() for v in items)


def classify_modality(ds: Dataset, path: Path) -> tuple[Modality, list[str]]:
    """Map DICOM Modality (0008,0060) and body part to CT, CXR or unknown.

    Returns the modality and notes for the user (an X-ray without a body part, a capture
    that does not say chest).
    """
    notes: list[str] = []
    modality = text(ds, "Modality").upper()
    part = body_part(ds)
    descriptions = " ".join(
        text(ds, k).upper()
        for k in ("StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments")
    )
    says_chest = any(w in part or w in descriptions for w in CHEST_WORDS)
    if modality == "CT":
        return Modality.CT, notes
    if modality in XRAY_MODALITIES:
        if not part:
            notes.append(f"{modality} without a body part; assumed to be a chest X-ray")
        return Modality.CXR, notes
    if modality in CAPTURE_MODALITIES:
        if says_chest:
            return Modality.CXR, notes
        notes.append(
            f"modality {modality or 'missing'} with no body part saying chest: modality unknown, "
            "check that this is a chest image"
        )
    return Modality.UNKNOWN, notes
