"""The pieces of one training run (``lunglens.training.train``): epoch, evaluation, checkpoints.

Needs the ``train`` extra (torch) and ../shared/data; runs in CI with ``-m slow``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.train,
    pytest.mark.skipif(not (DATA / "ct-covid-binary").is_dir(), reason="../shared/data missing"),
]


@pytest.fixture(scope="module")
def small():
    from lunglens.training.data import load_imageset
    from lunglens.training.device import setup_runtime
    from lunglens.training.train import TrainConfig

    ds = load_imageset(DATA / "ct-covid-binary" / "manifest.csv", 32, limit=12)
    cfg = TrainConfig(size=32, epochs=2, batch_size=4)
    idx = np.arange(len(ds.labels))
    return ds, cfg, setup_runtime("cpu"), idx[:8], idx[8:]


def _weights(model) -> list[np.ndarray]:
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def test_one_epoch_is_seeded_and_changes_the_weights(small) -> None:
    from lunglens.training.train import build_fit, train_one_epoch

    ds, cfg, rt, tr, _ = small
    runs = []
    for _ in range(2):
        fit = build_fit(ds, tr, cfg, rt)
        before = _weights(fit.model)
        loss = train_one_epoch(fit, ds, tr, 0, cfg, rt, torch.Generator().manual_seed(0))
        runs.append((loss, before, _weights(fit.model)))
    (loss_a, before, after_a), (loss_b, _, after_b) = runs
    assert math.isfinite(loss_a) and loss_a == loss_b
    assert all(np.array_equal(a, b) for a, b in zip(after_a, after_b, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(before, after_a, strict=True))


def test_source_balance_weights_only_the_training_images(small) -> None:
    """``balance="source"``: per-image weights on the training images (zero elsewhere) that
    the epoch uses: the loss differs from the class-weighted one."""
    from dataclasses import replace

    from lunglens.training.train import build_fit, train_one_epoch

    ds, cfg, rt, tr, _ = small
    balanced = replace(cfg, balance="source")
    fit = build_fit(ds, tr, balanced, rt)
    assert fit.sample_weights is not None
    w = fit.sample_weights.cpu().numpy()
    assert np.all(w[tr] > 0) and np.all(np.delete(w, tr) == 0)
    assert w[tr].mean() == pytest.approx(1.0, rel=1e-5)
    gen = torch.Generator().manual_seed(0)
    loss_balanced = train_one_epoch(fit, ds, tr, 0, balanced, rt, gen)
    plain = build_fit(ds, tr, cfg, rt)
    assert plain.sample_weights is None
    loss_plain = train_one_epoch(plain, ds, tr, 0, cfg, rt, torch.Generator().manual_seed(0))
    assert math.isfinite(loss_balanced) and loss_balanced != loss_plain
    with pytest.raises(ValueError, match="unknown balance"):
        build_fit(ds, tr, replace(cfg, balance="patients"), rt)


def test_evaluate_scores_the_model_probabilities(small) -> None:
    from lunglens.training.metrics import macro_auc
    from lunglens.training.train import build_fit, evaluate, predict_probs

    ds, cfg, rt, tr, va = small
    fit = build_fit(ds, tr, cfg, rt)
    got = evaluate(fit, ds, va, cfg, rt)
    probs = predict_probs(fit.model, ds.images[va], rt)
    y = ds.labels[va]
    assert got["val_acc"] == pytest.approx(float((probs.argmax(1) == y).mean()))
    assert got["val_loss"] == pytest.approx(-np.log(probs[np.arange(len(y)), y]).mean(), rel=1e-5)
    auc = macro_auc(y, probs)
    assert (math.isnan(got["val_auc"]) and math.isnan(auc)) or got["val_auc"] == pytest.approx(auc)


def test_last_checkpoint_resumes_the_run(small, tmp_path: Path) -> None:
    from lunglens.training.train import (
        Progress,
        build_fit,
        resume,
        save_best,
        save_last,
        train_one_epoch,
    )

    ds, cfg, rt, tr, _ = small
    fit = build_fit(ds, tr, cfg, rt)
    train_one_epoch(fit, ds, tr, 0, cfg, rt, torch.Generator().manual_seed(0))
    progress = Progress(best_score=0.75, bad_epochs=1, history=[{"epoch": 0}], elapsed=3.0)
    save_last(fit, progress, 0, tmp_path / "last.pt")
    save_best(fit, ds, cfg, 0, tmp_path)
    again = build_fit(ds, tr, cfg, rt)
    got = resume(again, tmp_path / "last.pt", rt)
    assert got == Progress(1, 0.75, 1, [{"epoch": 0}], 3.0)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(_weights(fit.model), _weights(again.model), strict=True)
    )
    assert again.opt.state_dict()["state"].keys() == fit.opt.state_dict()["state"].keys()
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["classes"] == ds.classes and best["cfg"]["size"] == 32


def test_run_records_history_in_order(small, tmp_path: Path) -> None:
    from lunglens.training.train import train_run

    ds, cfg, rt, tr, va = small
    facts = train_run(ds, tr, va, cfg, rt, tmp_path / "run", log=lambda m: None)
    assert list(facts) == [
        "best_epoch",
        "epochs_run",
        "seconds",
        "best_val_loss",
        "best_val_auc",
        "monitor",
        "history",
        "n_train",
        "n_val",
    ]
    assert list(facts["history"][0]) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_acc",
        "val_auc",
        "score",
        "lr",
        "seconds",
    ]
    assert facts["epochs_run"] == 2 and (facts["n_train"], facts["n_val"]) == (8, 4)
    best = max(facts["history"], key=lambda h: h["score"])
    assert facts["best_epoch"] == best["epoch"] + 1 and facts["best_val_loss"] == best["val_loss"]
    assert (tmp_path / "run" / "done.json").read_text() == json.dumps(facts)


def test_padding_the_last_batch_changes_no_prediction(small) -> None:
    """On a GPU the last, partial batch is padded to the batch size (one batch shape, not one
    per fold); in eval mode the blank rows leave the real rows' probabilities as they are."""
    from lunglens.training.models import create_model
    from lunglens.training.train import predict_probs

    ds, _, rt, _, _ = small
    torch.manual_seed(0)
    model = create_model("squeezenet-light", 2)
    images = ds.images[:7]
    plain = predict_probs(model, images, rt, bs=4, pad=False)
    padded = predict_probs(model, images, rt, bs=4, pad=True)
    assert plain.shape == padded.shape == (7, 2)
    np.testing.assert_allclose(padded, plain, atol=1e-6)


