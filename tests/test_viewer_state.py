"""The viewer's state without Qt (:mod:`lunglens.viewer`): real scans, the shipped models.

Everything the window shows about the open scan (slice, window/level, pixel values, the CAM
overlay and its cache, the PNG export) is computed here by plain Python, so it is tested without
a display: the GUI tests only check that the window binds to it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lunglens.explain import cam_map, colorize, overlay, raw_cam
from lunglens.inference import classify_scan, get_engine, label_index
from lunglens.io import Modality, Scan, discover_sources, load_scan
from lunglens.models import ModelInfo, default_model_for
from lunglens.preprocess import WINDOW_PRESETS
from lunglens.viewer import (
    CAM_CACHE_SLICES,
    CamCache,
    ViewerState,
    compute_heat,
    load_and_check,
    load_target,
)
from lunglens.viewer.state import NO_MODALITY_VALUES, PRESETS_CT_ONLY

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
SAMPLES = REPO / "resources" / "samples"
CXR_DICOM = SAMPLES / "cxr-dicom-dx-nccid-j2k.dcm"
CXR_PLAIN = SAMPLES / "cxr-normal-ieee8023-0006.jpg"


@pytest.fixture(scope="module")
def ct_model() -> ModelInfo:
    return default_model_for(Modality.CT, MODELS)


def write_series(src: Path, folder: Path, n: int, uid: str | None = None) -> Path:
    """``n`` slices of the real chest CT slice ``src`` as one series, 5 mm apart; slice 1 has a
    denser square (+300 HU, like an opacity; a square at the brightest value makes a slice
    unlike chest CT to the CT feature check), so the slices differ."""
    import pydicom
    from pydicom.uid import generate_uid

    uid = uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.InstanceNumber, ds.ImagePositionPatient = i + 1, [0.0, 0.0, 5.0 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        if i == 1:
            arr = ds.pixel_array.copy()
            arr[100:180, 300:380] += 300
            ds.PixelData = arr.tobytes()
        ds.save_as(folder / f"{uid[-6:]}-{i:02d}.dcm")
    return folder


@pytest.fixture(scope="module")
def ct_slice(shared_data: Path) -> Path:
    return shared_data / "dicom" / "chest-ct-transfer-syntaxes" / "CTImage.dcm"


@pytest.fixture(scope="module")
def ct_scan(ct_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Scan:
    """A two-slice chest CT series made from a real slice."""
    return load_scan(write_series(ct_slice, tmp_path_factory.mktemp("ct") / "chest", 2))


@pytest.fixture
def classified(ct_scan: Scan, ct_model: ModelInfo) -> ViewerState:
    """The two-slice CT open and classified by the shipped CT model, on its top slice."""
    state = ViewerState()
    state.open(ct_scan)
    state.set_result(classify_scan(ct_scan, ct_model, with_cam=True), ct_model)
    assert state.result is not None
    state.slice_index = state.result.representative_slice
    return state


def test_open_resets_everything_derived_from_the_previous_scan(
    classified: ViewerState, ct_scan: Scan
) -> None:
    old_id = classified.scan_id
    classified.cams.put_heats(0, "jet", {"covid": np.zeros((2, 2, 4), np.uint8)})
    new_id = classified.open(load_scan(CXR_DICOM))
    assert new_id != old_id
    assert classified.result is None and classified.result_info is None
    assert classified.slice_index == 0 and not classified.cams.raw and not classified.cams.heats
    assert classified.scan is not None
    assert classified.display_window == classified.scan.window  # its own window, not the CT's
    assert classified.current_heat() is None and classified.heat_request() is None


def test_slices_are_clamped_and_labelled_with_their_position(ct_scan: Scan) -> None:
    state = ViewerState()
    assert state.clamp_slice(3) == 0 and state.slice_text() == ""  # nothing open
    state.open(ct_scan)
    assert state.n_slices == 2
    assert state.clamp_slice(-4) == 0 and state.clamp_slice(99) == 1
    state.slice_index = 1
    assert state.slice_text() == "Slice 2/2 · 5.0 mm"
    assert np.array_equal(state.display_image(), ct_scan.image[1])
    expected = np.clip(np.rint(ct_scan.image[1] * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(state.display_pixels(), expected)


def test_window_presets_drag_and_refusals(ct_scan: Scan) -> None:
    state = ViewerState()
    state.open(ct_scan)
    assert state.windowable() and state.window_refusal("bone") is None
    bone = state.set_window("bone")
    assert bone == WINDOW_PRESETS["bone"] and state.window_text() == "W 1800  L 400"
    assert ct_scan.raw is not None
    assert np.array_equal(state.display_image(), bone.apply(ct_scan.raw[0], invert=False))
    dragged = state.drag_window(20, -10)
    assert dragged is not None and dragged.name == "custom"
    assert dragged.width == 1800 + 20 * (1800 / 256) and dragged.center == 400 - 10 * (1800 / 256)
    assert state.set_window(None) == ct_scan.window
    assert np.array_equal(state.display_image(), ct_scan.image[0])  # as loaded again

    cxr = ViewerState()
    cxr.open(load_scan(CXR_DICOM))
    assert not cxr.windowable()
    assert cxr.window_refusal("lung") == PRESETS_CT_ONLY  # presets are Hounsfield units
    assert cxr.window_refusal(None) is None  # its own window still applies
    plain = ViewerState()
    plain.open(load_scan(CXR_PLAIN))
    assert plain.window_refusal(None) == NO_MODALITY_VALUES
    assert plain.drag_window(5, 5) is None and plain.display_window is None


def test_pixel_text_reads_modality_values_or_display_gray(ct_scan: Scan) -> None:
    state = ViewerState()
    assert state.pixel_text(1, 1) == ""
    state.open(ct_scan)
    assert ct_scan.raw is not None
    assert state.pixel_text(10, 20) == f"(10, 20)  HU {float(ct_scan.raw[0, 20, 10]):.0f}"
    assert state.pixel_text(-1, -1) == ""
    cxr = load_scan(CXR_DICOM)
    state.open(cxr)
    assert state.pixel_text(5, 6).startswith("(5, 6)  value ")
    plain = load_scan(CXR_PLAIN)
    state.open(plain)
    assert state.pixel_text(3, 4) == f"(3, 4)  gray {float(plain.image[0, 4, 3]):.3f}"


def test_heat_of_the_result_slice_is_colored_from_its_own_cam(
    classified: ViewerState, ct_model: ModelInfo
) -> None:
    """The representative slice reuses the classification's CAM (no second model call); one
    job colors every class, so switching class afterwards is a cache hit."""
    result = classified.result
    assert result is not None and result.cam is not None
    assert classified.current_heat() is None
    request = classified.heat_request()
    assert request is not None and request.raw is result.cam
    assert dict(request.classes) == {"covid": 0, "non-covid": 1}
    heat = compute_heat(request)
    image = classified.scan.image[request.index]  # type: ignore[union-attr]
    for name, index in request.classes:
        expected = colorize(cam_map(result.cam, index, image.shape), "jet")
        assert np.array_equal(heat.heats[name], expected)
    assert classified.store_heat(heat)
    shown = classified.current_heat()
    assert shown is not None and shown.shape == (*image.shape, 4)
    assert classified.heat_request() is None  # cached
    classified.cam.cam_class = "non-covid"
    other = classified.current_heat()
    assert other is not None and not np.array_equal(other, shown)
    classified.cam.colormap = "viridis"  # another colormap: colored again, CAM reused
    again = classified.heat_request()
    assert again is not None and again.raw is result.cam and again.colormap == "viridis"


def test_heat_of_another_slice_runs_the_model(
    classified: ViewerState, ct_model: ModelInfo, ct_scan: Scan
) -> None:
    other = 1 - classified.slice_index
    classified.slice_index = other
    request = classified.heat_request()
    assert request is not None and request.raw is None and request.index == other
    heat = compute_heat(request)
    assert np.allclose(heat.raw, raw_cam(get_engine(ct_model), ct_scan.image[other]))
    assert classified.store_heat(heat)
    assert other in classified.cams.raw and classified.current_heat() is not None


def test_stale_heat_results_are_not_kept(classified: ViewerState) -> None:
    request = classified.heat_request()
    assert request is not None
    heat = compute_heat(request)
    classified.slice_index = 1 - request.index  # scrolled on while it ran
    assert classified.store_heat(heat)
    assert request.index in classified.cams.raw  # the raw CAM is still worth keeping ...
    assert not classified.cams.heats  # ... its colored maps are not
    classified.open(classified.scan)  # type: ignore[arg-type]  # the scan was opened again
    assert not classified.store_heat(heat) and not classified.cams.raw


def test_heat_of_a_model_no_longer_shown_is_dropped(classified: ViewerState, ct_scan: Scan) -> None:
    request = classified.heat_request()
    assert request is not None
    heat = compute_heat(request)
    squeeze = next(m for m in _models() if m.name == "squeezenet-light-ct")
    classified.set_result(classify_scan(ct_scan, squeeze, with_cam=True), squeeze)
    assert not classified.store_heat(heat)


def _models() -> list[ModelInfo]:
    from lunglens.models import list_models

    return list_models(MODELS)


def test_cam_cache_is_bounded_and_keeps_the_representative_slice() -> None:
    cache = CamCache()
    assert cache.max_slices == CAM_CACHE_SLICES
    cache.clear(keep=3)
    for i in range(CAM_CACHE_SLICES + 40):
        cache.put_raw(i, np.full((2, 4, 4), i, np.float32))
    assert len(cache.raw) == CAM_CACHE_SLICES + 1  # the newest maps plus the kept one
    assert 3 in cache.raw and 4 not in cache.raw
    assert max(cache.raw) == CAM_CACHE_SLICES + 39 and 40 in cache.raw
    heat = np.zeros((4, 4, 4), np.uint8)
    cache.put_heats(7, "jet", {"covid": heat, "non-covid": heat})
    cache.put_heats(7, "hot", {"covid": heat})
    assert len(cache.heats) == 3
    cache.put_heats(8, "jet", {"covid": heat})
    assert list(cache.heats) == [(8, "covid", "jet")]  # one slice's heat maps only


def test_overlay_export_is_the_displayed_slice_with_its_cam(
    classified: ViewerState, tmp_path: Path
) -> None:
    empty = ViewerState()
    with pytest.raises(RuntimeError, match="classify a scan"):
        empty.overlay_export()
    classified.set_window("mediastinum")
    classified.cam.opacity = 0.6
    classified.cam.cam_class = "non-covid"
    out = classified.overlay_export().write(tmp_path / "cam.png")
    png = Image.open(out)
    written = np.asarray(png)
    result, info = classified.result, classified.result_info
    assert result is not None and result.cam is not None and info is not None
    image = classified.display_image()
    heat = cam_map(result.cam, label_index(info, "non-covid"), image.shape)
    h = image.shape[0]
    assert np.array_equal(written[:h], overlay(image, heat, alpha=0.6, colormap="jet"))
    # the map carries what it is and whose it is: a footer under the slice, and PNG text
    footer = written[h:]
    assert footer.shape[0] > 40 and (footer == 255).mean() > 0.8 and (footer < 100).any()
    text = png.text  # type: ignore[attr-defined]
    slice_no = classified.slice_index + 1
    assert f"CAM of 'non-covid' of slice {slice_no}: where the model looked" in text["Description"]
    assert result.headline in text["Description"] and "not a diagnosis" in text["Disclaimer"]
    assert text["Model SHA-256"] == info.sha256 and text["Model"] == f"{info.name} {info.version}"
    assert classified.output_name("_cam.png") == "chest_cam.png"
    classified.slice_index = 1 - classified.slice_index  # no CAM there yet
    with pytest.raises(RuntimeError, match="still being computed"):
        classified.overlay_export()


def test_load_target_opens_a_series_key_and_checks_plain_images(
    ct_slice: Path, tmp_path: Path
) -> None:
    from pydicom.uid import generate_uid

    uids = [generate_uid(), generate_uid()]
    for n, uid in enumerate(uids, start=2):  # two series in one folder: a key names one
        write_series(ct_slice, tmp_path, n, uid)
    keys = {src.key: src for src in discover_sources(tmp_path, recursive=False)[0]}
    assert sorted(keys) == sorted(f"{tmp_path}#{uid}" for uid in uids)
    assert load_target(f"{tmp_path}#{uids[0]}").n_slices == 2
    assert load_target(f"{tmp_path}#{uids[1]}").n_slices == 3

    scan, check, verdict = load_and_check(str(CXR_PLAIN), MODELS)
    assert verdict.accepted and scan.modality == Modality.UNKNOWN
    assert check is not None  # plain image: the modality check picks the model family
    scan, check, verdict = load_and_check(str(ct_slice), MODELS)
    assert verdict.accepted and check is None  # DICOM Modality (0008,0060) says CT


def test_viewer_core_does_not_import_qt() -> None:
    code = "import sys, lunglens.viewer; print(sorted(m for m in sys.modules if 'PySide6' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_a_not_flagged_result_draws_its_cam_against_the_reference(
    classified: ViewerState, tmp_path: Path
) -> None:
    """Heat maps, the PNG export and the panel's note all use the model's reference peak when
    the slice on screen is not flagged on its own, and the map's own maximum when it is."""
    from dataclasses import replace

    from lunglens.explain import FLOOR_NOTE

    result = classified.result
    assert result is not None and result.cam is not None
    flagged = replace(result, slice_threshold=0.0, cam_reference={"covid": 1e6})
    classified.result = flagged
    request = classified.heat_request()
    assert request is not None and request.floors == ()
    assert classified.cam_scale_note() == ""
    classified.result = replace(flagged, slice_threshold=1.01)  # this slice alone: not flagged
    request = classified.heat_request()
    assert request is not None and request.floors == (("covid", 1e6),)
    heat = compute_heat(request)
    assert heat.heats["covid"][..., 3].max() == 0, "a huge reference: nothing drawn"
    assert heat.heats["non-covid"][..., 3].max() == 255, "no reference: own maximum"
    classified.cam.cam_class = "covid"
    assert classified.cam_scale_note() == FLOOR_NOTE
    assert classified.store_heat(heat)
    export = classified.overlay_export()
    assert export.floor == 1e6
    written = np.asarray(Image.open(export.write(tmp_path / "cam.png")))
    gray = np.asarray(Image.open(replace(export, opacity=0.0).write(tmp_path / "gray.png")))
    assert np.array_equal(written, gray), "the faint map leaves the slice as it is"
    assert written.shape[0] > export.image.shape[0]  # under its caption
    classified.cam.cam_class = "non-covid"
    assert classified.cam_scale_note() == "" and classified.overlay_export().floor is None


