"""Cached onnxruntime engines (one per model), tuned for small CPU-only laptops.

Creating an ``InferenceSession`` costs far more than running a small model, so the app keeps one
engine per model (:func:`get_engine`) for its lifetime. Callers ask only for the outputs they
need (batch scoring wants ``probs`` alone). onnxruntime itself runs every node of a graph
whatever outputs are fetched (microsoft/onnxruntime#16483), and a graph output pins its tensor in
float, which blocks the QDQ -> QLinearConv fusion behind it; so an engine holds up to three
sessions: the graph pruned to ``probs`` (batch scoring), pruned to ``probs`` + ``cam`` (the
viewer) and the full graph (the activation gallery), pruned with ``onnx.utils.Extractor``.
Measured on the CT SqueezeNet (2 cores, batch 16): ``probs`` from the pruned graph 10-20% faster
than from the full one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from lunglens.errors import ModelRefused
from lunglens.models.registry import ModelInfo, read_verified

if TYPE_CHECKING:
    import onnx

# ``import lunglens`` (run before this module's imports) set ORT_DISABLE_TELEMETRY=1, which is
# what stops onnxruntime's network traffic; the runtime switch is kept as a second guard.
ort.disable_telemetry_events()

#: Environment override for the number of intra-op threads (default: physical cores).
THREADS_ENV = "LUNGLENS_THREADS"


def physical_cores() -> int:
    """Number of physical CPU cores (hyper-threads share an FPU, so they do not help GEMMs).

    Reads ``/proc/cpuinfo`` on Linux (distinct ``physical id``/``core id`` pairs); elsewhere, and
    when that fails, falls back to ``os.cpu_count()``.
    """
    try:
        pairs: set[tuple[str, str]] = set()
        phys = core = ""
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                    pairs.add((phys, core))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return max(1, os.cpu_count() or 1)


def pruned_graph(
    graph: onnx.ModelProto, input_name: str, outputs: Sequence[str]
) -> onnx.ModelProto:
    """``graph`` cut down to the nodes that ``outputs`` need (``onnx.utils.Extractor``).

    onnxruntime runs every node of a graph whatever is fetched, so this is how a caller gets
    only the work it asks for (the engine's sessions; benchmarks that must run what it runs).
    """
    import onnx.utils

    return onnx.utils.Extractor(graph).extract_model([input_name], list(outputs))


#: onnxruntime session option: intra-op threads busy-wait for work after a run.
SPINNING = "session.intra_op.allow_spinning"


def _session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    env = os.environ.get(THREADS_ENV)
    opts.intra_op_num_threads = int(threads or (int(env) if env else physical_cores()))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    # No spin-waiting after a run: one classify call runs three sessions in turn (the gate's
    # modality-check graph, its probs graph, the triage model), and each session's idle pool
    # threads spinning on the 2 cores starved the next one: file -> result took 23-29 ms with
    # spinning and 9.6 ms without (benchmarks/bench_inference.py [1], same machine and run).
    opts.add_session_config_entry(SPINNING, "0")
    return opts


#: onnxruntime graph transformers every LungLens session turns off.
#:
#: ``WeightBiasQuantization`` (a basic-level transformer of onnxruntime, 1.32 here) rewrites,
#: when a session is created, every ``Conv``/``ConvTranspose``/``Gemm`` with float weights whose
#: input comes from a ``DequantizeLinear`` and whose output leads (through Relu/Clip nodes at
#: most) to a ``QuantizeLinear``: it quantizes the weights per tensor, in the full 8 bits, with
#: a zero point from their min and max, so the node runs in INT8. An INT8 file
#: keeps a layer float on purpose (``lunglens.training.quantize``: the recipe's float Convs are
#: those a per-tensor grid hurts, and 8-bit weights can saturate on x86 CPUs without VNNI), so
#: that rewrite silently ran another model than the one measured and described. Measured on
#: the CT Lite0 with one depthwise Conv kept float between INT8 layers (919 validation slices):
#: mean |P(int8) - P(float)| 0.0180 with the transformer off, 0.0271 with it on. The shipped
#: SqueezeNets each hold one such Conv (the float region ends inside a fire module); the
#: EfficientNet-Lite files hold none, so their probabilities do not change.
DISABLED_OPTIMIZERS: tuple[str, ...] = ("WeightBiasQuantization",)


def open_session(
    model: str | bytes | os.PathLike[str],
    threads: int | None = None,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """An onnxruntime CPU session of ``model`` (a path or serialized bytes) as the app opens
    it: its options (:func:`_session_options` for ``threads`` unless ``options`` are given;
    then ``threads`` is not used) and :data:`DISABLED_OPTIMIZERS` off.

    Every tool that scores an INT8 file (quantization search, parity checks, benchmarks) opens
    it through here, so what they measure is what the viewer and batch scoring compute.
    """
    path_or_bytes = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(
        path_or_bytes,
        sess_options=options or _session_options(threads),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


class Engine:
    """A verified model with its onnxruntime sessions.

    Prefer :func:`get_engine`, which caches one engine per model. ``Engine.predict`` is safe to
    call from several threads (onnxruntime sessions are thread-safe for ``run``).

    Parameters
    ----------
    info
        The model; its ONNX file is hashed before loading and refused on mismatch.
    threads
        Intra-op threads; default ``$LUNGLENS_THREADS`` or the number of physical cores.

    Raises
    ------
    ModelRefused
        Hash mismatch, unreadable graph, no image input or no ``probs`` output, or onnxruntime
        cannot load the ``probs`` graph. The viewer's and the gallery's sessions are built on
        their first use and raise the same error there.
    """

    #: The graphs an engine builds, by the outputs they keep (``None``: the full graph). A
    #: request is served by the first graph holding all its outputs: batch scoring asks for
    #: ``probs``, the viewer for ``probs`` + ``cam`` (or ``cam`` alone), the gallery for one
    #: ``act_<k>`` at a time (all layers share the full graph, so browsing them builds nothing).
    GRAPHS: tuple[frozenset[str] | None, ...] = (
        frozenset({"probs"}),
        frozenset({"probs", "cam"}),
        None,
    )

    def __init__(self, info: ModelInfo, *, threads: int | None = None) -> None:
        import onnx  # lazily: only engines need it, and it costs ~0.1 s to import

        self.info = info
        self._threads = threads
        data = read_verified(info)  # hashed before it is parsed
        try:
            self._graph = onnx.load_model_from_string(data)
        except Exception as exc:  # protobuf DecodeError and onnx's own errors
            raise ModelRefused(
                info.onnx_path, f"not a readable ONNX graph ({exc})", "Reinstall the model folder."
            ) from exc
        graph = self._graph.graph
        initializers = {t.name for t in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in initializers]
        if len(inputs) != 1:
            raise ModelRefused(
                info.onnx_path, f"model needs exactly one image input, has {inputs} (contract)"
            )
        self.input_name = inputs[0]
        self.output_names = tuple(o.name for o in graph.output)
        if "probs" not in self.output_names:
            raise ModelRefused(info.onnx_path, "model has no 'probs' output (contract)")
        _check_contract(self._graph, self.input_name, info)
        self._sessions: dict[frozenset[str], ort.InferenceSession] = {}
        self._lock = threading.Lock()
        self.session = self._session(("probs",))  # batch scoring's: fails here, not mid-batch

    def _graph_key(self, outputs: Sequence[str]) -> frozenset[str]:
        wanted = set(outputs)
        for keep in self.GRAPHS:
            if keep is None or wanted <= keep:
                return frozenset(self.output_names if keep is None else keep)
        raise AssertionError("GRAPHS ends with the full graph")  # pragma: no cover

    def _build(self, key: frozenset[str]) -> ort.InferenceSession:
        data = None
        if key != frozenset(self.output_names):
            wanted = [o for o in self.output_names if o in key]  # contract order
            try:
                data = pruned_graph(self._graph, self.input_name, wanted).SerializeToString()
            except Exception:  # pruning only saves time: a graph onnx cannot prune runs whole
                data = None
        if data is None:
            data = self._graph.SerializeToString()
        try:
            return open_session(data, self._threads)
        except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
            raise ModelRefused(
                self.info.onnx_path,
                f"onnxruntime cannot load the model ({exc})",
                "Reinstall the model folder.",
            ) from exc

    def _session(self, outputs: Sequence[str], exact: bool = False) -> ort.InferenceSession:
        """The session for ``outputs`` (built on first use, outside the lock, then cached);
        ``exact``: a graph pruned to exactly these outputs, not the shared one serving them."""
        key = frozenset(outputs) if exact else self._graph_key(outputs)
        with self._lock:
            sess = self._sessions.get(key)
        if sess is None:
            # 40-90 ms: built unlocked so calls served by other sessions do not wait; when two
            # threads race, the first one stored wins and the other is dropped.
            built = self._build(key)
            with self._lock:
                sess = self._sessions.setdefault(key, built)
        return sess

    def predict(
        self, batch: np.ndarray, outputs: Sequence[str] = ("probs",), *, exact: bool = False
    ) -> dict[str, np.ndarray]:
        """Run the model on a ``[N, 1, H, W]`` float32 batch in [0, 1].

        Parameters
        ----------
        batch
            Model input as produced by :func:`lunglens.preprocess.to_model_input`.
        outputs
            Output names to compute (``"probs"``, ``"cam"``, ``"act_<k>"``, at least one):
            ``probs`` and ``cam`` run a graph pruned to them (see ``GRAPHS``).
        exact
            Run a graph pruned to exactly ``outputs`` (one more session, built on first use):
            for a caller that asks for the same early layer on every scan (the chest-image
            gate's CT feature check: stage 4 of the CT model, about half its work), not for
            the gallery, whose layers share the full graph.

        Returns
        -------
        dict
            Output name -> array with leading dimension ``N``.
        """
        if not outputs:
            raise ValueError("ask for at least one output (e.g. 'probs')")
        unknown = [o for o in outputs if o not in self.output_names]
        if unknown:
            raise KeyError(
                f"model {self.info.name} has no output(s) {unknown}; "
                f"available: {list(self.output_names)}"
            )
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"expected a [N, 1, H, W] batch, got {batch.shape}")
        values = self._session(outputs, exact).run(list(outputs), {self.input_name: batch})
        return {name: np.asarray(v) for name, v in zip(outputs, values, strict=True)}


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    """Static dimensions of a graph input/output (``None`` for symbolic ones such as ``N``)."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _check_contract(model: onnx.ModelProto, input_name: str, info: ModelInfo) -> None:
    """Refuse a graph whose input or outputs do not match its manifest.

    A manifest paired with another model's graph (e.g. the CT manifest over the X-ray graph,
    whose hash it was edited to carry) would otherwise fail later with a numpy broadcasting
    error, or worse, score with the wrong labels. Checked: the image input is float
    ``[N, 1, H, W]`` with the manifest's ``input.size``; ``probs`` is ``[N, len(labels)]``;
    ``cam`` (if present) has one map per label; every gallery output exists.
    """
    graph = model.graph
    by_name = {v.name: v for v in [*graph.input, *graph.output]}
    problems = []
    image = by_name[input_name]
    if image.type.tensor_type.elem_type != 1:  # TensorProto.FLOAT
        problems.append(f"input {input_name!r} is not float32")
    want = [None, 1, *info.input_size]
    got = _dims(image)
    clash = any(g is not None and w is not None and g != w for g, w in zip(got, want, strict=False))
    if len(got) != 4 or clash:
        problems.append(f"input {input_name!r} has shape {got}; the manifest says {want}")
    probs = _dims(by_name["probs"])
    if len(probs) != 2 or probs[1] not in (None, len(info.labels)):
        problems.append(f"'probs' has shape {probs}, manifest has {len(info.labels)} labels")
    if "cam" in by_name:
        cam = _dims(by_name["cam"])
        if len(cam) != 4 or cam[1] not in (None, len(info.labels)):
            problems.append(f"'cam' has shape {cam}, manifest has {len(info.labels)} labels")
    outputs = {o.name for o in graph.output}
    missing = [g.output for g in info.gallery if g.output not in outputs]
    if missing:
        problems.append(f"gallery outputs {missing} are not in the graph")
    if problems:
        raise ModelRefused(
            info.onnx_path,
            f"the graph does not match its manifest: {'; '.join(problems)} (contract)",
            "Reinstall the model folder; the manifest and model.onnx belong together.",
        )


#: Slices per onnxruntime call, for every caller that batches model inputs (viewer, CLI and
#: batch scoring): big enough to amortize per-call overhead, small enough that a 128x128 batch
#: stays a few MB and the progress bar moves.
BATCH_SIZE = 16


def batches(n: int, batch_size: int = BATCH_SIZE) -> Iterator[slice]:
    """Slices ``[0:b], [b:2b], ...`` covering ``range(n)`` (the batching helper)."""
    step = max(1, int(batch_size))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


_ENGINES: dict[tuple[str, str], Engine] = {}
_LOCK = threading.Lock()


def get_engine(info: ModelInfo) -> Engine:
    """Return the process-wide engine for ``info``, creating (and verifying) it once.

    The cache key is the ONNX path plus the expected hash, so a reinstalled model with a new
    manifest gets a fresh, re-verified session. The cache holds one entry per model, so it
    cannot grow with the number of scans.
    """
    key = (str(info.onnx_path.resolve()), info.sha256)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = Engine(info)
            _ENGINES[key] = engine
        return engine


def clear_engines() -> None:
    """Drop all cached sessions (tests; freeing memory after switching models)."""
    with _LOCK:
        _ENGINES.clear()