@pytest.mark.parametrize("n", [1, 31, 32, 33, 70])
def test_filled_last_batch_keeps_every_image_and_one_batch_shape(n: int) -> None:
    """On CUDA every training batch has one shape (no cuDNN autotuning per run): the last
    partial batch is filled from the start of the epoch's order, nothing is dropped."""
    from lunglens.training.train import fill_last_batch

    order = np.random.default_rng(n).permutation(n) + 100
    out = fill_last_batch(order, 32)
    np.testing.assert_array_equal(out[:n], order)
    if n > 32 - n % 32 or n % 32 == 0:
        assert len(out) % 32 == 0 and set(out[n:]) <= set(order)
    else:  # fewer images than the batch would need: left as one short batch
        np.testing.assert_array_equal(out, order)


def test_cache_files_are_written_whole_under_a_private_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``save_npy`` leaves the finished file and no temporary one, and its temporary name is
    the process's own (torchrun ranks may build the same cache at once)."""
    import os

    from lunglens.training.pipeline import save_npy

    seen: list[str] = []
    real_save = np.save

    def spy(file, arr):  # type: ignore[no-untyped-def]
        seen.append(Path(file).name)
        real_save(file, arr)

    monkeypatch.setattr(np, "save", spy)
    path = tmp_path / "features_224_k3_v4.npy"
    arr = np.arange(12, dtype=np.float16).reshape(3, 4)
    save_npy(path, arr)
    assert seen == [f"features_224_k3_v4.{os.getpid()}.tmp.npy"]
    np.testing.assert_array_equal(np.load(path), arr)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
