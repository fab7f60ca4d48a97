"""Moving a training run to a lent GPU machine and back (``lunglens.training.transport``).

The image tests need numpy and OpenCV; the run tests torch; the round trip (train-only stages
"there", the rest here) also needs ../shared/data and runs with ``-m slow``.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lunglens.training import transport

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _cache(path: Path, n: int = 6, size: int = 64) -> dict:
    """A pipeline image cache of smooth images (what a body-cropped CT slice looks like to a
    codec: gradients and edges, not noise)."""
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.stack(
        [((np.sin(xx / (3 + i)) + np.cos(yy / 5)) * 60 + 128).astype(np.uint8) for i in range(n)]
    )
    z = dict(
        images=images,
        labels=np.arange(n) % 2,
        classes=np.array(["covid", "non-covid"]),
        keep=np.arange(n) * 3,
    )
    np.savez(path, **z)
    return z


def test_images_round_trip_within_codec_error(tmp_path: Path) -> None:
    src = tmp_path / "images_64_body_percentile.npz"
    z = _cache(src)
    facts = transport.pack_images(src, tmp_path / "pack.npz", quality=85)
    assert facts["images"] == 6 and facts["packed_bytes"] < facts["raw_bytes"]
    out = transport.unpack_images(tmp_path / "pack.npz", tmp_path / "there")
    assert out.name == src.name, "the pipeline finds its cache by this name"
    back = np.load(out)
    assert back["images"].shape == z["images"].shape and back["images"].dtype == np.uint8
    err = np.abs(back["images"].astype(int) - z["images"].astype(int)).mean()
    assert err == pytest.approx(facts["mean_abs_error"], abs=1e-6)
    assert err < 4.0
    for key in ("labels", "classes", "keep"):
        np.testing.assert_array_equal(back[key], z[key])
    assert transport.describe(out) is not None and "WebP quality-85" in transport.describe(out)
    assert transport.describe(src) is None, "a cache decoded from the data set is no copy"


def _fake_run(work: Path) -> None:
    torch = pytest.importorskip("torch")
    work.mkdir(parents=True)
    model = torch.nn.Linear(4, 2)
    for run in ("final", "fold0", "fold1"):
        (work / run).mkdir()
        torch.save({"model": model.state_dict(), "epoch": 1}, work / run / "best.pt")
        torch.save({"opt": "big"}, work / run / "last.pt")
        (work / run / "done.json").write_text(json.dumps({"best_epoch": 1}))
    for k in (0, 1):
        np.savez(work / f"fold{k}_test.npz", probs=np.zeros((2, 2)), idx=np.arange(2))
    state = {"final": {}, "cv": {"fold0": {"threshold": 0.5}, "fold1": {"threshold": 0.4}}}
    (work / "state.json").write_text(json.dumps(state))
    np.savez(work / "images_64.npz", images=np.zeros((2, 8, 8), np.uint8))


def _members(tars: list[Path]) -> dict[str, bytes]:
    out = {}
    for t in tars:
        with tarfile.open(t) as tar:
            for m in tar.getmembers():
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


def test_pack_run_keeps_results_and_halves_fold_checkpoints(tmp_path: Path) -> None:
    _fake_run(tmp_path / "w")
    members = _members(transport.pack_run(tmp_path / "w", tmp_path / "out", prefix="m"))
    assert "state.json" in members and "fold1_test.npz" in members
    assert not any("last.pt" in n or "images_" in n for n in members), "resume state stays"

    import torch

    def dtype(name: str) -> torch.dtype:
        ck = torch.load(io.BytesIO(members[name]), weights_only=False)
        return ck["model"]["weight"].dtype

    assert dtype("final/best.pt") == torch.float32, "the exported model travels exactly"
    assert dtype("fold0/best.pt") == torch.float16


def test_pack_run_splits_under_the_return_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_run(tmp_path / "w")
    packed = _members(transport.pack_run(tmp_path / "w", tmp_path / "a"))
    size = max(len(d) for d in packed.values())
    monkeypatch.setattr(transport, "MAX_RETURN_BYTES", size + 100)
    tars = transport.pack_run(tmp_path / "w", tmp_path / "b")
    assert len(tars) > 1
    assert all(t.stat().st_size <= size + 100 + 10 * 1024 * 4 for t in tars)
    monkeypatch.setattr(transport, "MAX_RETURN_BYTES", 10)
    with pytest.raises(ValueError, match="over"):
        transport.pack_run(tmp_path / "w", tmp_path / "c")


def test_unpack_run_sets_the_cv_up_to_predict_again(tmp_path: Path) -> None:
    _fake_run(tmp_path / "w")
    tars = transport.pack_run(tmp_path / "w", tmp_path / "out")
    state = transport.unpack_run(tmp_path / "here", tars)
    assert "cv" not in state and set(state["cv_gpu"]) == {"fold0", "fold1"}
    assert not list((tmp_path / "here").glob("fold*_test.npz"))
    assert (tmp_path / "here" / "fold0_test.gpu.npz").exists()
    assert (tmp_path / "here" / "fold1" / "done.json").exists()
    assert state["unfinished"] == []
    assert "cv_gpu" in json.loads((tmp_path / "here" / "state.json").read_text())


def test_unpack_run_names_runs_cut_off_on_the_gpu(tmp_path: Path) -> None:
    _fake_run(tmp_path / "w")
    (tmp_path / "w" / "fold1" / "done.json").unlink()  # killed by the time limit there
    state = transport.unpack_run(
        tmp_path / "here", transport.pack_run(tmp_path / "w", tmp_path / "o")
    )
    assert state["unfinished"] == ["fold1"]


@pytest.mark.parametrize("name", ["../escape.txt", "/tmp/escape.txt", "link"])
def test_unpack_run_refuses_members_outside_the_workdir(tmp_path: Path, name: str) -> None:
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo(name)
        if name == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ValueError, match="unexpected member"):
        transport.unpack_run(tmp_path / "here", [bad])
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "here" / "link").exists()


def test_a_run_trained_elsewhere_is_finished_with_its_own_size_and_epochs(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from lunglens.training.pipeline import Pipeline, PipelineOptions
    from lunglens.training.presets import PRESETS

    preset = PRESETS["ct-squeezenet-scratch"]
    work = tmp_path / "w"
    (work / "final").mkdir(parents=True)
    trained = dict(device="a GPU", epochs=3, size=40, images=None)
    (work / "state.json").write_text(json.dumps({"trained_on": trained}))

    def pipe(**kw: object) -> Pipeline:
        opts = PipelineOptions(tmp_path, tmp_path / "m", work, device="cpu", **kw)  # type: ignore[arg-type]
        return Pipeline(preset, opts, log=lambda m: None)

    # until the final model is done, the preset's own CPU recipe holds
    p = pipe()
    assert (p.size, p.cfg.epochs) == (preset.size_cpu, preset.epochs_cpu)
    (work / "final" / "done.json").write_text("{}")
    p = pipe()
    assert (p.size, p.cfg.epochs) == (40, 3)
    assert pipe(size=40, epochs=3).size == 40
    with pytest.raises(ValueError, match="trained with size 40"):
        pipe(size=48)
    with pytest.raises(ValueError, match="trained with epochs 3"):
        pipe(epochs=1)
    # a repeat with another seed never finishes (or reuses the caches of) a seed-0 run
    with pytest.raises(ValueError, match="trained with seed 0, not 2"):
        pipe(seed=2)
    fresh = tmp_path / "w2"
    p2 = Pipeline(preset, PipelineOptions(tmp_path, tmp_path / "m", fresh, seed=2), lambda m: None)
    assert p2.cfg.seed == 2 and p2._seed_tag() == "_s2" and p._seed_tag() == ""


def test_seed_repeats_go_to_their_own_folders() -> None:
    from lunglens.training.cli import default_models_dir
    from lunglens.training.presets import PRESETS

    shipped = PRESETS["cxr-efficientnet-lite"]
    assert default_models_dir(shipped).name == "models"
    assert default_models_dir(shipped, 3).parts[-3:] == ("runs", "candidate-models", "seed3")


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.skipif(not (DATA / "ct-covid-binary").is_dir(), reason="../shared/data missing")
def test_train_there_finish_here(tmp_path: Path) -> None:
    """``--stages train`` trains and predicts the folds only; after the transport the full run
    here skips training, predicts every fold again and writes the model folder."""
    pytest.importorskip("onnx")
    from lunglens.training.cli import main

    common = ["ct-squeezenet-scratch", "--limit", "40", "--size", "48", "--epochs", "1"]
    common += ["--calib-images", "16", "--device", "cpu", "--calibration", "MinMax"]
    there, here = tmp_path / "there", tmp_path / "here"
    rc = main([*common, "--workdir", str(there), "--models-dir", str(tmp_path / "m0")])
    assert rc == 0  # a full run first: the reference fold predictions
    ref = {k: np.load(there / f"fold{k}_test.npz")["probs"] for k in range(5)}
    # the same training, train-only, in a fresh directory (what the GPU machine runs), on a
    # lossless copy of the cache that went through the transport (quality 101: WebP lossless)
    gpu = tmp_path / "gpu"
    (cache,) = there.glob("images_*.npz")
    transport.pack_images(cache, tmp_path / "pack.npz", quality=101)
    transport.unpack_images(tmp_path / "pack.npz", gpu)
    assert main([*common, "--workdir", str(gpu), "--stages", "train"]) == 0
    state = json.loads((gpu / "state.json").read_text())
    assert len(state["cv"]) == 5 and "quantization" not in state
    assert state["trained_on"]["epochs"] == 1 and state["trained_on"]["size"] == 48
    assert "WebP quality-101 copy" in state["trained_on"]["images"]
    assert not (gpu / "model_fp32.onnx").exists(), "no export on the GPU machine"
    tars = transport.pack_run(gpu, tmp_path / "out")
    here.mkdir()
    for cache in there.glob("images_*.npz"):
        (here / cache.name).write_bytes(cache.read_bytes())
    transport.unpack_run(here, tars)
    # as if "there" were a GPU: the card must say where the model was trained, not here
    moved = json.loads((here / "state.json").read_text())
    moved["trained_on"]["device"] = "a lent GPU"
    (here / "state.json").write_text(json.dumps(moved))
    final_done = (here / "final" / "done.json").read_text()
    # no --size/--epochs here: the run is finished with the size and epochs that trained it
    rest = ["--calib-images", "16", "--device", "cpu", "--calibration", "MinMax"]
    rc = main(
        [
            "ct-squeezenet-scratch",
            *rest,
            "--workdir",
            str(here),
            "--models-dir",
            str(tmp_path / "m1"),
        ]
    )
    assert rc == 0
    assert (here / "final" / "done.json").read_text() == final_done, "not trained again"
    state = json.loads((here / "state.json").read_text())
    assert len(state["cv"]) == 5 and len(state["cv_gpu"]) == 5
    for k in range(5):
        # fold checkpoints came back in float16: the predictions here match the float32 ones
        got = np.load(here / f"fold{k}_test.npz")["probs"]
        np.testing.assert_allclose(got, ref[k], atol=5e-3)
    manifest = json.loads(
        (tmp_path / "m1" / "squeezenet-light-ct-scratch" / "manifest.json").read_text()
    )
    assert manifest["input"]["size"] == [48, 48]
    assert manifest["training"]["epochs_max"] == 1
    assert manifest["training"]["device"] == "a lent GPU"
    assert "WebP quality-101 copy" in manifest["training"]["trained_on_images"]
    assert "predicted again" in manifest["training"]["cv_predicted"]
    card = (tmp_path / "m1" / "squeezenet-light-ct-scratch" / "MODEL_CARD.md").read_text()
    assert "Device: a lent GPU" in card and "Trained on a WebP quality-101 copy" in card


@pytest.mark.parametrize("preset", ["ood", "modality-check"])
def test_train_stages_are_for_triage_presets_only(preset: str) -> None:
    pytest.importorskip("torch")
    from lunglens.training.cli import main

    with pytest.raises(SystemExit) as exc:
        main([preset, "--stages", "train"])
    assert exc.value.code == 2


@pytest.mark.parametrize("preset", ["ct-squeezenet-scratch", "ct-squeezenet-views-long", "ood"])
def test_teacher_stage_refuses_presets_that_keep_nothing(
    preset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    from lunglens.training.cli import main

    with pytest.raises(SystemExit) as exc:
        main([preset, "--stages", "teacher"])
    assert exc.value.code == 2
    why = "for the triage presets only" if preset == "ood" else f"({preset} needs neither)"
    assert why in capsys.readouterr().err


def test_a_student_repeated_with_another_seed_learns_from_the_seed0_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``views_from`` presets: the teacher's run is the shipped one (seed 0), whatever the
    student's ``--seed``; its work folder's seed check must not refuse it."""
    pytest.importorskip("torch")
    from types import SimpleNamespace

    from lunglens.training.pipeline import Pipeline, PipelineOptions
    from lunglens.training.presets import PRESETS

    student = next(p for p in PRESETS.values() if p.views_from is not None)
    stub = SimpleNamespace(records=[])
    monkeypatch.setattr(Pipeline, "data", lambda self: stub)
    monkeypatch.setenv("LUNGLENS_RUNS", str(tmp_path / "runs"))
    opts = PipelineOptions(tmp_path, tmp_path / "m", tmp_path / "w", device="cpu", seed=3)
    pipe = Pipeline(student, opts, log=lambda m: None)
    teacher, _ = pipe.teacher_pipeline(stub)  # type: ignore[arg-type]
    assert pipe.cfg.seed == 3 and teacher.cfg.seed == 0
    assert teacher.work == tmp_path / "runs" / PRESETS[student.views_from].model_name
