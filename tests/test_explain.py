"""CAM maps, overlays and the activation gallery; memory stays flat over many calls."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from lunglens.explain import (
    activation_maps,
    cam_alpha,
    cam_map,
    colorize,
    overlay,
    raw_cam,
    save_png,
    tile,
)
from lunglens.inference import classify_scan, clear_engines, get_engine
from lunglens.io.scan import Scan
from lunglens.models import get_model
from onnx_fixtures import blob_image, make_models_dir


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    clear_engines()
    return get_engine(get_model("synthetic-ct", make_models_dir(tmp_path / "models")))


def test_cam_peak_lands_on_bright_blob(engine) -> None:  # type: ignore[no-untyped-def]
    img = blob_image(96, 96, center=(70, 24), radius=8)
    res = classify_scan(Scan("blob", img[None], modality="ct"), engine.info)
    heat = cam_map(res, "covid", img.shape)
    assert heat.shape == (96, 96) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    peak = np.unravel_index(int(heat.argmax()), heat.shape)
    assert abs(peak[0] - 70) <= 12 and abs(peak[1] - 24) <= 12
    # the far corner carries no evidence for "covid"
    assert heat[:20, 70:].max() < 0.1
    # same map from the raw [C, h, w] array
    np.testing.assert_allclose(cam_map(res.cam, 0, img.shape), heat)


def test_cam_map_rejects_ambiguous_input_and_handles_all_negative() -> None:
    with pytest.raises(ValueError, match="integer"):
        cam_map(np.zeros((2, 4, 4)), None)
    flat = cam_map(-np.ones((4, 4), np.float32), None, (8, 8))
    assert flat.shape == (8, 8) and not flat.any()


def test_overlay_and_png(tmp_path: Path) -> None:
    img = blob_image(40, 50)
    heat = np.zeros((10, 10), np.float32)
    heat[2, 7] = 1.0
    rgb = overlay(img, heat, alpha=0.5)
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
    assert not np.array_equal(rgb[..., 0], rgb[..., 2])  # colour was added
    out = tmp_path / "cam.png"
    save_png(rgb, out)
    from PIL import Image

    with Image.open(out) as im:
        assert im.size == (50, 40) and im.mode == "RGB"
    with pytest.raises(ValueError, match="colormap"):
        overlay(img, heat, colormap="rainbow-unicorn")


def test_low_end_of_the_cam_is_transparent() -> None:
    """ "No evidence" areas keep the image's gray; opacity ramps up with the CAM value."""
    img = np.linspace(0.0, 1.0, 40 * 50, dtype=np.float32).reshape(40, 50)
    cam = np.zeros((40, 50), np.float32)
    cam[:, 25:] = 1.0
    cam[:, 20:25] = 0.35  # in the ramp: partly opaque
    rgb = overlay(img, cam, alpha=0.8)
    gray = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    for ch in range(3):  # left part: exactly the image, not tinted blue by jet's low end
        assert np.array_equal(rgb[:, :20, ch], gray[:, :20])
    assert not np.array_equal(rgb[:, 30:, 0], rgb[:, 30:, 2])  # strong CAM is coloured
    alpha = cam_alpha(np.array([0.0, 0.1, 0.35, 0.6, 1.0], np.float32))
    assert alpha[0] == alpha[1] == 0.0 and 0.0 < alpha[2] < 1.0 and alpha[3] == alpha[4] == 1.0
    rgba = colorize(cam)
    assert rgba.shape == (40, 50, 4) and rgba[0, 0, 3] == 0 and rgba[0, 49, 3] == 255


def test_activation_gallery(engine) -> None:  # type: ignore[no-untyped-def]
    img = blob_image(32, 32, center=(8, 8), radius=4)
    maps = activation_maps(engine, img, "act_0", top_n=3)
    assert len(maps) == 3
    assert [m.mean for m in maps] == sorted((m.mean for m in maps), reverse=True)
    assert maps[0].channel == 1  # dark detector dominates a mostly dark image
    for m in maps:
        assert m.map.shape == (32, 32) and 0.0 <= m.map.min() and m.map.max() <= 1.0
    grid = tile(maps, cols=2)
    assert grid.shape == (32 * 2 + 1, 32 * 2 + 1)
    assert raw_cam(engine, img).shape == (2, 8, 8)


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4
    except OSError:  # not Linux: the tracemalloc check still runs
        return 0


