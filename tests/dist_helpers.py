"""Helpers shared by the distribution tests (PyInstaller bundle, wheel): a clean clone of this
repository, the environment of a machine without the developer's Python, the packaging scripts.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def clean_env(tmp: Path) -> dict[str, str]:
    """The environment a clinic laptop would have: no venv, no Python paths, no display.

    Data and home folders live in ``tmp``; Qt runs offscreen.
    """
    venv_dirs = {str(Path(sys.prefix).resolve()), str(Path(sys.executable).resolve().parent)}
    if os.environ.get("VIRTUAL_ENV"):
        venv_dirs.add(str(Path(os.environ["VIRTUAL_ENV"]).resolve()))
    path = [
        p
        for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if p and not any(str(Path(p).resolve()).startswith(v) for v in venv_dirs)
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "LUNGLENS_", "QT_", "CONDA"))
        and k not in ("VIRTUAL_ENV", "DISPLAY", "WAYLAND_DISPLAY", "LD_LIBRARY_PATH", "MPLBACKEND")
    }
    (tmp / "home").mkdir(exist_ok=True)
    env.update(
        PATH=os.pathsep.join(path),
        QT_QPA_PLATFORM="offscreen",
        LUNGLENS_DATA_DIR=str(tmp / "data"),
        HOME=str(tmp / "home"),
        XDG_CONFIG_HOME=str(tmp / "home" / ".config"),
    )
    return env


def clean_clone(dest: Path) -> Path:
    """``git clone`` this repository at HEAD into ``dest`` (what a new user starts from).

    Skips the test without git or a git checkout, or when HEAD has no model in ``models/``.
    """
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout to clone from")
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(dest)], check=True)
    if not any((dest / "models").glob("*/manifest.json")):
        pytest.skip("no model committed in models/ at HEAD: nothing to ship")
    return dest


def load_packaging_module(name: str) -> ModuleType:
    """Import ``packaging/<name>.py`` (the folder is not a package; ``packaging`` is taken)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "packaging" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module
