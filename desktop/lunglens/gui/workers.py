"""Run slow core calls off the GUI thread and report back through Qt signals.

The GUI never computes: loading a series, classifying, the activation gallery and batch scoring
all run in a :class:`QThreadPool`. The idea follows napari's ``thread_worker``: a plain Python
function (or generator) is wrapped in a :class:`QRunnable` whose signals are emitted from the pool
thread and delivered, queued, on the GUI thread, so slots can touch widgets safely.

Every job gets a :class:`threading.Event` for cooperative cancellation (core functions accept a
``cancel`` event) and a monotonically increasing id, so the window can ignore the late result of a
job the user has already replaced (e.g. a classification of the scan they just closed).
"""

from __future__ import annotations

import itertools
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

_ids = itertools.count(1)


class WorkerSignals(QObject):
    """Signals of one job; the object lives on the GUI thread so emits are queued to it.

    Signals
    -------
    progress(done, total)
        Work done so far (``total == 0`` means "unknown": show a busy bar).
    item(object)
        One item yielded by a generator job (batch events). Not called ``event``, which
        would shadow :meth:`QObject.event` and break event delivery.
    result(object)
        The function's return value.
    error(object)
        The exception raised (``BaseException``); ``str(exc)`` is shown to the user.
    finished()
        Always emitted last, after ``result`` or ``error``.
    """

    progress = Signal(int, int)
    item = Signal(object)
    result = Signal(object)
    error = Signal(object)
    finished = Signal()


class Worker(QRunnable):
    """A job for the thread pool: call ``fn(*args, progress=..., cancel=..., **kwargs)``.

    ``fn`` receives ``progress(done, total)`` and ``cancel`` (a :class:`threading.Event`) only if
    it asks for them (``pass_progress`` / ``pass_cancel``), so core functions with those keyword
    arguments can be passed directly. If ``fn`` returns an iterator (``generator=True``), each
    yielded item is emitted as ``item`` and the loop stops early when ``cancel`` is set.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *args: Any,
        pass_progress: bool = False,
        pass_cancel: bool = False,
        generator: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.setAutoDelete(False)  # Python keeps the reference (see WorkerPool)
        self.id = next(_ids)
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.generator = generator
        self.cancel_event = threading.Event()
        self.signals = WorkerSignals()
        if pass_progress:
            self.kwargs["progress"] = self._progress
        if pass_cancel:
            self.kwargs["cancel"] = self.cancel_event

    def _progress(self, done: int, total: int) -> None:
        self.signals.progress.emit(int(done), int(total))

    def cancel(self) -> None:
        """Ask the job to stop at its next check (core functions poll the event)."""
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self.cancel_event.is_set()

    def run(self) -> None:
        """Executed on a pool thread; never touches widgets, only emits signals."""
        try:
            out = self.fn(*self.args, **self.kwargs)
            if self.generator:
                iterator: Iterator[Any] = iter(out)
                for item in iterator:
                    self.signals.item.emit(item)
                    if self.cancel_event.is_set() and not self.kwargs.get("cancel"):
                        break
                out = None
            self.signals.result.emit(out)
        except BaseException as exc:  # reported to the GUI, never lost in a thread
            exc.__traceback_text__ = traceback.format_exc()  # type: ignore[attr-defined]
            self.signals.error.emit(exc)
        finally:
            self.signals.finished.emit()


class WorkerPool(QObject):
    """Owns running :class:`Worker` objects until they finish (PySide needs the reference).

    One pool per window keeps the job list inspectable (tests wait for :meth:`idle`) and lets
    the window cancel everything on close so Python objects are not torn down under a thread.
    """

    def __init__(self, parent: QObject | None = None, max_threads: int = 2) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        # Two threads: one long job (batch) must not block a short one (gallery, classify).
        self.pool.setMaxThreadCount(max(2, max_threads))
        self._running: dict[int, Worker] = {}

    def start(self, worker: Worker) -> Worker:
        """Queue ``worker``; it is released when its ``finished`` signal arrives."""
        self._running[worker.id] = worker
        worker.signals.finished.connect(lambda wid=worker.id: self._running.pop(wid, None))
        self.pool.start(worker)
        return worker

    def running(self) -> list[Worker]:
        """Jobs queued or running."""
        return list(self._running.values())

    def idle(self) -> bool:
        """True when no job is queued or running."""
        return not self._running

    def cancel_all(self) -> None:
        """Cancel every job (window closing)."""
        for worker in self._running.values():
            worker.cancel()

    def wait(self, msecs: int = 10_000) -> bool:
        """Block until the pool threads are done (only on shutdown)."""
        return bool(self.pool.waitForDone(msecs))
