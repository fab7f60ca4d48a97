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
