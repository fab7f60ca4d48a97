"""Side panel with the scan's attributes that matter for reading it (DICOM tags, notes).

Shows what the core reader collected in :attr:`lunglens.io.Scan.metadata` plus the loader's notes
(fallbacks used, files ignored), so a surprising image can be explained without a DICOM browser.
"""

from __future__ import annotations

from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lunglens.io import Modality, Scan, SourceKey

#: Display order and names of the metadata keys the readers produce; unknown keys follow.
LABELS: dict[str, str] = {
    "dicom_modality": "Modality (0008,0060)",
    "body_part": "Body part (0018,0015)",
    "series_description": "Series (0008,103E)",
    "study_description": "Study (0008,1030)",
    "manufacturer": "Manufacturer (0008,0070)",
    "rows": "Rows (0028,0010)",
    "columns": "Columns (0028,0011)",
    "frames": "Frames (0028,0008)",
    "pixel_spacing": "Pixel spacing mm (0028,0030)",
    "slice_thickness": "Slice thickness mm (0018,0050)",
    "photometric": "Photometric (0028,0004)",
    "window": "Window used",
    "file_window": "Window in file (0028,1050/1051)",
    "transfer_syntax": "Transfer syntax (0002,0010)",
    "sop_class": "SOP class (0008,0016)",
    "patient_id": "Patient ID (0010,0020)",
    "patient_name": "Patient name (0010,0010)",
    "study_date": "Study date (0008,0020)",
    "accession_number": "Accession number (0008,0050)",
    "study_uid": "Study UID (0020,000D)",
    "series_uid": "Series UID (0020,000E)",
}


def modality_text(scan: Scan) -> str:
    """The scan's modality as read from its file; a plain image carries none (its pixels are
    placed by the modality check, which the classification panel reports), and a bare
    "UNKNOWN" beside a CT model's result read as a contradiction."""
    if scan.modality != Modality.UNKNOWN:
        return scan.modality.upper()
    dicom = scan.metadata.get("dicom_modality")
    if dicom:  # a DICOM file of another modality (OT, SC, MR...): named as the file says
        return f"UNKNOWN (DICOM Modality {dicom})"
    return "not in the file (plain image; see Classification)"


class TagsPanel(QWidget):
    """Two-column table: attribute, value."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Attribute", "Value"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)

    def show_scan(self, scan: Scan | None) -> None:
        """Fill the table from ``scan`` (``None`` clears it)."""
        self.table.setRowCount(0)
        if scan is None:
            return
        rows: list[tuple[str, str]] = [
            ("Source", SourceKey.parse(scan.source).name),
            ("Kind", scan.kind),
            ("LungLens modality", modality_text(scan)),
            ("Size", f"{scan.n_slices} x {scan.image.shape[1]} x {scan.image.shape[2]}"),
        ]
        meta = dict(scan.metadata)
        tips: dict[int, str] = {0: scan.source}
        for key, title in LABELS.items():
            if meta.get(key):
                name, _, tag = title.partition(" (")
                if tag:
                    tips[len(rows)] = f"DICOM ({tag}"
                rows.append((name, meta.pop(key)))
        rows.extend((k, v) for k, v in sorted(meta.items()) if v)
        rows.extend(("Note", note) for note in scan.notes)
        self.table.setRowCount(len(rows))
        for r, (k, v) in enumerate(rows):
            name_item = QTableWidgetItem(k)
            name_item.setToolTip(tips.get(r, k))
            self.table.setItem(r, 0, name_item)
            item = QTableWidgetItem(v)
            item.setToolTip(tips.get(r, v) if r == 0 else v)
            self.table.setItem(r, 1, item)
        self.table.resizeRowsToContents()

    def value(self, attribute: str) -> str:
        """Value shown for ``attribute`` (first column text), or ``""``."""
        for r in range(self.table.rowCount()):
            key = self.table.item(r, 0)
            if key is not None and key.text() == attribute:
                val = self.table.item(r, 1)
                return val.text() if val is not None else ""
        return ""
