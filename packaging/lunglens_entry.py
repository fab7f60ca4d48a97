"""Entry point of the bundled app (PyInstaller): the ``lunglens`` command, GUI when no arguments.

Kept outside the package so the bundle's start-up order is explicit:

* Windows: onnxruntime is imported **before** PySide6. Qt's wheels ship their own (older)
  ``msvcp140.dll``; when Qt loads first, onnxruntime's ``onnxruntime_pybind11_state.pyd`` binds
  to it and fails with "DLL load failed" or crashes in the first session.
* ``lunglens`` is imported first of all: importing it sets ``ORT_DISABLE_TELEMETRY=1``, which
  onnxruntime only honours when it is set before onnxruntime is imported (no network, ever).
* The windowed Windows executable (``lunglens-gui.exe``) has no console: ``sys.stdout`` and
  ``sys.stderr`` are ``None``, so they are pointed at ``os.devnull`` before the CLI prints.
"""

from __future__ import annotations

import os
import sys

import lunglens  # noqa: F401  (before onnxruntime: turns its telemetry off)


def main() -> int:
    if sys.stdout is None or sys.stderr is None:  # windowed build: no console attached
        devnull = open(os.devnull, "w", encoding="utf-8")  # lives as long as the app
        sys.stdout = sys.stdout or devnull
        sys.stderr = sys.stderr or devnull
    if sys.platform == "win32":
        import onnxruntime  # noqa: F401  (before PySide6, see above)

    from lunglens.cli import main as cli_main

    argv = sys.argv[1:]
    exe = os.path.splitext(os.path.basename(sys.executable))[0].lower()
    if exe == "lunglens-gui":  # the windowed Windows executable always opens the app
        argv = ["gui", *argv]
    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
