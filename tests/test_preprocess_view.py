"""The body crop + intensity step shared by training and the app (lunglens.preprocess)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lunglens.io import load_scan
from lunglens.preprocess import (
    CROPS,
    IDENTITY,
    Preprocessing,
    body_box,
    lung_box,
    lung_field,
    lung_mask,
    model_input_with_boxes,
    model_view,
    stretch_percentiles,
    to_model_input,
    uncrop_cam,
)

SAMPLES = Path(__file__).resolve().parents[1] / "resources" / "samples"
BODY = Preprocessing("body", "percentile")
LUNGS = Preprocessing("lungs", "percentile")


def _synthetic_slice(size: int = 200, fov: bool = True) -> np.ndarray:
    """A round field of view (black corners), grey air, a bright body ring, two dark lungs."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = size / 2
    img = np.zeros((size, size), np.float32)
    if fov:
        img[(yy - c) ** 2 + (xx - c) ** 2 < (0.49 * size) ** 2] = 0.25  # air inside the FOV
    body = ((yy - c) / (0.35 * size)) ** 2 + ((xx - c) / (0.45 * size)) ** 2 < 1
    img[body] = 0.9
    for dx in (-0.19, 0.19):
        lung = ((yy - c) / (0.25 * size)) ** 2 + ((xx - c - dx * size) / (0.15 * size)) ** 2 < 1
        img[lung] = 0.36
    return img


def test_body_box_crops_the_field_of_view_to_the_body() -> None:
    img = _synthetic_slice()
    t, b, left, r = body_box(img)
    # the body spans rows 30..170 and columns 10..190; the margin is 4 % of that
    assert 20 <= t <= 30 and 170 <= b <= 180
    assert 0 <= left <= 10 and 190 <= r <= 200
    lungs = lung_mask(img)
    assert lungs[t:b, left:r].sum() == lungs.sum() > 0  # nothing of the lungs is cut off


def test_lung_mask_finds_the_dark_fields_inside_the_body() -> None:
    img = _synthetic_slice()
    lungs = lung_mask(img)
    truth = np.isclose(img, 0.36)
    overlap = (lungs & truth).sum() / truth.sum()
    assert overlap > 0.9 and (lungs & ~truth).sum() < 0.1 * truth.sum()


def test_masked_image_keeps_its_content() -> None:
    """Lungs on black (a masked source): the crop is the non-black content, not a vessel."""
    img = np.zeros((200, 200), np.float32)
    img[60:140, 30:90] = 0.4
    img[60:140, 110:170] = 0.4
    img[95:100, 60:65] = 0.95  # a bright vessel must not become the "body"
    t, b, left, r = body_box(img)
    assert t <= 60 and b >= 140 and left <= 30 and r >= 170


@pytest.mark.parametrize("img", [np.zeros((64, 64), np.float32), np.ones((4, 4), np.float32)])
def test_blank_or_tiny_images_are_not_cropped(img: np.ndarray) -> None:
    assert body_box(img) == (0, img.shape[0], 0, img.shape[1])


def test_stretch_maps_percentiles_and_keeps_order() -> None:
    rng = np.random.default_rng(0)
    img = rng.uniform(0.3, 0.6, (100, 100)).astype(np.float32)
    out = stretch_percentiles(img)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.percentile(out, 50) == pytest.approx(0.5, abs=0.05)
    flat = np.argsort(img.ravel())
    assert np.all(np.diff(out.ravel()[flat]) >= 0)  # monotonic: densities keep their order


def test_identity_is_the_plain_resize() -> None:
    img = _synthetic_slice()
    batch, boxes = model_input_with_boxes(img, (32, 32), IDENTITY)
    assert boxes == [(0, 200, 0, 200)]
    assert np.array_equal(batch, to_model_input(img, (32, 32)))


