"""The lung-attention penalty (``lunglens.training.attention``) and the masks it needs.

The penalty is only as good as the alignment of its lung masks with the cached, augmented
views, so most of these tests are about that alignment. Needs the ``train`` extra.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lunglens.training.attention import (  # noqa: E402
    attention_penalty,
    lung_cells,
    outside_share,
    usable_fields,
)
from lunglens.training.augment import AugmentConfig, augment, augment_with_masks  # noqa: E402
from lunglens.training.data import ImageSet  # noqa: E402
from lunglens.training.device import setup_runtime  # noqa: E402
from lunglens.training.models import create_model  # noqa: E402
from lunglens.training.train import TrainConfig, train_run  # noqa: E402

#: geometry only: with the grey-level jitter and the noise off, a mask equal to the image must
#: come out equal to the augmented image
GEOMETRY_ONLY = AugmentConfig(contrast=0.0, brightness=0.0, noise_std=0.0)


def _images(n: int = 6, side: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def test_masks_draw_no_random_numbers() -> None:
    """Augmenting with masks gives bit for bit the images augmenting without them gives, batch
    after batch from one generator: features cached without masks stay aligned."""
    x, m = _images(), (_images(seed=1) > 0.5).float()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        plain = augment(x, AugmentConfig(), g1)
        with_masks, moved = augment_with_masks(x, m, AugmentConfig(), g2)
        assert torch.equal(plain, with_masks)
        assert moved is not None and moved.shape == m.shape


def test_masks_move_with_their_images() -> None:
    x = _images()
    out, moved = augment_with_masks(x, x, GEOMETRY_ONLY, torch.Generator().manual_seed(2))
    assert moved is not None
    assert torch.allclose(out, moved.clamp(0, 1), atol=1e-6)
    assert not torch.allclose(out, x, atol=1e-3)  # the geometry did move them


def _maps_with_evidence(where: torch.Tensor) -> torch.Tensor:
    """Feature maps ``[1, 2, h, w]`` whose class evidence (classifier below) sits at ``where``."""
    maps = torch.zeros(1, 2, *where.shape)
    maps[0, 0] = where.float()
    return maps


WEIGHT = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # feature 0 separates the classes


def test_outside_share_counts_evidence_outside_the_lungs() -> None:
    inside = torch.zeros(1, 4, 4)
    inside[0, :, :2] = 1.0  # left half is lung
    left, right = torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2], right[:, 2:] = True, True
    assert float(outside_share(_maps_with_evidence(left), WEIGHT, inside)) == pytest.approx(0.0)
    assert float(outside_share(_maps_with_evidence(right), WEIGHT, inside)) == pytest.approx(1.0)
    both = torch.ones(4, 4, dtype=torch.bool)
    assert float(outside_share(_maps_with_evidence(both), WEIGHT, inside)) == pytest.approx(0.5)
    # a feature that every class weighs alike moves no decision: it is no evidence
    shared = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 1] = 1.0
    maps[0, 0, :, :2] = 1.0
    assert float(outside_share(maps, WEIGHT + shared, inside)) == pytest.approx(0.0)


def test_the_penalty_pulls_evidence_into_the_lungs() -> None:
    """A few gradient steps on the penalty alone lower the share outside the lungs."""
    inside = torch.zeros(2, 4, 4)
    inside[:, 1:3, 1:3] = 1.0
    maps = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    maps.requires_grad_(True)
    weight = torch.tensor([[1.0, 0.5, -0.2], [-1.0, 0.1, 0.3]])
    cells = inside.numpy().astype(np.float16)
    before = attention_penalty(maps, weight, cells)
    assert before is not None
    before = before.detach()
    opt = torch.optim.SGD([maps], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        pen = attention_penalty(maps, weight, cells)
        assert pen is not None
        pen.backward()
        opt.step()
    after = attention_penalty(maps.detach(), weight, cells)
    assert after is not None and after.item() < before.item() - 0.1


def test_images_without_a_lung_field_are_skipped() -> None:
    maps = torch.rand(2, 2, 4, 4)
    cells = np.zeros((2, 4, 4), np.float16)
    cells[0] = np.nan
    one = attention_penalty(maps, WEIGHT, cells)
    only_second = outside_share(maps[1:], WEIGHT, torch.zeros(1, 4, 4)).mean()
    assert one is not None and float(one) == pytest.approx(float(only_second))
    cells[1] = np.nan
    assert attention_penalty(maps, WEIGHT, cells) is None


def test_usable_fields() -> None:
    fields = np.zeros((3, 10, 10), np.uint8)
    fields[1, :5] = 255  # half the view: lungs located
    fields[2] = 255  # the whole view: says nothing
    assert usable_fields(fields).tolist() == [False, True, False]


def _toy_set(n: int = 5, side: int = 64) -> tuple[ImageSet, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
    fields = np.zeros((n, side, side), np.uint8)
    fields[:, 8:40, 4:30] = 255
    fields[-1] = 0  # no lungs found in the last image
    return ImageSet(images, np.zeros(n, np.int64), [], ["a", "b"]), fields


def test_lung_cells_follow_the_cached_views() -> None:
    """View 0 is the field pooled to the CAM grid; view v > 0 is the field moved exactly as
    the image of view v was (same seed, same batches)."""
    data, fields = _toy_set()
    cfg = TrainConfig(feature_views=3)
    rt = setup_runtime("cpu")
    cells = lung_cells(data, fields, cfg, rt, grid=4)
    assert cells.shape == (3, 5, 4, 4)
    assert np.isnan(cells[:, -1]).all() and np.isfinite(cells[:, :-1]).all()
    pooled = fields[:-1].reshape(4, 4, 16, 4, 16).mean((2, 4)) / 255.0
    np.testing.assert_allclose(cells[0, :-1], pooled, atol=2e-3)
    for v in (1, 2):
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + v)
        x = torch.from_numpy(data.images).float().div(255.0)[:, None]
        m = torch.from_numpy(fields).float().div(255.0)[:, None]
        _, moved = augment_with_masks(x, m, cfg.augment, gen)
        assert moved is not None
        expected = torch.nn.functional.adaptive_avg_pool2d(moved, 4)[:-1, 0].numpy()
        np.testing.assert_allclose(cells[v, :-1], expected, atol=2e-3)
        assert not np.allclose(cells[v, :-1], cells[0, :-1], atol=1e-2)


def test_attention_needs_lung_cells(tmp_path: Path) -> None:
    data, _ = _toy_set()
    cfg = replace(TrainConfig(), lung_attention=1.0)
    with pytest.raises(ValueError, match="lung_attention"):
        train_run(data, np.arange(4), np.arange(4, 5), cfg, setup_runtime("cpu"), tmp_path)


def test_the_cam_maps_of_a_whole_network_are_its_features() -> None:
    """Without frozen features the maps come from a hook on the CAM layer: the same tensor
    ``features`` gives, and the logits of the network's own forward pass."""
    from lunglens.training.train import _logits_and_maps, build_fit

    data, _ = _toy_set(side=32)
    rt = setup_runtime("cpu")
    fit = build_fit(data, np.arange(4), TrainConfig(epochs=1), rt)
    fit.model.eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        logits, maps = _logits_and_maps(fit, x, "squeezenet-light", want_maps=True)
        assert maps is not None
        torch.testing.assert_close(maps, fit.model.features(x))
        torch.testing.assert_close(logits, fit.model(x))
        assert _logits_and_maps(fit, x, "squeezenet-light", want_maps=False)[1] is None


