"""Inference engine and scan classification on the synthetic model."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from lunglens import DISCLAIMER
from lunglens.errors import ModalityMismatch, ModelNotFound
from lunglens.inference import (
    Cancelled,
    aggregate,
    classify_scan,
    clear_engines,
    get_engine,
    physical_cores,
)
from lunglens.io.scan import Scan
from lunglens.models import get_model
from onnx_fixtures import blob_image, make_models_dir, rewrite_manifest, textured


@pytest.fixture
def mdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_engines()
    root = make_models_dir(tmp_path / "models")
    monkeypatch.setenv("LUNGLENS_MODELS_DIR", str(root))
    return root


def test_engine_is_cached_and_asks_only_requested_outputs(mdir: Path) -> None:
    info = get_model("synthetic-ct", mdir)
    engine = get_engine(info)
    assert get_engine(info) is engine
    assert engine.session.get_session_options().intra_op_num_threads == physical_cores()
    out = engine.predict(np.full((3, 1, 32, 32), 0.9, np.float32))
    assert list(out) == ["probs"] and out["probs"].shape == (3, 2)
    np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, rtol=1e-5)
    both = engine.predict(np.zeros((1, 1, 32, 32), np.float32), ("probs", "cam"))
    assert both["cam"].shape == (1, 2, 8, 8)
    with pytest.raises(KeyError, match="available"):
        engine.predict(np.zeros((1, 1, 32, 32), np.float32), ("nope",))


def test_engine_runs_only_the_graph_the_requested_outputs_need(mdir: Path) -> None:
    from lunglens.inference import open_session

    info = get_model("synthetic-ct", mdir)
    engine = get_engine(info)
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    full = open_session(info.onnx_path)
    want = full.run(None, {"image": x})
    names = [o.name for o in full.get_outputs()]
    assert len(names) > 2  # the fixture has gallery outputs to prune away
    # batch scoring's graph holds probs alone; the viewer's probs + cam (cam alone too)
    for outputs, graph in (
        (("probs",), {"probs"}),
        (("probs", "cam"), {"probs", "cam"}),
        (("cam", "probs"), {"probs", "cam"}),
        (("cam",), {"probs", "cam"}),
    ):
        got = engine.predict(x, outputs)
        assert {o.name for o in engine._session(outputs).get_outputs()} == graph
        for name in outputs:
            np.testing.assert_allclose(got[name], want[names.index(name)], rtol=1e-6, atol=1e-7)
    probs_only = engine._session(("probs",))
    assert engine._session(("probs",)) is probs_only is engine.session  # cached
    # gallery layers share one full-graph session, whatever layer is browsed
    full_sess = engine._session((names[2],))
    assert {o.name for o in full_sess.get_outputs()} == set(names)
    for name in names[2:]:
        got = engine.predict(x, (name,))
        np.testing.assert_allclose(got[name], want[names.index(name)], rtol=1e-6, atol=1e-7)
        assert engine._session((name,)) is full_sess
    assert engine._session(tuple(names)) is full_sess
    assert len(engine._sessions) == 3  # bounded: probs, probs + cam, full
    with pytest.raises(ValueError, match="at least one output"):
        engine.predict(x, ())


def test_a_graph_onnx_cannot_prune_runs_whole(mdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx.utils

    def broken(*_a, **_k):
        raise ValueError("extractor does not support this graph")

    monkeypatch.setattr(onnx.utils, "Extractor", broken)
    info = get_model("synthetic-ct", mdir)
    from lunglens.inference.engine import Engine

    engine = Engine(info)
    out = engine.predict(np.full((1, 1, 32, 32), 0.9, np.float32))
    assert out["probs"].shape == (1, 2)
    assert {o.name for o in engine.session.get_outputs()} == set(engine.output_names)


def _rewrite_model(folder: Path, data: bytes) -> None:
    """Replace ``model.onnx`` and give the manifest its hash (the engine's checks after it)."""
    import hashlib
    import json

    (folder / "model.onnx").write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    rewrite_manifest(folder, manifest)


def test_model_without_an_image_input_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from lunglens.errors import ModelRefused
    from lunglens.inference.engine import Engine

    root = make_models_dir(tmp_path / "models")
    folder = root / "synthetic-ct"
    model = onnx.load(str(folder / "model.onnx"))
    model.graph.initializer.append(  # the input is fed by an initializer: nothing to feed
        numpy_helper.from_array(np.zeros((1, 1, 32, 32), np.float32), model.graph.input[0].name)
    )
    _rewrite_model(folder, model.SerializeToString())
    with pytest.raises(ModelRefused, match="exactly one image input"):
        Engine(get_model("synthetic-ct", root))


def test_unparsable_model_with_a_matching_hash_is_refused(tmp_path: Path) -> None:
    from lunglens.errors import ModelRefused
    from lunglens.inference.engine import Engine

    root = make_models_dir(tmp_path / "models")
    _rewrite_model(root / "synthetic-ct", b"\x08\x07garbage that is not a protobuf graph\xff" * 10)
    with pytest.raises(ModelRefused, match="not a readable ONNX graph"):
        Engine(get_model("synthetic-ct", root))


def test_single_image_result(mdir: Path) -> None:
    scan = Scan("bright.png", textured(0.9, (1, 50, 40)), modality="ct")
    res = classify_scan(scan)
    assert res.model == "synthetic-ct" and res.n_slices == 1
    assert res.prediction == "covid" and res.flagged and res.positive_prob > 0.9
    assert set(res.probs) == {"covid", "non-covid"}
    assert res.cam is not None and res.cam.shape == (2, 8, 8)
    assert res.disclaimer == DISCLAIMER
    assert res.to_dict()["prediction"] == "covid"


def test_series_top_k_mean_names_suspicious_slices(mdir: Path) -> None:
    values = [0.1] * 20
    for i, v in zip((4, 11, 17), (0.95, 0.9, 0.85), strict=True):
        values[i] = v
    stack = np.stack([textured(v, (32, 32)) for v in values])
    seen: list[tuple[int, int]] = []
    res = classify_scan(
        Scan("series", stack, modality="ct", kind="dicom-series"),
        progress=lambda d, t: seen.append((d, t)),
        batch_size=8,
    )
    assert res.n_slices == 20 and res.slice_probs.shape == (20, 2)
    assert res.top_slices == [4, 11, 17]
    assert res.representative_slice == 4
    expected = res.slice_probs[[4, 11, 17], 0].mean()
    assert res.positive_prob == pytest.approx(expected, rel=1e-6)
    assert res.flagged  # 3 clearly positive slices flag the series; a plain mean would not
    assert res.slice_probs[:, 0].mean() < 0.5
    assert seen == [(8, 20), (16, 20), (20, 20)]


def test_result_carries_what_loading_noticed(mdir: Path) -> None:
    """A series scored without a slice it could not read, or with another series left out,
    says so in the result's notes: every output (classify, JSON, CSV, PDF, app) shows them."""
    notes = ["skipped slice: s3.dcm: cannot decode", "1 other series ignored (loaded the largest)"]
    stack = np.stack([textured(0.3, (32, 32))] * 3)
    res = classify_scan(Scan("series", stack, modality="ct", kind="dicom-series", notes=notes))
    assert res.notes[:2] == notes and res.to_dict()["notes"][:2] == notes


def test_aggregate_keeps_a_distribution() -> None:
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]], np.float32)
    agg = aggregate(p, 0, "top_k_mean", 2)
    np.testing.assert_allclose(agg, [0.75, 0.25], rtol=1e-6)
    np.testing.assert_allclose(aggregate(p, 0, "max"), [0.9, 0.1])
    with pytest.raises(ValueError, match="unknown"):
        aggregate(p, 0, "median")


