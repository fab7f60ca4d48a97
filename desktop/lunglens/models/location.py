"""Where shipped models and resources live.

One function per location, searched in a fixed order so a user, a test, an installed wheel and a
bundled app each get a predictable answer: an explicit argument wins, then an environment
variable, then the package data of an installed wheel (``lunglens/_data``, found with
:mod:`importlib.resources`), then a bundled app's unpack directory (PyInstaller's
``sys._MEIPASS``) or the folder beside its executable, then the checkout's top-level folders in a
source tree or an editable install. The wheel and the bundle carry the files selected by
``packaging/shipped.py`` from the checkout's ``models/`` and ``resources/``.
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

#: Environment variable that points at a folder of ``<name>/manifest.json`` model folders.
MODELS_ENV = "LUNGLENS_MODELS_DIR"
#: Environment variable that points at the resources folder (``samples/`` etc.).
RESOURCES_ENV = "LUNGLENS_RESOURCES_DIR"
#: Package-data folder of an installed wheel (``setup.py`` copies ``models/`` and ``resources/``
#: into it).
DATA_PACKAGE = "_data"

# desktop/lunglens/models/location.py -> parents[3] is the checkout in a source tree.
_SOURCE_ROOT = Path(__file__).resolve().parents[3]


def _package_data_root() -> Path | None:
    """``lunglens/_data`` as a real folder, or ``None`` (e.g. a package imported from a zip)."""
    root = resources.files("lunglens") / DATA_PACKAGE
    return root if isinstance(root, Path) else None


def _source_root() -> Path | None:
    """The checkout holding this package (source tree, editable install), else ``None``."""
    return _SOURCE_ROOT if (_SOURCE_ROOT / "pyproject.toml").is_file() else None


def _candidates(folder: str) -> list[Path]:
    found: list[Path] = []
    data = _package_data_root()
    if data is not None:
        found.append(data / folder)
    meipass = getattr(sys, "_MEIPASS", None)
    if meipass:
        found.append(Path(meipass) / folder)
    # A frozen app may also keep data beside the executable.
    if getattr(sys, "frozen", False):
        found.append(Path(sys.executable).resolve().parent / folder)
    source = _source_root()
    if source is not None:
        found.append(source / folder)
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
    # None exists: name the place this kind of install is expected to have, for error messages.
    return candidates[-1] if candidates else Path(folder).resolve()


def models_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder searched for models.

    Order: ``explicit`` argument, ``$LUNGLENS_MODELS_DIR``, ``<package>/_data/models`` (installed
    wheel), ``sys._MEIPASS/models`` (bundled app), ``<executable dir>/models`` (frozen app),
    ``<checkout>/models`` (source tree or editable install). The first existing folder wins; when
    none exists the last candidate is returned so error messages name a concrete place.
    """
    return _resolve(explicit, MODELS_ENV, "models")


def resources_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the resources folder (bundled samples, icons), searched like :func:`models_dir`."""
    return _resolve(explicit, RESOURCES_ENV, "resources")