def test_a_student_on_cached_views_learns_to_look_inside_the_lungs(tmp_path: Path) -> None:
    """The penalty works on a whole network trained on cached views (a distilled student):
    the class evidence the trained SqueezeNet-light finds outside the lung cells is a smaller
    share with the penalty than without it, on the same views, seeds and epochs."""
    rng = np.random.default_rng(1)
    n, side = 24, 32
    labels = np.arange(n) % 2
    views = rng.integers(0, 60, (2, n, side, side), dtype=np.uint8)
    # the label is written twice: in the lungs (the left half) and, louder, outside them
    views[:, labels == 1, 8:24, 4:12] += 120
    views[:, labels == 1, 8:24, 22:30] += 190
    views[1] = views[1, :, :, ::-1]  # view 1 is mirrored, and so are its lung cells
    data = ImageSet(views[0].copy(), labels, [], ["a", "b"])
    grid = 8  # squeezenet-light's CAM grid at 32 px
    cells = np.zeros((2, n, grid, grid), np.float16)
    cells[0, ..., : grid // 2] = 1.0
    cells[1, ..., grid // 2 :] = 1.0
    rt = setup_runtime("cpu")
    shares = {}
    for weight in (0.0, 3.0):
        cfg = TrainConfig(epochs=8, batch_size=8, lr=3e-3, lung_attention=weight)
        run = tmp_path / f"w{weight}"
        train_run(
            data,
            np.arange(n),
            np.arange(n),
            cfg,
            rt,
            run,
            log=lambda _m: None,
            views=views,
            lungs=cells if weight else None,
        )
        model = create_model("squeezenet-light", 2)
        model.load_state_dict(torch.load(run / "last.pt", weights_only=False)["model"])
        model.eval()
        share = []
        for v in (0, 1):  # each view against its own cells
            x = torch.from_numpy(views[v].copy()).float().div(255.0)[:, None]
            with torch.no_grad():
                inside = torch.from_numpy(cells[v].astype(np.float32))
                share.append(outside_share(model.features(x), model.classifier.weight, inside))
        shares[weight] = float(torch.cat(share).mean())
    assert shares[3.0] < shares[0.0] - 0.1, shares


def test_attention_refuses_images_augmented_on_the_fly(tmp_path: Path) -> None:
    """Lung cells belong to cached views: with images augmented on the fly they would point
    at the wrong cells, so a run with cells but no cached inputs is refused."""
    data, _ = _toy_set(side=32)
    cells = np.ones((2, 5, 8, 8), np.float16)
    cfg = replace(TrainConfig(epochs=1), lung_attention=1.0)
    with pytest.raises(ValueError, match="cached inputs"):
        train_run(
            data, np.arange(4), np.arange(4, 5), cfg, setup_runtime("cpu"), tmp_path, lungs=cells
        )


def test_lung_fields_are_framed_like_the_training_images(shared_data: Path) -> None:
    """The field is found on the whole image, then cut to the body box the image is cut to."""
    from lunglens.preprocess import CROPS, lung_field
    from lunglens.training.data import load_lung_fields, load_unit_image, read_manifest
    from lunglens.training.presets import BODY_CROP

    records = [
        r
        for r in read_manifest(shared_data / "ct-covid-binary" / "manifest.csv")
        if r.source == "covid-ct-ucsd"
    ][:2]
    fields = load_lung_fields(records, 96, prep=BODY_CROP)
    assert fields.shape == (2, 96, 96) and fields.dtype == np.uint8
    for rec, got in zip(records, fields, strict=True):
        image = load_unit_image(rec.path)
        top, bottom, left, right = CROPS["body"](image)
        whole = lung_field(image)
        inside_box = whole[top:bottom, left:right].mean()
        assert got.mean() / 255.0 == pytest.approx(inside_box, abs=0.03)
        assert 0.1 < inside_box < 0.9  # the lungs are a part of the chest, not all of it
