"""Shared pytest fixtures (keep small; other test modules may append fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: ``../shared/data`` next to the repository (CI has the same layout).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def shipped_window(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The app's main window on the shipped models (``models/``), with its own settings and
    audit log under ``tmp_path``; its workers are stopped afterwards."""
    from PySide6.QtCore import QSettings

    from lunglens.gui.main_window import MainWindow
    from lunglens.gui.settings import Settings
    from lunglens.inference import clear_engines

    clear_engines()
    monkeypatch.setenv("LUNGLENS_MODELS_DIR", str(Path(__file__).resolve().parents[1] / "models"))
    monkeypatch.setenv("LUNGLENS_DATA_DIR", str(tmp_path / "data"))
    win = MainWindow(Settings(QSettings(str(tmp_path / "l.ini"), QSettings.Format.IniFormat)))
    qtbot.addWidget(win)
    win.show()
    yield win
    win.pool.cancel_all()
    win.pool.wait(10_000)