def test_real_ct_sample_is_cropped_and_stretched() -> None:
    scan = load_scan(SAMPLES / "ct-covid-mosmed-0001.jpg")
    image = scan.image[0]
    view, box = model_view(image, BODY)
    assert view.shape == (box[1] - box[0], box[3] - box[2])
    assert view.size < image.size  # the round field of view's corners are gone
    assert view.min() == 0.0 and view.max() == 1.0
    lungs = lung_mask(image)
    inside = lungs[box[0] : box[1], box[2] : box[3]].sum()
    assert lungs.sum() > 0.05 * lungs.size and inside == lungs.sum()


def test_uncrop_cam_places_the_map_in_the_box() -> None:
    raw = np.ones((2, 7, 7), np.float32)
    out = uncrop_cam(raw, (50, 150, 100, 300), (200, 400), side=100)
    assert out.shape == (2, 50, 100)
    assert out[:, 12:38, 25:75].min() == 1.0  # the box, scaled by 1/4
    assert out[:, :12].max() == 0.0 and out[:, :, :25].max() == 0.0 and out[:, :, 75:].max() == 0
    same = uncrop_cam(raw, (0, 200, 0, 400), (200, 400))
    assert same is raw  # no crop: the graph's own grid


def test_unknown_preprocessing_is_refused() -> None:
    assert Preprocessing.from_manifest(None) == IDENTITY
    assert Preprocessing.from_manifest(BODY.to_manifest()) == BODY
    with pytest.raises(ValueError, match="unknown preprocessing"):
        Preprocessing.from_manifest({"crop": "lungs-only"})


def test_lung_box_frames_both_lungs_and_cuts_the_chest_wall() -> None:
    img = _synthetic_slice()
    t, b, left, r = lung_box(img)
    # lungs span rows 50..150, columns 32..168; the margin is 6 % of that
    assert 40 <= t <= 50 and 150 <= b <= 160
    assert 20 <= left <= 32 and 168 <= r <= 180
    body = body_box(img)
    assert (b - t) * (r - left) < 0.75 * (body[1] - body[0]) * (body[3] - body[2])


def test_lung_box_falls_back_to_the_body_when_one_lung_is_missing() -> None:
    """A mask that found one lung would crop the other away: the body's box is used."""
    img = _synthetic_slice()
    yy, xx = np.mgrid[:200, :200]
    right_lung = ((yy - 100) / 50.0) ** 2 + ((xx - 138) / 30.0) ** 2 < 1
    img[right_lung] = 0.9  # filled with tissue density: only the left lung is dark
    assert lung_box(img) == body_box(img)


def test_lung_field_includes_a_dense_lesion_that_the_dark_mask_leaves_out() -> None:
    img = _synthetic_slice()
    lung = np.isclose(img, 0.36)
    yy, xx = np.mgrid[:200, :200]
    # subpleural consolidation, against the lateral chest wall of the left lung (x 32..92)
    lesion = (((yy - 105) ** 2 + (xx - 34) ** 2) < 7**2) & lung
    img[lesion] = 0.9
    dark, field = lung_mask(img), lung_field(img)
    assert dark[lesion].mean() < 0.2  # the dark-field mask has a hole there
    assert field[lesion].mean() > 0.9
    assert (field & ~dark).sum() < 0.15 * dark.sum()  # and adds little else


@pytest.mark.parametrize("name", sorted(CROPS))
def test_every_crop_keeps_the_lungs_of_real_samples(name: str) -> None:
    image = load_scan(SAMPLES / "ct-covid-mosmed-0001.jpg").image[0]
    view, box = model_view(image, Preprocessing(name, "percentile"))
    assert view.shape == (box[1] - box[0], box[3] - box[2])
    lungs = lung_mask(image)
    assert lungs[box[0] : box[1], box[2] : box[3]].sum() == lungs.sum() > 0


def test_lung_crop_is_a_manifest_choice() -> None:
    assert Preprocessing.from_manifest(LUNGS.to_manifest()) == LUNGS
