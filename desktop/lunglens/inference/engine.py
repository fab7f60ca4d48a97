"""One cached onnxruntime session per model, tuned for small CPU-only laptops.

Creating an ``InferenceSession`` costs far more than running a small model, and each one holds its
own memory arena, so the app keeps exactly one per model (:func:`get_engine`) for its lifetime.
Callers ask only for the outputs they need: batch scoring wants ``probs`` alone, which lets
onnxruntime skip fetching the CAM and activation tensors.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import onnxruntime as ort

from lunglens.errors import ModelRefused
from lunglens.models.registry import ModelInfo, read_verified

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


def _session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    env = os.environ.get(THREADS_ENV)
    opts.intra_op_num_threads = int(threads or (int(env) if env else physical_cores()))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    return opts


class Engine:
    """A verified model with its onnxruntime session.

    Prefer :func:`get_engine`, which caches one engine per model. ``Engine.predict`` is safe to
    call from several threads (onnxruntime sessions are thread-safe for ``run``).

    Parameters
    ----------
    info
        The model; its ONNX file is hashed before loading and refused on mismatch.
    threads
        Intra-op threads; default ``$LUNGLENS_THREADS`` or the number of physical cores.
    """

    def __init__(self, info: ModelInfo, *, threads: int | None = None) -> None:
        self.info = info
        data = read_verified(info)  # the session is built from the bytes that were hashed
        try:
            self.session = ort.InferenceSession(
                data, sess_options=_session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
            raise ModelRefused(info.onnx_path, f"onnxruntime cannot load the model ({exc})",
                               "Reinstall the model folder.") from exc
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        if "probs" not in self.output_names:
            raise ModelRefused(info.onnx_path, "model has no 'probs' output (contract)")

    def predict(
        self, batch: np.ndarray, outputs: Sequence[str] = ("probs",)
    ) -> dict[str, np.ndarray]:
        """Run the model on a ``[N, 1, H, W]`` float32 batch in [0, 1].

        Parameters
        ----------
        batch
            Model input as produced by :func:`lunglens.preprocess.to_model_input`.
        outputs
            Output names to compute (``"probs"``, ``"cam"``, ``"act_<k>"``); only these are
            fetched.

        Returns
        -------
        dict
            Output name -> array with leading dimension ``N``.
        """
        unknown = [o for o in outputs if o not in self.output_names]
        if unknown:
            raise KeyError(f"model {self.info.name} has no output(s) {unknown}; "
                           f"available: {list(self.output_names)}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"expected a [N, 1, H, W] batch, got {batch.shape}")
        values = self.session.run(list(outputs), {self.input_name: batch})
        return {name: np.asarray(v) for name, v in zip(outputs, values, strict=True)}


def batches(n: int, batch_size: int) -> Iterator[slice]:
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
