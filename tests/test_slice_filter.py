"""A CT series is scored from its slices that look like chest CT, never from the others.

The gate accepts a series when a quarter of its sampled slices pass; the CT model scores head
slices at about 0.5, over the series threshold. These tests build real DICOM series from the
chest CT slice and the untagged head CT slices of ``../shared/data/dicom`` (pydicom-data, MIT):
the head slices must be left out of the score in ``classify_scan``, batch scoring (with the
check's own model and with another CT model) and ``classify --json``, and the viewer must show
no CAM for them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lunglens.batch import score
from lunglens.cli import main
from lunglens.errors import NotChestImage
from lunglens.inference import aggregate, classify_scan, clear_engines
from lunglens.inference.classify import slice_probabilities
from lunglens.inference.engine import get_engine
from lunglens.inference.gate_feature_check import load_feature_check
from lunglens.inference.slice_filter import left_out
from lunglens.inference.wording import slice_ranges
from lunglens.io import load_scan
from lunglens.models import get_model, modality_checker
from lunglens.report.pdf import result_lines
from lunglens.viewer.state import ViewerState
from ood_corpus import DICOM, REPO

MODELS = REPO / "models"
#: A real chest CT slice that the CT model scores low on its own (P 0.08, the demo sample).
CHEST_CT = REPO / "resources" / "samples" / "ct-dicom-chest-j2k.dcm"
HEAD_CT = [DICOM / "chest-ct-transfer-syntaxes" / "CT2_J2KR", DICOM / "ct-misc" / "693_J2KR.dcm"]
CHEST, HEADS = 4, 12
pytestmark = pytest.mark.usefixtures("shared_data")


def _write(src: Path, out: Path, uid: str, z: float, seed: int) -> None:
    """``src`` as an uncompressed slice of series ``uid`` at position ``z``, with its own
    noise (SD 10 HU, so no two slices are the same)."""
    ds = pydicom.dcmread(src)
    arr = ds.pixel_array.astype(np.int32)
    arr += np.random.default_rng(seed).normal(0.0, 10.0, arr.shape).round().astype(np.int32)
    info = np.iinfo(ds.pixel_array.dtype)
    ds.PixelData = np.clip(arr, info.min, info.max).astype(ds.pixel_array.dtype).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, z], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 5.0
    ds.pop("BodyPartExamined", None)
    ds.save_as(out, enforce_file_format=True)


#: Series layouts along the body, ``c`` a chest CT slice and ``h`` an untagged head CT slice.
LAYOUTS = {
    "mixed": "c" * 4 + "h" * 12,  # a series running past the lungs at its end
    "chest": "c" * 4,
    "heads-first": "h" * 12 + "c" * 4,
    "one-chest": "hchh",  # a quarter of the slices pass: the gate's quorum
    "middle": "hcchcch",  # a head slice between chest slices is left out too
    "all-heads": "h" * 8,
}


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One DICOM series folder per :data:`LAYOUTS` entry, no body part in its tags; chest
    slices are the same real slice with their own noise, head slices alternate the two files."""
    root = tmp_path_factory.mktemp("series")
    out = {}
    for name, layout in LAYOUTS.items():
        folder, uid = root / name, generate_uid()
        folder.mkdir()
        for z, kind in enumerate(layout):
            nth = layout[:z].count(kind)  # the n-th chest slice has the same noise everywhere
            src = CHEST_CT if kind == "c" else HEAD_CT[nth % 2]
            _write(src, folder / f"{z:02d}.dcm", uid, 5.0 * z, nth + (0 if kind == "c" else 100))
        out[name] = folder
    return out


HEAD_IDX = tuple(range(CHEST, CHEST + HEADS))


def test_head_slices_are_left_out_of_the_series_score(series: dict[str, Path]) -> None:
    ct = get_model("efficientnet-lite-ct", MODELS)
    scan = load_scan(series["mixed"])
    assert scan.n_slices == CHEST + HEADS
    result = classify_scan(scan, ct)
    assert result.unscored_slices == HEAD_IDX
    chest = classify_scan(load_scan(series["chest"]), ct)
    assert chest.unscored_slices == ()
    # the score is the chest slices' own, and the head slices decide nothing
    assert abs(result.positive_prob - chest.positive_prob) < 1e-5
    assert not set(result.top_slices) & set(HEAD_IDX)
    assert result.representative_slice not in HEAD_IDX and result.cam is not None
    assert "12 slices of 16 not scored (slices 5-16)" in " ".join(result.notes)
    # without the filter the head slices (P about 0.5) would have flagged this series
    probs = slice_probabilities(get_engine(ct), scan.image)
    method, k = ct.series_aggregation
    unfiltered = aggregate(probs, ct.positive_index, method, k)[ct.positive_index]
    assert unfiltered >= ct.series_threshold > result.positive_prob
    assert result.flagged is False and chest.flagged is False