def test_unknown_modality_needs_a_model(mdir: Path) -> None:
    scan = Scan("plain.png", textured(0.0, (1, 32, 32)))
    with pytest.raises(ModelNotFound, match="--model"):
        classify_scan(scan)
    res = classify_scan(scan, get_model("synthetic-ct"), with_cam=False)
    assert res.cam is None and not res.flagged and res.prediction == "non-covid"


def test_cxr_default_and_the_other_modality_refused(mdir: Path) -> None:
    scan = Scan("cxr.dcm", blob_image()[None], modality="cxr")
    assert classify_scan(scan).model == "synthetic-cxr"
    with pytest.raises(ModalityMismatch, match="the scan is CXR but model synthetic-ct is for CT"):
        classify_scan(scan, get_model("synthetic-ct"))


def test_cam_class_and_cancel(mdir: Path) -> None:
    stack = np.stack([textured(v, (32, 32)) for v in (0.9, 0.1, 0.5)])
    res = classify_scan(Scan("s", stack, modality="ct"), cam_class="non-covid")
    assert res.cam_class == "non-covid" and res.representative_slice == 1
    with pytest.raises(ValueError, match="unknown class"):
        classify_scan(Scan("s", stack, modality="ct"), cam_class="flu")
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        classify_scan(Scan("s", stack, modality="ct"), cancel=ev)