def test_the_cam_scale_follows_the_slice_not_the_series(classified: ViewerState) -> None:
    """The reference peak was measured per slice: in a flagged series, a slice that alone stays
    under the slice threshold is drawn faint, and the series' decision does not change that."""
    from dataclasses import replace

    result = classified.result
    assert result is not None and result.n_slices == 2
    pos = result.labels.index("covid")
    low, high = sorted(range(2), key=lambda i: result.slice_probs[i, pos])
    between = float(result.slice_probs[[low, high], pos].mean())
    for series_flagged in (True, False):
        classified.result = replace(
            result, flagged=series_flagged, slice_threshold=between, cam_reference={"covid": 5.0}
        )
        classified.slice_index = high
        assert classified.cam_floor("covid") is None
        classified.slice_index = low
        assert classified.cam_floor("covid") == 5.0


def test_heat_requests_of_two_models_are_not_the_same_job(classified: ViewerState) -> None:
    """Classified again with another model while a heat job of the first runs: the new request
    has its own key, so the panel does not wait for the old job (whose maps are dropped)."""
    from dataclasses import replace

    from lunglens.models import get_model

    request = classified.heat_request()
    assert request is not None
    other = get_model("squeezenet-light-ct", MODELS)
    assert other.sha256 != request.info.sha256
    assert replace(request, info=other).key != request.key
    assert replace(request).key == request.key


