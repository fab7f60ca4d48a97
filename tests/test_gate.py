"""The chest-image gate: what is not a chest CT slice or chest X-ray gets no score anywhere."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lunglens.batch import score
from lunglens.cli import EXIT_BAD_INPUT, main
from lunglens.errors import InvertedImage, ModelError, ModelRefused, NotChestImage
from lunglens.inference import check_chest, classify_scan
from lunglens.inference.gate import fit_stats, load_stats
from lunglens.io import load_scan
from lunglens.models import get_model, modality_checker
from onnx_fixtures import retag
from ood_corpus import (
    CHEST_CT,
    CHEST_DICOM,
    PHOTOS,
    REPO,
    non_chest_corpus,
    palette_dicom,
    training_images,
)

MODELS = REPO / "models"
pytestmark = pytest.mark.usefixtures("shared_data")


def _reason(path: Path) -> str:
    verdict = check_chest(load_scan(path), MODELS)
    assert not verdict.accepted, path
    return verdict.reason


def test_header_rules_refuse_other_modalities_body_parts_and_localizers(tmp_path: Path) -> None:
    assert (
        _reason(retag(CHEST_CT, tmp_path / "mr.dcm", Modality="MR"))
        == "modality MR (magnetic resonance)"
    )
    assert (
        _reason(retag(CHEST_CT, tmp_path / "head.dcm", BodyPartExamined="HEAD")) == "body part HEAD"
    )
    hand = retag(CHEST_CT, tmp_path / "hand.dcm", Modality="CR", BodyPartExamined="HAND")
    assert _reason(hand) == "body part HAND"
    scout = retag(CHEST_CT, tmp_path / "scout.dcm", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    assert "localizer" in _reason(scout)
    brain = REPO.parent / "shared/data/dicom/ct-misc/eCT_Supplemental.dcm"
    assert _reason(brain) == "body part BRAIN"
    # the chest-tagged original and a chest-abdomen part pass
    assert check_chest(load_scan(CHEST_CT), MODELS).accepted
    both = retag(CHEST_CT, tmp_path / "ca.dcm", BodyPartExamined="CHEST_ABDOMEN")
    assert check_chest(load_scan(both), MODELS).accepted


def test_explicit_pixel_rules(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(np.full((200, 200), 90, np.uint8)).save(tmp_path / "blank.png")
    noise = rng.integers(0, 256, (200, 200), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    assert _reason(tmp_path / "blank.png").startswith("the image is blank")
    assert _reason(tmp_path / "noise.png").startswith("the image is noise")
    assert _reason(PHOTOS / "coffee.jpg").startswith("a colour picture (colourfulness")


def test_learned_check_refuses_a_grey_photo_with_its_distance() -> None:
    reason = _reason(PHOTOS / "camera.png")  # grey: only the learned check can tell
    assert reason.startswith("does not look like a chest CT slice or a chest X-ray (distance ")
    distance, threshold = (float(x) for x in reason.split("distance ")[1].split()[0:3:2])
    assert distance > threshold


@pytest.mark.parametrize("frames", [1, 2])
def test_palette_colour_dicom_is_decoded_then_refused_as_a_colour_picture(
    tmp_path: Path, frames: int
) -> None:
    path = palette_dicom(Image.open(PHOTOS / "coffee.jpg"), tmp_path / "pal.dcm", frames)
    scan = load_scan(path)  # not CorruptFile: the palette is applied
    assert scan.n_slices == frames
    assert float(scan.metadata["colourfulness"]) > 25
    with pytest.raises(NotChestImage, match="a colour picture"):
        classify_scan(scan, get_model("squeezenet-light-ct", MODELS))


def test_classify_scan_refuses_before_scoring_and_accepts_chest() -> None:
    with pytest.raises(NotChestImage, match="not a chest scan: a colour picture"):
        classify_scan(load_scan(PHOTOS / "chelsea.jpg"), get_model("squeezenet-light-ct", MODELS))
    result = classify_scan(load_scan(CHEST_CT), get_model("squeezenet-light-ct", MODELS))
    assert 0.0 <= result.positive_prob <= 1.0


def test_cli_classify_prints_the_refusal_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUNGLENS_DATA_DIR", str(tmp_path))
    photo = str(PHOTOS / "horse.png")
    assert main(["--models-dir", str(MODELS), "classify", photo]) == EXIT_BAD_INPUT
    out = capsys.readouterr()
    assert "refused:     not a chest scan: does not look like a chest CT slice" in out.out
    assert "p(covid)" not in out.out and "NotChestImage" in out.err
    assert main(["--models-dir", str(MODELS), "classify", photo, "--json"]) == EXIT_BAD_INPUT
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "refused" and data["error"] == "NotChestImage"
    assert "distance" in data["reason"] and not any(k.startswith("p") for k in data)


def test_batch_writes_an_error_row_for_a_non_chest_file(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(PHOTOS / "chelsea.jpg", folder / "cat.jpg")
    shutil.copy(CHEST_CT, folder / "chest.dcm")
    retag(CHEST_CT, folder / "brain.dcm", BodyPartExamined="BRAIN", SeriesInstanceUID="1.2.3.4")
    out = tmp_path / "res.csv"
    list(score([folder], get_model("squeezenet-light-ct", MODELS), out, audit=False))
    with open(out, newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert rows["chest.dcm"]["status"] == "ok"
    for name, reason in (("cat.jpg", "a colour picture"), ("brain.dcm", "body part BRAIN")):
        row = rows[name]
        assert row["status"] == "error" and row["error"].startswith("NotChestImage:")
        assert reason in row["error"] and not row.get("p_covid")


def test_tampered_gate_statistics_are_refused(tmp_path: Path) -> None:
    shutil.copytree(MODELS / "modality-check", tmp_path / "modality-check")
    stats = tmp_path / "modality-check" / "ood.npz"
    stats.write_bytes(stats.read_bytes()[:-8] + b"tampered")
    info = modality_checker(tmp_path)
    assert info is not None
    with pytest.raises(ModelRefused, match="integrity"):
        load_stats(info)


def test_a_gate_that_cannot_run_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model error in the learned check stops the scan: it is never waved through."""
    import lunglens.inference.gate as gate

    def broken(*args: object) -> None:
        raise ModelError(MODELS / "modality-check", "onnxruntime could not run the graph")

    monkeypatch.setattr(gate, "learned_check", broken)
    with pytest.raises(ModelError, match="could not run"):
        check_chest(load_scan(CHEST_CT), MODELS)
    with pytest.raises(ModelError, match="could not run"):
        classify_scan(load_scan(CHEST_CT))


