"""Where shipped models and resources live.

One function per location, searched in a fixed order so a user, a test and a bundled app each get a
predictable answer: an explicit argument wins, then an environment variable, then a bundled app's
unpack directory (PyInstaller's ``sys._MEIPASS``), then the repository root of an editable install.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Environment variable that points at a folder of ``<name>/manifest.json`` model folders.
MODELS_ENV = "LUNGLENS_MODELS_DIR"
#: Environment variable that points at the resources folder (``samples/`` etc.).
RESOURCES_ENV = "LUNGLENS_RESOURCES_DIR"

# desktop/lunglens/models/location.py -> parents[3] is the repository root in an editable install.
_REPO_ROOT = Path(__file__).resolve().parents[3]


def _candidates(folder: str) -> list[Path]:
    found: list[Path] = []
    meipass = getattr(sys, "_MEIPASS", None)
    if meipass:
        found.append(Path(meipass) / folder)
    # A frozen app may also keep data beside the executable.
    if getattr(sys, "frozen", False):
        found.append(Path(sys.executable).resolve().parent / folder)
    found.append(_REPO_ROOT / folder)
    return found


def _resolve(explicit: str | os.PathLike[str] | None, env: str, folder: str) -> Path:
    if explicit is not None:
        return Path(explicit)
    from_env = os.environ.get(env)
    if from_env:
        return Path(from_env)
    candidates = _candidates(folder)
    for cand in candidates:
        if cand.is_dir():
            return cand
    return candidates[-1]


def models_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder searched for models.

    Order: ``explicit`` argument, ``$LUNGLENS_MODELS_DIR``, ``sys._MEIPASS/models`` (bundled app),
    ``<executable dir>/models`` (frozen app), ``<repo root>/models`` (editable install). The first
    existing folder wins; when none exists the repository path is returned so error messages name
    a concrete place.
    """
    return _resolve(explicit, MODELS_ENV, "models")


def resources_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the resources folder (bundled samples), searched like :func:`models_dir`."""
    return _resolve(explicit, RESOURCES_ENV, "resources")