def test_unscored_reason_follows_the_refusal_the_model_choice_and_the_result(
    classified: ViewerState, ct_scan: Scan
) -> None:
    """No model output (gallery, CAM) for a refused scan; once a model scores it, there is no
    refusal left to show (the unrouted plain image a user picked a model for)."""
    from lunglens.inference import GateVerdict

    state = classified
    assert state.unscored_reason() is None  # classified: a result is on screen
    result, info = state.result, state.result_info
    assert result is not None and info is not None
    state.open(ct_scan, GateVerdict(False, "body part BRAIN", "body_part"))
    assert state.unscored_reason() == "not a chest scan (body part BRAIN)"
    assert state.unscored_reason(automatic=False) == "not a chest scan (body part BRAIN)"
    state.open(ct_scan)
    state.unrouted = "cannot tell whether this plain image is a CT slice or a chest X-ray"
    assert state.unscored_reason() == state.unrouted  # automatic mode chose no model
    assert state.unscored_reason(automatic=False) is None  # a model picked by hand may score
    state.refusal = "the model is for chest X-rays"
    assert state.unscored_reason(automatic=False) == state.refusal
    state.set_result(result, info)  # the picked model scored it: nothing refused any more
    assert state.refusal is None and state.unscored_reason() is None
    state.open(ct_scan)
    assert state.unrouted is None and state.refusal is None and state.unscored_reason() is None