def test_fit_stats_thresholds_accept_the_target_share_of_held_out_images() -> None:
    rng = np.random.default_rng(0)
    desc = np.concatenate([rng.normal(0, 1, (2000, 5)), rng.normal(6, 2, (1000, 5))])
    modality = np.array(["ct"] * 2000 + ["cxr"] * 1000)
    folds = rng.integers(0, 5, len(desc))
    stats, heldout = fit_stats(desc, modality, folds, acceptance=0.99)
    assert 0.985 <= float((heldout <= 1).mean()) <= 0.995
    far = stats.distances(np.full((1, 5), 40.0)) / stats.threshold
    assert far.min() > 1  # a point far from both modalities is refused


@pytest.mark.slow
def test_corpus_refused_and_chest_images_accepted(tmp_path: Path) -> None:
    """Done-criterion of issue 15: no non-chest file of the corpus is scored; >= 99.5 % of the
    training images of each data set and every real chest DICOM file still are."""
    refused = []
    for kind, path in non_chest_corpus(tmp_path, MODELS):
        verdict = check_chest(load_scan(path), MODELS)
        refused.append((kind, path.name, verdict.accepted))
    assert [r for r in refused if r[2]] == []
    assert all(check_chest(load_scan(p), MODELS).accepted for p in CHEST_DICOM)
    accepted: dict[str, list[bool]] = {}
    for dataset, _source, path in training_images():
        accepted.setdefault(dataset, []).append(check_chest(load_scan(path), MODELS).accepted)
    for dataset, oks in accepted.items():
        assert np.mean(oks) >= 0.995, dataset


