"""The :class:`Scan` object every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from lunglens.preprocess import Window


class Modality(StrEnum):
    """What a scan is, as LungLens scores it.

    A :class:`~enum.StrEnum`, so a member equals its value (``Modality.CT == "ct"``) and is
    written to results files, manifests and JSON as the plain string.
    """

    CT = "ct"  #: chest CT slices (DICOM Modality (0008,0060) CT, or a CT-like raster)
    CXR = "cxr"  #: chest radiograph (CR/DX/plain image)
    UNKNOWN = "unknown"  #: plain raster images carry no modality until the modality check runs

    @property
    def scored(self) -> bool:
        """True for the modalities a COVID-19 model exists for (CT and CXR)."""
        return self in SCORED_MODALITIES


#: The modalities with a scoring model, in the order the modality check's outputs use.
SCORED_MODALITIES: tuple[Modality, ...] = (Modality.CT, Modality.CXR)

#: Every modality value a :class:`Scan` may carry.
MODALITIES: tuple[Modality, ...] = tuple(Modality)


@dataclass
class Scan:
    """A loaded scan: one image, or a stack of CT slices of one series.

    Attributes
    ----------
    source
        The path the user opened (file or folder), as a string for display and results files.
    image
        float32 ``[S, H, W]`` in [0, 1]: what is displayed and what models see (windowed,
        MONOCHROME1 already inverted). ``S == 1`` for a single image.
    modality
        ``"ct"``, ``"cxr"`` or ``"unknown"`` (plain raster images carry no modality).
    kind
        Reader that produced it: ``"raster"``, ``"dicom"`` or ``"dicom-series"``.
    raw
        float32 ``[S, H, W]`` modality values (Hounsfield units for CT after RescaleSlope /
        RescaleIntercept) when the source is DICOM, else ``None``. Lets the viewer re-window and
        show HU under the cursor without re-reading the file.
    window
        The window that produced ``image`` from ``raw`` (``None`` for raster images or when a
        VOI LUT sequence was applied).
    inverted
        True when the source was MONOCHROME1 (inverted after VOI).
    slice_paths
        One entry per slice: the file it came from (multi-frame: ``file#frame``).
    slice_positions
        Position along the slice normal in mm (from ImagePositionPatient (0020,0032) and
        ImageOrientationPatient (0020,0037)), or ``None`` when unknown.
    metadata
        Selected DICOM attributes (modality, body part, series/study UIDs, pixel spacing,
        patient id, ...). Results files only copy identifiers the user opted into.
    notes
        Human-readable remarks made while loading (ignored files, fallbacks used).
    """

    source: str
    image: np.ndarray
    modality: str = Modality.UNKNOWN
    kind: str = "raster"
    raw: np.ndarray | None = None
    window: Window | None = None
    inverted: bool = False
    slice_paths: list[str] = field(default_factory=list)
    slice_positions: list[float] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.image.ndim == 2:
            self.image = self.image[None]
        if self.image.ndim != 3:
            raise ValueError(f"Scan.image must be [S, H, W], got {self.image.shape}")
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}")
        self.modality = Modality(self.modality)
        if not self.slice_paths:
            self.slice_paths = [self.source] * self.image.shape[0]

    @property
    def n_slices(self) -> int:
        """Number of slices (1 for a single image)."""
        return int(self.image.shape[0])

    def rewindow(self, window: Window) -> np.ndarray:
        """Return ``image`` recomputed from ``raw`` with another window (CT W/L in the viewer).

        Raises
        ------
        ValueError
            When the scan has no modality values (raster images).
        """
        if self.raw is None:
            raise ValueError(f"{self.source}: no modality values to re-window (not DICOM)")
        return window.apply(self.raw, invert=self.inverted)
