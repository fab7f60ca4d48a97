"""What the viewer remembers between sessions (recent files, last folder, geometry, opacity).

A thin typed layer over :class:`QSettings` so widgets never spell keys or convert QVariants
themselves, and tests can hand the window a settings object backed by a temporary INI file.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

ORGANIZATION = "LungLens"
APPLICATION = "LungLens"
MAX_RECENT = 10


class Settings:
    """Typed accessors for the viewer's persistent settings.

    Parameters
    ----------
    qsettings
        Backing store; default: the per-user native store for LungLens. Tests pass
        ``QSettings(str(tmp / "lunglens.ini"), QSettings.IniFormat)``.
    """

    def __init__(self, qsettings: QSettings | None = None) -> None:
        self.q = qsettings if qsettings is not None else QSettings(ORGANIZATION, APPLICATION)

    # recent files -------------------------------------------------------------------------
    def recent_files(self) -> list[str]:
        """Most recent first, only paths that still exist (a moved USB stick is not an error)."""
        raw = self.q.value("recent_files", [])
        if isinstance(raw, str):  # QSettings returns a str for one-element lists in INI files
            raw = [raw]
        items = list(raw) if isinstance(raw, (list, tuple)) else []
        return [str(p) for p in items if p and os.path.exists(str(p))]

    def add_recent(self, path: str) -> list[str]:
        """Put ``path`` first, drop duplicates, keep :data:`MAX_RECENT`."""
        path = str(Path(path))
        items = [p for p in self.recent_files() if p != path]
        items.insert(0, path)
        items = items[:MAX_RECENT]
        self.q.setValue("recent_files", items)
        return items

    def clear_recent(self) -> None:
        """Forget all recent files."""
        self.q.setValue("recent_files", [])

    # folders and preferences --------------------------------------------------------------
    def last_folder(self) -> str:
        """Folder of the last opened scan, so the next dialog starts there."""
        return str(self.q.value("last_folder", "") or "")

    def set_last_folder(self, folder: str) -> None:
        self.q.setValue("last_folder", str(folder))

    def opacity(self) -> float:
        """CAM overlay opacity in [0, 1] (default 0.4, as the CLI's overlay)."""
        try:
            return min(1.0, max(0.0, float(str(self.q.value("cam_opacity", 0.4)))))
        except (TypeError, ValueError):
            return 0.4

    def set_opacity(self, value: float) -> None:
        self.q.setValue("cam_opacity", float(value))

    def colormap(self) -> str:
        """Name of the CAM colormap (one of :data:`lunglens.explain.COLORMAPS`)."""
        return str(self.q.value("cam_colormap", "jet") or "jet")

    def set_colormap(self, name: str) -> None:
        self.q.setValue("cam_colormap", name)

    def auto_classify(self) -> bool:
        """Classify as soon as a scan is opened (the triage use case)."""
        value = self.q.value("auto_classify", True)
        return value not in (False, "false", "0", 0)

    def set_auto_classify(self, on: bool) -> None:
        self.q.setValue("auto_classify", bool(on))

    def anonymize_reports(self) -> bool:
        """Leave patient ID/name, study date and accession number out of PDF reports."""
        value = self.q.value("anonymize_reports", False)
        return value in (True, "true", "1", 1)

    def set_anonymize_reports(self, on: bool) -> None:
        self.q.setValue("anonymize_reports", bool(on))

    # window state -------------------------------------------------------------------------
    def geometry(self) -> QByteArray | None:
        value = self.q.value("geometry")
        return value if isinstance(value, QByteArray) else None

    def state(self) -> QByteArray | None:
        value = self.q.value("window_state")
        return value if isinstance(value, QByteArray) else None

    def save_window(self, geometry: QByteArray, state: QByteArray) -> None:
        self.q.setValue("geometry", geometry)
        self.q.setValue("window_state", state)

    def sync(self) -> None:
        """Flush to disk (called on close so a crash later loses nothing)."""
        self.q.sync()
