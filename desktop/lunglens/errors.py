"""Typed errors that name the file and tell the user what to do.

Every failure a user can cause with an input (a file, a folder, a model) is one of these, so the
CLI, the batch runner and the GUI can report it as one line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class LungLensError(Exception):
    """Base class: ``str(err)`` is a complete sentence meant for the user."""

    def __init__(self, path: str | Path | None, reason: str, hint: str = "") -> None:
        self.path = str(path) if path is not None else None
        self.reason = reason
        self.hint = hint
        where = f"{self.path}: " if self.path else ""
        stop = "" if reason.endswith(".") else "."  # only the sentence's own end; never the path
        tail = f" {hint}" if hint else ""
        super().__init__(f"{where}{reason}{stop}{tail}")

    @property
    def code(self) -> str:
        """Short machine-readable name used in results files (e.g. ``CorruptFile``)."""
        return type(self).__name__


class ScanError(LungLensError):
    """A scan could not be turned into an image."""


class UnreadablePath(ScanError):
    """The path does not exist, is not readable, or is an empty folder."""


class UnsupportedFile(ScanError):
    """The file is not an image or DICOM format LungLens reads."""


class CorruptFile(ScanError):
    """The file claims a known format but its content is damaged or truncated."""


class NoPixelData(ScanError):
    """A DICOM file without Pixel Data (7FE0,0010), e.g. a structured report or a KOS."""


class UnsupportedTransferSyntax(ScanError):
    """A DICOM Transfer Syntax (0002,0010) with no installed decoder."""


class ImageTooLarge(ScanError):
    """More pixels than the configured limit (decompression-bomb guard)."""


class ImageTooSmall(ScanError):
    """Fewer rows or columns than any scan has (an icon, a thumbnail, a 1x1 tracking pixel)."""


class NotChestImage(ScanError):
    """The scan's modality or body part is not a chest CT or chest X-ray."""


class InvertedImage(NotChestImage):
    """A chest image, most likely, with its grey levels inverted (air light, bone dark): the
    triage models score such an image at random, so it gets no score either."""


class ModalityMismatch(ScanError):
    """The scan's modality (DICOM header, or the pixel check for plain images) is not the
    model's (e.g. a chest X-ray given to the CT model); batch scoring writes an error row."""


class ModalityUncertain(ModalityMismatch):
    """A plain image on which the modality check and the chest-image gate disagree about CT or
    X-ray, while no model was chosen: none is picked for it, so it gets no score (a chest X-ray
    routed to the CT model would get a headline from a model that never saw one); a chosen
    model scores it."""


class OutputError(LungLensError):
    """A result (CSV row, report) could not be written, e.g. the disk is full."""


class ModelError(LungLensError):
    """A model could not be used."""


class ModelRefused(ModelError):
    """A model file failed its integrity check (SHA-256 mismatch, missing file, bad manifest)."""


class ModelNotFound(ModelError):
    """No shipped model has that name, or none fits the scan's modality."""


class ValidationInputError(LungLensError):
    """A labels file or results file given to local validation cannot be used (missing
    columns, a label no model has, no scan in common)."""
