"""How long can the GUI thread go without processing events while LungLens works?

Opens the viewer, starts a batch over N real CT images and, while it runs, opens the activation
gallery and classifies a scan. A QTimer on the GUI thread fires every 10 ms and records the gap
between consecutive ticks; the largest gap minus the interval is the longest time the window
could not repaint or react to input. Prints the numbers (no pass/fail: timing depends on the
machine; issue #6 asks for no GUI-thread call over 100 ms).

Usage::

    python benchmarks/gui_responsiveness.py [--n 300] [--folder DIR] [--models DIR] [--open FILE]

``--open`` picks the scan classified and shown in the gallery during the batch (default: the
next image of the folder); with a chest X-ray and a models folder whose only X-ray model is
EfficientNet-B5, this measures the window while the B5 gallery is computed.

Runs offscreen unless ``QT_QPA_PLATFORM`` or ``DISPLAY`` is set.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def synthetic_models(root: Path) -> Path:
    """The test suite's synthetic models, when no real model is installed yet."""
    sys.path.insert(0, str(REPO / "tests"))
    from onnx_fixtures import make_models_dir

    return make_models_dir(root / "models")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="images in the batch")
    ap.add_argument("--folder", type=Path, default=DATA / "ct-covid-binary" / "covid")
    ap.add_argument("--models", type=Path, default=None, help="models folder")
    ap.add_argument("--interval-ms", type=int, default=10)
    ap.add_argument("--open", type=Path, default=None, help="scan for the viewer and gallery")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lunglens-resp-"))
    os.environ["LUNGLENS_DATA_DIR"] = str(tmp / "data")
    from lunglens.models import list_models

    models_dir = args.models
    if models_dir is None and not list_models():
        models_dir = synthetic_models(tmp)
        print(f"no installed model: using the synthetic test model in {models_dir}")
    if models_dir is not None:
        os.environ["LUNGLENS_MODELS_DIR"] = str(models_dir)

    from PySide6.QtCore import QElapsedTimer, QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from lunglens.gui.main_window import MainWindow
    from lunglens.gui.settings import Settings

    app = QApplication.instance() or QApplication([])
    files = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    batch = tmp / "batch"
    batch.mkdir()
    for f in files[: args.n]:
        (batch / f.name).symlink_to(f)
    ct_models = [m for m in list_models() if m.modality == "ct"]

    win = MainWindow(Settings(QSettings(str(tmp / "s.ini"), QSettings.Format.IniFormat)))
    win.resize(1400, 900)
    win.show()
    if ct_models:
        win.classify_panel.select_model(ct_models[0].name)
        win.batch_panel.set_models(win.models, ct_models[0].name)

    gaps: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]

    def tick() -> None:
        now = clock.nsecsElapsed()
        gaps.append((now - last[0]) / 1e6)
        last[0] = now

    timer = QTimer()
    timer.setInterval(args.interval_ms)
    timer.timeout.connect(tick)

    def wait(pred, timeout_s: float = 600.0) -> None:  # type: ignore[no-untyped-def]
        end = time.monotonic() + timeout_s
        while not pred() and time.monotonic() < end:
            app.processEvents()
            time.sleep(0.001)

    done = {"batch": False}
    win.batch_panel.finished.connect(lambda _s: done.__setitem__("batch", True))
    win.batch_dock.show()
    win.batch_panel.set_folder(str(batch))
    timer.start()
    t0 = time.perf_counter()
    win.batch_panel.start()
    # while the batch runs: open a scan (auto-classify), then the gallery
    sample = args.open or (files[args.n] if len(files) > args.n else files[0])
    win.open_path(str(sample))
    wait(lambda: win.result is not None, 120)
    win.gallery.show()
    wait(lambda: bool(win.gallery.maps) or not win.gallery.busy(), 120)
    wait(lambda: done["batch"])
    elapsed = time.perf_counter() - t0
    timer.stop()
    s = win.batch_panel.summary
    win.close()

    import numpy as np

    g = np.array(gaps[1:]) - args.interval_ms
    print(
        f"viewer: {sample.name} with {win.result.model if win.result else '?'}; gallery layer "
        f"{win.gallery.layer_combo.currentText()!r}, maps: {len(win.gallery.maps)}"
    )
    print(
        f"batch: {s.done if s else '?'} scans in {elapsed:.1f} s "
        f"({(s.done if s else 0) / elapsed:.1f} scans/s)"
    )
    print(
        f"GUI timer ticks: {len(g)}; extra delay per tick (ms): "
        f"median {np.median(g):.1f}, p99 {np.percentile(g, 99):.1f}, max {g.max():.1f}"
    )
    print(f"ticks delayed > 50 ms: {(g > 50).sum()}, > 100 ms: {(g > 100).sum()}")
    print(f"MAX_GUI_GAP_MS {g.max() + args.interval_ms:.1f}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
