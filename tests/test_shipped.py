"""What the wheel, the sdist and the bundle ship (``packaging/shipped.py``) and how the installed
package finds it (``lunglens.models.location``).

Fast: no build. The wheel itself is built and installed in ``test_wheel.py`` (slow).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from dist_helpers import REPO, load_packaging_module
from lunglens.models import discover_models, models_dir, resources_dir, verify_model
from lunglens.models.seal import decision_digest
from onnx_fixtures import make_models_dir

shipped = load_packaging_module("shipped")


def _sealed(manifest: Mapping[str, object]) -> dict[str, object]:
    return {**manifest, "decision_sha256": decision_digest(manifest)}


def _model_folder(folder: Path, manifest: Mapping[str, object], files: list[str]) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(_sealed(manifest)), encoding="utf-8")
    for name in files:
        (folder / name).write_bytes(b"x")
    return folder


def test_model_selection_keeps_what_the_app_opens(tmp_path: Path) -> None:
    """Manifest, the files it names (top level and top-level blocks), cards and licences only."""
    manifest = {
        "file": "model.onnx",
        "reference_fp32": {"file": "model_fp32.onnx"},  # benchmarks only
        "ood": {"file": "ood_stats.json"},  # a side file the app needs
        "metrics": {"external_dicom": {"files": [{"file": "chest-cr/RG1.dcm"}]}},  # a record
    }
    _model_folder(
        tmp_path / "models" / "net-a",
        manifest,
        [
            "model.onnx",
            "model_fp32.onnx",
            "ood_stats.json",
            "metrics.json",
            "roc.png",
            "confusion.png",
            "MODEL_CARD.md",
            "LICENSE.txt",
        ],
    )
    (tmp_path / "models" / "scratch").mkdir()  # no manifest: not a model folder
    (tmp_path / "models" / "scratch" / "notes.md").write_text("wip")
    (tmp_path / "models" / "README.md").write_text("top-level file")

    got = shipped.model_files(tmp_path / "models")

    assert [str(dest) for _, dest in got] == [
        "models/net-a/LICENSE.txt",
        "models/net-a/MODEL_CARD.md",
        "models/net-a/manifest.json",
        "models/net-a/model.onnx",
        "models/net-a/ood_stats.json",
    ]
    assert all(src == tmp_path / dest for src, dest in got)


@pytest.mark.parametrize(
    ("manifest_text", "reason"),
    [
        ('{"file": "model.onnx"', "not a readable JSON manifest"),
        ('["model.onnx"]', "not a JSON object"),
        (json.dumps(_sealed({"file": "missing.onnx"})), "names 'missing.onnx', which is not a"),
        (json.dumps(_sealed({"file": "../other/model.onnx"})), "names '../other/model.onnx'"),
        # the app refuses a manifest without its seal or edited after it: no build ships one
        ('{"file": "model.onnx"}', "not sealed (no decision_sha256)"),
        (
            json.dumps({**_sealed({"file": "model.onnx", "threshold": 0.2}), "threshold": 0.1}),
            "edited after its seal",
        ),
    ],
)
def test_model_selection_refuses_a_folder_the_registry_would_refuse(
    tmp_path: Path, manifest_text: str, reason: str
) -> None:
    folder = tmp_path / "models" / "broken"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(manifest_text, encoding="utf-8")
    (folder / "model.onnx").write_bytes(b"x")
    with pytest.raises(shipped.ShippingError, match=r"broken/manifest\.json") as err:
        shipped.model_files(tmp_path / "models")
    assert reason in str(err.value)


def test_repository_selection_is_a_complete_install(tmp_path: Path) -> None:
    """The shipped files of ``models/`` and ``resources/`` alone make every model usable."""
    repo_models, repo_problems = discover_models(REPO / "models")
    if not repo_models:
        pytest.skip("no model in models/")
    assert not repo_problems
    files = shipped.distribution_files(REPO)
    for src, dest in files:
        (tmp_path / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp_path / dest)

    models, problems = discover_models(tmp_path / "models")

    assert not problems
    assert [m.name for m in models] == [m.name for m in repo_models]
    for info in models:
        verify_model(info)
        assert not info.path.joinpath("model_fp32.onnx").exists()
        assert not info.path.joinpath("metrics.json").exists()
    samples = sorted(p.name for p in (REPO / "resources" / "samples").iterdir())
    assert sorted(p.name for p in (tmp_path / "resources" / "samples").iterdir()) == samples
    assert "LICENSE.md" in samples


_WHERE = (
    "from lunglens.models import models_dir, resources_dir; "
    "print(models_dir()); print(resources_dir())"
)


def _locate_from(site: Path) -> list[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _WHERE], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_installed_package_finds_its_own_data(tmp_path: Path) -> None:
    """An installed copy of the package (no checkout around it) reads ``lunglens/_data``."""
    site = tmp_path / "site-packages"
    pkg = site / "lunglens"
    shutil.copytree(
        REPO / "desktop" / "lunglens", pkg, ignore=shutil.ignore_patterns("__pycache__", "_data")
    )
    data = pkg / "_data"

    # Without package data: the wheel's data folder is named (error messages), never a guess
    # around site-packages such as <venv>/lib/python3.X/resources.
    assert _locate_from(site) == [str(data / "models"), str(data / "resources")]

    make_models_dir(data / "models")
    (data / "resources" / "samples").mkdir(parents=True)
    assert _locate_from(site) == [str(data / "models"), str(data / "resources")]


def test_source_tree_reads_the_checkout_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a checkout (editable install, ``PYTHONPATH=desktop``) the top-level folders are used."""
    import lunglens

    if Path(lunglens.__file__).resolve().parent != REPO / "desktop" / "lunglens":
        pytest.skip("lunglens is imported from an installed copy, not this checkout")
    monkeypatch.delenv("LUNGLENS_MODELS_DIR", raising=False)
    monkeypatch.delenv("LUNGLENS_RESOURCES_DIR", raising=False)
    assert models_dir() == REPO / "models"
    assert resources_dir() == REPO / "resources"


def test_classify_cam_says_when_a_not_flagged_map_uses_the_reference_scale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the shipped CT model: the not-flagged sample's --cam PNG is drawn against the
    model's reference peak and the output says so; the flagged sample's is not."""
    from lunglens.cli import main
    from lunglens.explain import FLOOR_NOTE

    monkeypatch.setenv("LUNGLENS_DATA_DIR", str(tmp_path / "data"))  # the audit log
    monkeypatch.delenv("LUNGLENS_MODELS_DIR", raising=False)  # the shipped models

    samples = REPO / "resources" / "samples"
    for name, floored in (("ct-dicom-chest-j2k.dcm", True), ("ct-covid-mosmed-0001.jpg", False)):
        cam = tmp_path / f"{name}.png"
        assert main(["classify", str(samples / name), "--cam", str(cam)]) == 0
        out = capsys.readouterr().out
        assert ("Not flagged" in out) == floored
        assert (f"cam scale:   {FLOOR_NOTE}" in out) == floored
        assert cam.is_file()