def test_the_kept_slices_are_mapped_back_wherever_the_left_out_ones_lie(
    series: dict[str, Path],
) -> None:
    """Left-out head slices before the chest slices shift every index, and one between chest
    slices is left out as well; with either CT model (the second has its own pass)."""
    chest = classify_scan(load_scan(series["chest"]), get_model("efficientnet-lite-ct", MODELS))
    for name in ("efficientnet-lite-ct", "squeezenet-light-ct"):
        model = get_model(name, MODELS)
        for cam_class in (None, "non-covid"):
            r = classify_scan(load_scan(series["heads-first"]), model, cam_class=cam_class)
            assert r.unscored_slices == tuple(range(HEADS)), name
            assert set(r.top_slices) <= set(range(HEADS, HEADS + CHEST))
            assert HEADS <= r.representative_slice < HEADS + CHEST
        if name == chest.model:
            assert abs(r.positive_prob - chest.positive_prob) < 1e-5
        middle = classify_scan(load_scan(series["middle"]), model)
        assert middle.unscored_slices == (0, 3, 6), name
        assert "3 slices of 7 not scored (slices 1, 4, 7)" in " ".join(middle.notes)
        assert not set(middle.top_slices) & {0, 3, 6}


def test_a_series_left_with_one_slice_is_still_a_series(series: dict[str, Path]) -> None:
    """Its own threshold, as every output (CSV, HTML summary, PDF) reads a scan of several
    slices; its probability is that of the one chest slice."""
    ct = get_model("efficientnet-lite-ct", MODELS)
    r = classify_scan(load_scan(series["one-chest"]), ct)
    assert r.unscored_slices == (0, 2, 3)
    assert r.threshold == ct.series_threshold != ct.threshold
    alone = classify_scan(load_scan(CHEST_CT), ct)
    assert abs(r.positive_prob - alone.positive_prob) < 0.01  # the slice with its own noise
    assert "3 slices of 4 not scored (slices 1, 3-4)" in " ".join(r.notes)
    assert "comes from the other slice" in " ".join(r.notes)


