"""Build hooks: the wheel and the sdist carry the shipped models and sample scans.

``pyproject.toml`` holds the project metadata; this file only maps the repository's top-level
``models/`` and ``resources/`` (the single source of truth, selected by ``packaging/shipped.py``)
into the distributions:

* wheel: ``lunglens/_data/models/<name>/...`` and ``lunglens/_data/resources/...``, found at run
  time through ``importlib.resources`` (``lunglens.models.location``);
* sdist: ``models/`` and ``resources/`` at its top level, as in the repository, so a wheel built
  from the sdist gets the same files.

An editable install (``pip install -e .``) copies nothing: the package then reads ``models/`` and
``resources/`` in the checkout.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path, PurePosixPath
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
#: Where the data lands inside the installed package (``lunglens.models.location.DATA_PACKAGE``).
DATA_DIR = ("lunglens", "_data")


def _shipped() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_lunglens_shipped", ROOT / "packaging" / "shipped.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files() -> list[tuple[Path, PurePosixPath]]:
    return list(_shipped().distribution_files(ROOT))


class BuildPyWithData(build_py):
    """``build_py`` that also copies the shipped models and resources into the package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        data_root = Path(self.build_lib, *DATA_DIR)
        if data_root.exists():  # a model folder removed since the last build must not linger
            shutil.rmtree(data_root)
        for src, dest in _files():
            target = data_root / dest
            self.mkpath(str(target.parent))
            self.copy_file(str(src), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            data_root = Path(self.build_lib, *DATA_DIR)
            outputs += [str(data_root / dest) for _, dest in _files()]
        return outputs


class SdistWithData(sdist):
    """``sdist`` that adds the shipped models and resources at their repository paths."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        for src, dest in _files():
            target = Path(base_dir, dest)
            self.mkpath(str(target.parent))
            self.copy_file(str(src), str(target))


setup(cmdclass={"build_py": BuildPyWithData, "sdist": SdistWithData})
