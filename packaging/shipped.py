"""What a LungLens distribution carries from the top-level ``models/`` and ``resources/`` folders.

One selection for every way the app ships: the wheel and sdist (``setup.py``) and the PyInstaller
bundle (``lunglens.spec``). ``models/`` and ``resources/`` in the repository stay the only copy;
each build maps the selected files in.

Models: every ``models/<name>/`` that has a ``manifest.json`` contributes the manifest, the file
its top-level ``"file"`` names (``model.onnx``) and the ``"file"`` of any other top-level block (a
side file a model needs at run time), its ``*.md`` files (model card) and licence files.
Everything else stays out: training by-products (``metrics.json``, plots) and the
``reference_fp32`` graph, which only benchmarks and the INT8 parity checks open
(docs/model-contract.md). Resources: every file under ``resources/samples/``
(the scans and their ``LICENSE.md``) and ``resources/icons/``.

Standard library only: ``setup.py`` imports this file by path in a bare build environment.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

MANIFEST = "manifest.json"
#: Manifest blocks whose ``"file"`` the app never opens, so no distribution carries it.
NOT_SHIPPED_BLOCKS = frozenset({"reference_fp32"})
#: Sub-folders of ``resources/`` the app reads (``lunglens demo``/``selftest``; the window icon).
RESOURCE_FOLDERS = ("samples", "icons")


class ShippingError(RuntimeError):
    """A model folder cannot be shipped as it is (the message names the file and the fix)."""


@cache
def _seal() -> ModuleType:
    """``lunglens.models.seal``, loaded by path (standard library only, like this file): the
    one definition of a manifest's seal, which the app checks on every model it loads."""
    path = Path(__file__).resolve().parents[1] / "desktop" / "lunglens" / "models" / "seal.py"
    spec = importlib.util.spec_from_file_location("_lunglens_seal", path)
    if spec is None or spec.loader is None:  # pragma: no cover - the checkout is incomplete
        raise ShippingError(f"{path}: missing; build from a LungLens checkout")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _named_files(manifest: dict[str, Any]) -> Iterator[str]:
    """The files a manifest names: its ``"file"`` and the ``"file"`` of each top-level block.

    Deeper ``"file"`` keys are records about data (e.g. ``metrics.external_dicom`` lists the
    DICOM files a model was checked on), not parts of the model.
    """
    if isinstance(manifest.get("file"), str):
        yield manifest["file"]
    for key, block in manifest.items():
        if key not in NOT_SHIPPED_BLOCKS and isinstance(block, dict):
            if isinstance(block.get("file"), str):
                yield block["file"]


def _model_folder_files(folder: Path) -> list[Path]:
    mpath = folder / MANIFEST
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShippingError(
            f"{mpath}: not a readable JSON manifest ({exc}); fix or remove the model folder "
            "before building"
        ) from exc
    if not isinstance(manifest, dict):
        raise ShippingError(f"{mpath}: not a JSON object; fix or remove the model folder")
    sealed = _seal().seal_matches(manifest)
    if not sealed:
        what = "not sealed (no decision_sha256)" if sealed is None else "edited after its seal"
        raise ShippingError(
            f"{mpath}: {what}, so the app would refuse it; write the model folder again with "
            "lunglens-train (or restore it from the release) before building"
        )
    wanted = {MANIFEST}
    for name in _named_files(manifest):
        path = folder / name
        if PurePosixPath(name).name != name or not path.is_file():
            raise ShippingError(
                f"{mpath}: names {name!r}, which is not a file in {folder}; re-export the model "
                "or fix the manifest before building"
            )
        wanted.add(name)
    return [
        f
        for f in sorted(folder.iterdir())
        if f.is_file()
        and (f.name in wanted or f.suffix.lower() == ".md" or f.name.upper().startswith("LICENSE"))
    ]


def model_files(models_root: Path) -> list[tuple[Path, PurePosixPath]]:
    """The shipped files of every model folder under ``models_root``.

    Returns
    -------
    list of (source, destination)
        ``destination`` is relative to the distribution's data root (``models/<name>/<file>``).

    Raises
    ------
    ShippingError
        A manifest is unreadable, unsealed or edited after its seal (``decision_sha256``), or
        names a file that does not exist: the build stops instead of shipping a model the
        registry would refuse.
    """
    out: list[tuple[Path, PurePosixPath]] = []
    for folder in sorted(p for p in models_root.iterdir() if (p / MANIFEST).is_file()):
        for f in _model_folder_files(folder):
            out.append((f, PurePosixPath("models", folder.name, f.name)))
    return out


def resource_files(resources_root: Path) -> list[tuple[Path, PurePosixPath]]:
    """Every file under the :data:`RESOURCE_FOLDERS` of ``resources_root`` (``resources/...``)."""
    out: list[tuple[Path, PurePosixPath]] = []
    for sub in RESOURCE_FOLDERS:
        src = resources_root / sub
        if src.is_dir():
            for f in sorted(p for p in src.rglob("*") if p.is_file()):
                rel = f.relative_to(resources_root).as_posix()
                out.append((f, PurePosixPath("resources", rel)))
    return out


def distribution_files(repo: Path) -> list[tuple[Path, PurePosixPath]]:
    """:func:`model_files` of ``repo/models`` and :func:`resource_files` of ``repo/resources``."""
    models = repo / "models"
    if not models.is_dir():
        raise ShippingError(f"{models}: no models folder; build from a LungLens checkout")
    return model_files(models) + resource_files(repo / "resources")