def test_a_series_none_of_whose_slices_pass_is_refused_in_classify_and_batch(
    series: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the gate's quorum (let through here), a series none of whose slices look like
    chest CT gets no score: ``NotChestImage`` in ``classify_scan``, an error row in batch."""
    import lunglens.batch.runner as runner
    import lunglens.inference.classify as classify

    def accept(scan: object, verdict: object, *args: object, **kw: object) -> object:
        return verdict

    monkeypatch.setattr(classify, "judge_features", accept)
    monkeypatch.setattr(runner, "judge_features", accept)
    scan = load_scan(series["all-heads"])
    for name in ("efficientnet-lite-ct", "squeezenet-light-ct"):
        with pytest.raises(NotChestImage, match="none of its 8 slices"):
            classify_scan(scan, get_model(name, MODELS))
        out = tmp_path / f"{name}.csv"
        list(score([series["all-heads"]], get_model(name, MODELS), out, audit=False))
        with open(out, newline="") as fh:
            (row,) = list(csv.DictReader(fh))
        assert row["status"] == "error" and "none of its 8 slices" in row["error"]
        assert not row["p_covid"]


def test_batch_leaves_out_the_same_slices_with_either_ct_model(
    series: dict[str, Path], tmp_path: Path
) -> None:
    want = classify_scan(load_scan(series["mixed"]), get_model("efficientnet-lite-ct", MODELS))
    for name in ("efficientnet-lite-ct", "squeezenet-light-ct"):
        # the check's own model judges it on the scoring pass; another one pays a second pass
        out = tmp_path / f"{name}.csv"
        model = get_model(name, MODELS)
        list(score([series["mixed"]], model, out, audit=False, models_dir=MODELS))
        with open(out, newline="") as fh:
            (row,) = list(csv.DictReader(fh))
        assert row["status"] == "ok", row["error"]
        assert "12 slices of 16 not scored (slices 5-16)" in row["notes"]
        tops = {int(n) for n in row["top_slices"].split(";")}
        assert tops and tops <= set(range(1, CHEST + 1))
        if name == want.model:
            assert abs(float(row["p_covid"]) - want.positive_prob) < 1e-5


def test_classify_json_numbers_the_unscored_slices_and_gives_them_no_probability(
    series: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clear_engines()
    monkeypatch.setenv("LUNGLENS_MODELS_DIR", str(MODELS))
    monkeypatch.setenv("LUNGLENS_DATA_DIR", str(series["mixed"].parent / "data"))
    assert main(["classify", str(series["mixed"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unscored_slices"] == list(range(CHEST + 1, CHEST + HEADS + 1))
    assert all(p is None for p in data["slice_probs"][CHEST:])
    assert all(p is not None for p in data["slice_probs"][:CHEST])


def test_the_viewer_shows_no_cam_on_an_unscored_slice(series: dict[str, Path]) -> None:
    ct = get_model("efficientnet-lite-ct", MODELS)
    state = ViewerState()
    scan = load_scan(series["mixed"])
    state.open(scan)
    state.set_result(classify_scan(scan, ct), ct)
    state.slice_index = HEAD_IDX[0]
    assert "Slice 5 was not scored" in state.unscored_note()
    assert state.slice_text().endswith("· not scored")
    assert state.heat_request() is None
    with pytest.raises(RuntimeError, match="not scored"):
        state.overlay_export()
    assert state.unscored_slice_reason() is not None  # the gallery shows no maps either
    assert state.result is not None
    assert any(line.endswith("16 (4 scored)") for line in result_lines(scan, state.result))
    state.slice_index = CHEST - 1
    assert state.unscored_slice_reason() is None
    assert state.unscored_note() == "" and state.heat_request() is not None
    assert not state.slice_text().endswith("· not scored")


def test_a_series_none_of_whose_slices_pass_gets_no_score() -> None:
    gate = modality_checker(MODELS)
    assert gate is not None
    check = load_feature_check(gate, MODELS)
    assert check is not None
    far = check.stats.mean[0][None, :] + 10.0  # far from every chest CT slice
    near = check.stats.mean[0][None, :]
    assert left_out(check, np.concatenate([near, far]), "s") == (1,)
    with pytest.raises(NotChestImage, match="none of its 2 slices"):
        left_out(check, np.concatenate([far, far]), "s")


def test_slice_ranges_read_as_runs() -> None:
    assert slice_ranges([0, 1, 2, 5]) == "1-3, 6"
    assert slice_ranges([9, 0, 1, 4, 5, 7]) == "1-2, 5-6, 8, 10"
    assert slice_ranges([3]) == "4" and slice_ranges([]) == ""


def test_the_window_says_which_slices_were_scored(
    qtbot, shipped_window, series: dict[str, Path]
) -> None:
    """The app on the mixed series: the rule line counts the scored slices, the note names the
    others, and on a head slice the slice label and the CAM panel say it was not scored."""
    win = shipped_window
    with qtbot.waitSignal(win.resultReady, timeout=30_000):
        win.open_path(str(series["mixed"]))
    panel = win.classify_panel
    assert "series of 16 slices, 4 scored" in panel.threshold_label.text()
    assert "12 slices of 16 not scored (slices 5-16)" in panel.notes_label.text()
    assert win.slice_index < CHEST
    win.cam_controls.show_box.setChecked(True)
    win.set_slice(HEAD_IDX[3])
    assert win.slice_label.text().endswith("· not scored")
    qtbot.waitUntil(lambda: "was not scored" in win.cam_controls.status_label.text())


def test_batch_fuses_the_check_when_the_models_folder_is_reached_by_a_link(
    series: dict[str, Path], tmp_path: Path
) -> None:
    """The engine cache is keyed by the resolved ONNX path: a model first loaded through a
    link to the models folder serves the same model named by its real path, and the series is
    still scored from its chest slices (a review found a KeyError here)."""
    link = tmp_path / "models-link"
    link.symlink_to(MODELS, target_is_directory=True)
    clear_engines()
    classify_scan(load_scan(series["chest"]), get_model("efficientnet-lite-ct", link))
    out = tmp_path / "r.csv"
    model = get_model("efficientnet-lite-ct", MODELS)
    list(score([series["mixed"]], model, out, audit=False, models_dir=MODELS))
    with open(out, newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status"] == "ok", row["error"]
    assert "12 slices of 16 not scored (slices 5-16)" in row["notes"]
