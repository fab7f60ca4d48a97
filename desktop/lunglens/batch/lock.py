"""One run per results file: an exclusive lock on ``<results>.lock`` for the whole run.

Two ``score --resume`` runs on one CSV would both see the same rows as done, score the same scans
and append them twice. The lock is an OS lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows)
on a file next to the CSV: the CSV itself cannot carry it because resuming may replace it
atomically. An OS lock dies with its process, so a run killed with SIGKILL never leaves a stale
lock behind; the file only records who holds it, for the message the second run prints.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from lunglens.errors import LungLensError


class ResultsLocked(LungLensError):
    """Another run (this or another process) is writing the same results file."""


def lock_path(results: Path) -> Path:
    """``results.csv`` -> ``results.csv.lock`` (discovery ignores ``.lock`` files)."""
    return results.with_name(results.name + ".lock")


def _try_lock(fh: IO[bytes]) -> bool:
    if sys.platform == "win32":
        import msvcrt

        fh.seek(0)
        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (
            f"process {info['pid']} on {info['host']}, user {info['user']}, "
            f"started {info['started']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class ResultsLock:
    """Context manager holding the lock of one results file.

    Raises
    ------
    ResultsLocked
        On entry, when another run holds it (the message says who, and what to do).
    """

    def __init__(self, results: str | os.PathLike[str]) -> None:
        self.results = Path(results)
        self.path = lock_path(self.results)
        self._fh: IO[bytes] | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`ResultsLocked` at once (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fh = open(self.path, "a+b")
            if not _try_lock(fh):
                fh.close()
                raise ResultsLocked(
                    self.results,
                    f"the results file is being written by another LungLens run "
                    f"({_holder(self.path)}; lock {self.path.name})",
                    "Wait for that run to finish (or stop it), or choose another --out.",
                )
            # The previous holder may have removed the file between our open and our lock:
            # then we locked an orphan and must retry on the file now at that path.
            try:
                same = os.path.samestat(os.fstat(fh.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": _user(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(sys.argv),
        }
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(record).encode("utf-8", "backslashreplace"))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        """Remove the lock file and release the lock (POSIX; Windows keeps the file)."""
        if self._fh is None:
            return
        if sys.platform != "win32":
            self.path.unlink(missing_ok=True)  # before unlocking: see the retry in acquire()
        self._fh.close()  # closing releases the OS lock
        self._fh = None

    def __enter__(self) -> ResultsLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _user() -> str:
    """The user name from the environment, else the numeric uid.

    Not ``getpass.getuser()``: its fallback asks the name service (``/etc/passwd`` through
    nscd or LDAP), and a batch run makes no name-service requests (``tests/test_offline.py``).
    """
    name = os.environ.get("USER") or os.environ.get("USERNAME") or os.environ.get("LOGNAME")
    if name:
        return name
    getuid = getattr(os, "getuid", None)
    return f"uid {getuid()}" if getuid is not None else "?"
