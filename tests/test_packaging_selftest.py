"""``lunglens selftest`` (the check the bundle runs after install), in-process and fast."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from lunglens import selftest
from lunglens.cli import main
from lunglens.inference import clear_engines
from onnx_fixtures import make_models_dir

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


SHIPPED = RESOURCES.parent / "models"


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """Synthetic triage models with the shipped chest-image gate (the modality check and the
    CT model its feature check is fitted on): an installation the self-test passes."""
    import shutil

    clear_engines()
    root = make_models_dir(tmp_path / "models")
    for name in ("modality-check", "efficientnet-lite-ct"):
        shutil.copytree(SHIPPED / name, root / name)
    return root


def test_selftest_passes_with_good_models(models: Path) -> None:
    out = io.StringIO()
    assert selftest.run(models, RESOURCES, gui=False, out=out) == 0
    text = out.getvalue()
    assert "self-test PASSED" in text
    assert "synthetic-ct 0.0.1 [ct]" in text and "synthetic-cxr 0.0.1 [cxr]" in text
    assert "pylibjpeg plugins" in text and "libjpeg, openjpeg, rle" in text
    assert "RLE Lossless" in text and "JPEG 2000" in text  # compressed samples decoded
    assert "FAIL" not in text


def test_selftest_fails_without_the_chest_image_gate(tmp_path: Path) -> None:
    """A folder of models without the modality check would score a head CT saved as PNG
    (the gate keeps only its tag and pixel rules): the self-test says so."""
    out = io.StringIO()
    assert selftest.run(make_models_dir(tmp_path / "m"), RESOURCES, gui=False, out=out) == 1
    text = out.getvalue()
    assert "FAIL  chest-image gate  no modality-check model in" in text
    assert "ok    synthetic-ct" in text and "self-test FAILED (1 failed)" in text


def test_selftest_fails_on_tampered_model(models: Path) -> None:
    onnx = models / "synthetic-cxr" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    out = io.StringIO()
    assert selftest.run(models, RESOURCES, gui=False, out=out) == 1
    text = out.getvalue()
    assert "FAIL  synthetic-cxr" in text and "integrity check" in text
    assert "ok    synthetic-ct" in text  # one bad model never hides the good ones
    assert "self-test FAILED (1 failed)" in text


def test_selftest_fails_without_models_or_samples(tmp_path: Path) -> None:
    out = io.StringIO()
    assert selftest.run(tmp_path / "none", tmp_path / "nothing", gui=False, out=out) == 1
    text = out.getvalue()
    assert "no model folders found" in text and "no compressed DICOM sample" in text


def test_cli_selftest_subcommand(
    models: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUNGLENS_RESOURCES_DIR", str(RESOURCES))
    assert main(["--models-dir", str(models), "selftest", "--no-gui"]) == 0
    assert "self-test PASSED" in capsys.readouterr().out


def test_selftest_checks_the_shipped_models_including_the_modality_check() -> None:
    """The repository's own models: triage models score a sample of their modality, the
    modality check must name the family of a bundled CT and X-ray sample."""
    out = io.StringIO()
    repo_models = RESOURCES.parent / "models"
    assert selftest.run(repo_models, RESOURCES, gui=False, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "modality-check 1.1.0 [any]" in text
    assert "gate statistics match (CT feature check on efficientnet-lite-ct)" in text
    assert "ct-dicom-chest-j2k.dcm -> ct" in text and "cxr-dicom-dx-nccid-j2k.dcm -> cxr" in text


def test_selftest_fails_when_the_modality_check_is_wrong(tmp_path: Path) -> None:
    """A "modality check" that answers the same for every image must fail the self-test."""
    from onnx_fixtures import write_modality_check

    models = tmp_path / "models"
    write_modality_check(models / "synthetic-modality")
    out = io.StringIO()
    assert selftest.run(models, RESOURCES, gui=False, out=out) == 1
    assert "but the check says" in out.getvalue()


def test_selftest_blames_tampered_gate_statistics_on_the_modality_check(models: Path) -> None:
    """A modified ``ood.npz`` used to pass the modality check's line and fail every triage
    model's: the failure now names the modality check's gate statistics, and the triage
    models, which are intact, pass."""

    # the fixture installs the shipped gate: modality check and the CT model it needs
    out = io.StringIO()
    assert selftest.run(models, RESOURCES, gui=False, out=out) == 0, out.getvalue()
    assert "gate statistics match (CT feature check on efficientnet-lite-ct)" in out.getvalue()
    for name, says in (
        ("ood.npz", "gate statistics failed their integrity check"),
        ("ct_features.npz", "gate statistics failed their integrity check"),
    ):
        stats = models / "modality-check" / name
        good = stats.read_bytes()
        stats.write_bytes(good[:-8] + b"tampered")
        clear_engines()
        out = io.StringIO()
        assert selftest.run(models, RESOURCES, gui=False, out=out) == 1
        text = out.getvalue()
        failed = [line for line in text.splitlines() if "FAIL" in line and "self-test" not in line]
        assert len(failed) == 1 and "FAIL  modality-check" in failed[0], text
        assert says in failed[0] and name in failed[0]
        assert "ok    synthetic-ct" in text and "ok    synthetic-cxr" in text
        stats.write_bytes(good)


def test_selftest_fails_when_the_gate_lacks_a_check(models: Path) -> None:
    """A modality check whose (re-sealed) manifest names no CT feature check would let the gate
    run without it, as the previous version did: the self-test says so and fails."""
    import json

    from onnx_fixtures import rewrite_manifest

    folder = models / "modality-check"
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest.pop("feature_check")
    rewrite_manifest(folder, manifest)
    clear_engines()
    out = io.StringIO()
    assert selftest.run(models, RESOURCES, gui=False, out=out) == 1
    assert "names no 'feature_check' statistics" in out.getvalue()