def test_memory_flat_over_many_calls(engine) -> None:  # type: ignore[no-untyped-def]
    img = blob_image(64, 64)
    for _ in range(30):  # warm up arenas and caches
        activation_maps(engine, img, "act_0")
        cam_map(raw_cam(engine, img), 0, img.shape)
    gc.collect()
    tracemalloc.start()
    base_py = tracemalloc.get_traced_memory()[0]
    base_rss = _rss_kb()
    for _ in range(300):
        activation_maps(engine, img, "act_0")
        overlay(img, cam_map(raw_cam(engine, img), 0, img.shape))
    gc.collect()
    grown_py = tracemalloc.get_traced_memory()[0] - base_py
    tracemalloc.stop()
    assert grown_py < 256 * 1024, f"Python heap grew {grown_py} bytes over 300 calls"
    assert _rss_kb() - base_rss < 20 * 1024, "RSS grew more than 20 MB over 300 calls"


def test_a_not_flagged_map_is_drawn_against_the_reference_peak(engine) -> None:  # type: ignore[no-untyped-def]
    """Scaled to its own maximum, the weakest map reaches full colour; an image that is not
    flagged is drawn against the model's reference peak instead, a flagged one stays as is.
    The decision is the slice's own (its probability against the slice threshold)."""
    from dataclasses import replace

    from lunglens.explain import display_floor

    img = blob_image(96, 96, center=(70, 24), radius=8)
    res = classify_scan(Scan("blob", img[None], modality="ct"), engine.info)
    assert res.cam_reference == {}, "the synthetic model has no reference: own maximum"
    own = cam_map(res, "covid", img.shape)
    assert own.max() == pytest.approx(1.0)
    peak = float(np.maximum(res.cam[0], 0).max())  # type: ignore[index]
    reference = {"covid": 10 * peak}
    quiet = replace(res, slice_threshold=1.01, cam_reference=reference)  # never reached
    faint = cam_map(quiet, "covid", img.shape)
    assert faint.max() == pytest.approx(own.max() / 10, rel=0.05)
    np.testing.assert_allclose(faint / faint.max(), own, atol=1e-5)  # one map, another scale
    loud = replace(res, slice_threshold=0.0, cam_reference=reference)  # always reached
    np.testing.assert_allclose(cam_map(loud, "covid", img.shape), own)
    # a class without a reference keeps its own scale; a floor under the peak changes nothing
    np.testing.assert_allclose(
        cam_map(quiet, "non-covid", img.shape), cam_map(res, "non-covid", img.shape)
    )
    np.testing.assert_allclose(cam_map(res.cam, 0, img.shape, floor=peak / 2), own)
    assert display_floor(False, "covid", reference) == 10 * peak
    assert display_floor(True, "covid", reference) is None
    assert display_floor(False, "non-covid", reference) is None
    # drawn, the not-flagged map of a weak scan is transparent where the own-scale one is not
    a_own = colorize(own)[..., 3]
    a_faint = colorize(faint)[..., 3]
    assert a_own.max() == 255 and a_faint.max() == 0


def test_an_exported_map_carries_its_caption_within_its_width() -> None:
    """The footer under an exported CAM wraps to the image however narrow it is (a 64 px
    slice), cuts a word longer than a line (a hash), and leaves the image's pixels alone."""
    from lunglens.explain.caption import _wrap, with_footer

    assert _wrap("aaa bbb ccc ddd", len, 7) == ["aaa bbb", "ccc ddd"]
    assert _wrap("SHA-256 0123456789abcdef0123", len, 10) == ["SHA-256", "0123456789", "abcdef0123"]
    rgb = np.full((64, 64, 3), 7, np.uint8)
    lines = ["Triage aid only - not a diagnosis.", "Model m v1, SHA-256 0123456789ab"]
    out = with_footer(rgb, lines)
    assert out.shape[1] == 64 and out.shape[0] > 64 + 4 * 11  # several wrapped lines of text
    assert np.array_equal(out[:64], rgb)
    footer = out[64:]
    assert (footer < 128).any()  # text drawn
    assert (footer[:, -3:] == 255).all()  # nothing drawn past the right margin
    grey = with_footer(np.full((64, 64), 9, np.uint8), lines)  # a grey image gets one too
    assert grey.shape == out.shape and np.array_equal(grey[:64, :, 0], np.full((64, 64), 9))