def test_one_batching_constant_for_every_caller() -> None:
    """Viewer/CLI (classify_scan, slice_probabilities) and batch scoring batch model inputs by
    the same engine constant."""
    import inspect

    from lunglens.batch import score
    from lunglens.inference import BATCH_SIZE, batches, slice_probabilities

    for fn in (classify_scan, slice_probabilities, score):
        assert inspect.signature(fn).parameters["batch_size"].default == BATCH_SIZE, fn
    assert [s.stop for s in batches(2 * BATCH_SIZE + 1)] == [
        BATCH_SIZE,
        2 * BATCH_SIZE,
        2 * BATCH_SIZE + 1,
    ]


def _float_conv_between_int8(scale_out: float) -> bytes:
    """input -> Q -> DQ -> Conv (float weights) -> Q -> DQ -> output: a layer an INT8 recipe keeps
    float between quantized tensors. Its weights span three orders of magnitude across output
    channels, so a per-tensor 8-bit grid rounds the small channels' weights to zero."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4, 3, 3)).astype(np.float32) * np.array([1.0, 0.1, 0.01, 0.001])[
        :, None, None, None
    ].astype(np.float32)
    b = np.zeros(4, np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(np.array(1 / 255, np.float32), "s_in"),
        numpy_helper.from_array(np.array(0, np.uint8), "z_in"),
        numpy_helper.from_array(np.array(scale_out, np.float32), "s_out"),
        numpy_helper.from_array(np.array(128, np.uint8), "z_out"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "s_in", "z_in"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["xd"]),
        helper.make_node("Conv", ["xd", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["y", "s_out", "z_out"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s_out", "z_out"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "island",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_sessions_keep_a_float_layer_between_int8_layers_float() -> None:
    """onnxruntime's WeightBiasQuantization would quantize such a Conv's weights per tensor in 8
    bits when the session is created; the app's sessions run it in float, as the quantizer
    wrote it and the manifest says."""
    import onnxruntime as ort

    from lunglens.inference import DISABLED_OPTIMIZERS, open_session

    step = 0.0005  # the output's quantization step: small enough to see the weights' rounding
    data = _float_conv_between_int8(step)
    x = np.random.default_rng(1).random((1, 4, 8, 8), dtype=np.float32)
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(data, plain, providers=["CPUExecutionProvider"])
    want = exact.run(None, {"image": x})[0]  # no graph transformer: the float Conv as written
    got = open_session(data, threads=1).run(None, {"image": x})[0]
    assert "WeightBiasQuantization" in DISABLED_OPTIMIZERS
    np.testing.assert_allclose(got, want, rtol=0, atol=step * 1.01)  # a rounding step at most
    # the fixture does trigger the transformer: onnxruntime's defaults compute another layer
    default = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    moved = np.abs(default.run(None, {"image": x})[0] - want)
    assert moved.max() > 20 * step, "onnxruntime no longer quantizes float Convs at load time"


def test_every_session_is_opened_as_the_app_opens_it() -> None:
    """The quantization search, the parity checks and the benchmarks must score what the app
    computes: only ``engine.open_session`` creates onnxruntime sessions, except the float
    export check (no quantized tensors) and the emulated-CPU child, which is given the app's
    disabled transformers explicitly."""
    root = Path(__file__).resolve().parents[1]
    allowed = {
        "desktop/lunglens/inference/engine.py",  # open_session itself
        "desktop/lunglens/training/export.py",  # float ONNX vs PyTorch
        "benchmarks/int8_portability.py",  # no lunglens import under the emulator
    }
    found = {
        str(p.relative_to(root))
        for folder in ("desktop", "benchmarks")
        for p in (root / folder).rglob("*.py")
        if "InferenceSession(" in p.read_text(encoding="utf-8")
    }
    assert found <= allowed, sorted(found - allowed)
    assert "disabled_optimizers=disabled" in (root / "benchmarks/int8_portability.py").read_text()
