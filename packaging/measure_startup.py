"""Time from launching the bundled app to its main window being mapped on an X server.

    python packaging/measure_startup.py [--exe packaging/dist/lunglens/lunglens] [--runs 3]

Starts ``Xvfb`` on a free display when ``$DISPLAY`` is unset (``apt-get install xvfb x11-utils``),
launches ``<exe>`` (no arguments = the desktop app), polls ``xwininfo -root -tree`` every 20 ms
until a window named "LungLens" is mapped, then terminates the app. Before the first ("cold")
run the bundle's files are evicted from the page cache (``posix_fadvise(DONTNEED)``), like after a
reboot; later runs are warm. (System libraries outside the bundle stay cached.) Prints one
line per run and a JSON summary on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

DEFAULT_EXE = Path(__file__).resolve().parent / "dist" / "lunglens" / "lunglens"


def window_shown(env: dict[str, str], title: str) -> bool:
    out = subprocess.run(
        ["xwininfo", "-root", "-tree"], env=env, capture_output=True, text=True
    ).stdout
    return any(f'"{title}' in line for line in out.splitlines())


def start_xvfb() -> tuple[subprocess.Popen[bytes], str]:
    for n in range(90, 110):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            proc = subprocess.Popen(
                ["Xvfb", f":{n}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if Path(f"/tmp/.X11-unix/X{n}").exists():
                    return proc, f":{n}"
                time.sleep(0.05)
            proc.kill()
    raise RuntimeError("could not start Xvfb")


def evict(folder: Path) -> int:
    """Drop ``folder``'s files from the page cache (posix_fadvise DONTNEED; no root needed)."""
    n = 0
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += 1
            finally:
                os.close(fd)
    return n


def measure(exe: Path, env: dict[str, str], timeout: float, title: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"{exe} exited with {proc.returncode} before showing a window")
            if window_shown(env, title):
                return time.perf_counter() - t0
            time.sleep(0.02)
        raise TimeoutError(f"no '{title}' window after {timeout} s")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exe", type=Path, default=DEFAULT_EXE)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--title", default="LungLens")
    ap.add_argument(
        "--no-evict",
        action="store_true",
        help="do not evict the bundle from the page cache before the first run",
    )
    args = ap.parse_args()
    if not shutil.which("xwininfo"):
        raise SystemExit("xwininfo not found (apt-get install x11-utils)")
    xvfb = None
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "QT_QPA_PLATFORM")
    }
    if not env.get("DISPLAY"):
        xvfb, env["DISPLAY"] = start_xvfb()
    data = tempfile.mkdtemp(prefix="lunglens-start-")
    env.update(HOME=data, XDG_CONFIG_HOME=data, LUNGLENS_DATA_DIR=data)  # fresh settings
    times: list[float] = []
    try:
        for i in range(args.runs):
            if i == 0 and not args.no_evict and hasattr(os, "posix_fadvise"):
                evict(args.exe.resolve().parent)
            secs = measure(args.exe, env, args.timeout, args.title)
            times.append(secs)
            print(
                f"run {i + 1} ({'cold' if i == 0 else 'warm'}): window after {secs:.2f} s",
                flush=True,
            )
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)
        shutil.rmtree(data, ignore_errors=True)
    print(
        json.dumps(
            {
                "exe": str(args.exe),
                "first_s": round(times[0], 2),
                "warm_median_s": round(sorted(times[1:] or times)[len(times[1:] or times) // 2], 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