def test_inverted_chest_images_are_refused_as_inverted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chest image saved with its grey levels inverted gets no score, and the refusal says
    why; half of such CT slices passed the learned check and were scored near P 0.5."""
    samples = REPO / "resources" / "samples"
    names = ["ct-noncovid-sars-cov-2-ct-0001.jpg", "ct-covid-covid-ct-ucsd-0001.jpg"]
    for name in [*names, "cxr-covid-ieee8023-0401.jpg", "cxr-normal-ieee8023-0006.jpg"]:
        grey = np.asarray(Image.open(samples / name).convert("L"))
        inverted = tmp_path / f"inv-{Path(name).stem}.png"
        Image.fromarray(255 - grey).save(inverted)
        assert check_chest(load_scan(samples / name), MODELS).accepted, name
        verdict = check_chest(load_scan(inverted), MODELS)
        assert not verdict.accepted, name
        # all four say why: the two CT slices pass the learned distance and only the inversion
        # rule refuses them; the X-rays fail it, and their inverted copy (the original) passes
        assert verdict.rule == "inverted" and "inverted grey levels" in verdict.reason, name
        place = "chest CT slices" if name.startswith("ct") else "chest X-rays"
        assert place in verdict.reason, verdict.reason
    inverted = tmp_path / "inv-ct-noncovid-sars-cov-2-ct-0001.png"
    monkeypatch.setenv("LUNGLENS_DATA_DIR", str(tmp_path / "data"))  # the audit log
    with pytest.raises(InvertedImage, match="inverted grey levels"):
        classify_scan(load_scan(inverted))
    assert main(["--models-dir", str(MODELS), "classify", str(inverted)]) == EXIT_BAD_INPUT
    assert "usual grey levels (air dark)" in capsys.readouterr().out
    argv = ["--models-dir", str(MODELS), "classify", str(inverted), "--json"]
    assert main(argv) == EXIT_BAD_INPUT
    data = json.loads(capsys.readouterr().out)
    assert data["error"] == "InvertedImage" and "usual grey levels" in data["hint"]


def test_the_window_tells_how_to_export_an_inverted_image(
    qtbot, shipped_window, tmp_path: Path
) -> None:
    """The red banner gives the inverted image's own advice, not "LungLens scores chest CT
    slices and chest X-rays only" under a reason that says it is a chest image."""
    grey = np.asarray(Image.open(REPO / "resources/samples/cxr-normal-ieee8023-0006.jpg"))
    inverted = tmp_path / "inverted.png"
    Image.fromarray(255 - grey).convert("L").save(inverted)
    win = shipped_window
    win.open_path(str(inverted))
    panel = win.classify_panel
    qtbot.waitUntil(lambda: "Inverted grey levels" in panel.refusal(), timeout=30_000)
    assert "usual grey levels (air dark)" in panel.refusal()
    assert "chest X-rays only" not in panel.refusal()
    assert win.unscored_reason() is not None and "chest scan" not in win.unscored_reason()
    win.classify()  # the status bar says the same as the banner
    assert "not a chest scan" not in win.statusBar().currentMessage()
    assert "inverted grey levels" in win.statusBar().currentMessage()


def test_framed_xrays_and_text_pages_are_not_called_inverted(tmp_path: Path) -> None:
    """Two look-alikes of an inverted image keep their own refusal (or pass): an X-ray with a
    narrow bright frame, as collimation leaves, and a black-on-white text page (whose inverted
    copy is nearer to the chest CT set, at 0.86-0.95 of its distance)."""
    from ood_corpus import _text_page

    samples = REPO / "resources" / "samples"
    for name in ("cxr-covid-ieee8023-0401.jpg", "cxr-normal-ieee8023-0006.jpg"):
        grey = np.asarray(Image.open(samples / name).convert("L")).copy()
        k = int(0.05 * min(grey.shape))
        grey[:k], grey[-k:], grey[:, :k], grey[:, -k:] = 255, 255, 255, 255
        framed = tmp_path / f"framed-{name}.png"
        Image.fromarray(grey).save(framed)
        assert check_chest(load_scan(framed), MODELS).rule != "inverted", name
    for k, (size, font) in enumerate((((850, 1100), 14), ((600, 800), 10))):  # the corpus's
        page = _text_page(tmp_path / f"text_{k}.png", size, font)
        verdict = check_chest(load_scan(page), MODELS)
        assert not verdict.accepted and verdict.rule != "inverted", verdict.reason
