"""Scan loading: one entry point, :func:`load_scan`, for image files, DICOM files and folders.

Readers (one per module): :mod:`~lunglens.io.raster` (Pillow), :mod:`~lunglens.io.dicom_file`
(pydicom + pylibjpeg), :mod:`~lunglens.io.dicom_series` (folders). They are chosen by content
sniffing (:mod:`~lunglens.io.sniff`, :mod:`~lunglens.io.registry`). The batch scorer uses
:func:`discover_sources` + :func:`load_source`. Every failure is a typed
:class:`~lunglens.errors.ScanError`.
"""

from lunglens.io.dicom_series import SeriesInfo, list_series
from lunglens.io.discover import ScanSource, discover_sources, load_source
from lunglens.io.key import SourceKey
from lunglens.io.registry import READERS, Reader, load_scan, reader_for, register_reader
from lunglens.io.scan import MODALITIES, SCORED_MODALITIES, Modality, Scan
from lunglens.io.sniff import DEFAULT_MAX_PIXELS

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MODALITIES",
    "READERS",
    "SCORED_MODALITIES",
    "Modality",
    "Reader",
    "Scan",
    "ScanSource",
    "SeriesInfo",
    "SourceKey",
    "discover_sources",
    "list_series",
    "load_scan",
    "load_source",
    "reader_for",
    "register_reader",
]
