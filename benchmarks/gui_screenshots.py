"""Screenshots of the real app window on a real X display (not a test: pictures to look at).

Starts the app as a first-time user would (empty settings, so the first-run size logic runs) on
the display in ``$DISPLAY`` (e.g. ``Xvfb :77 -screen 0 1366x768x24``), opens a scan, then scores
a folder in the batch dock in automatic mode, and captures the whole screen after each step
with ImageMagick's ``import -window root``.

Usage::

    DISPLAY=:77 python benchmarks/gui_screenshots.py SCAN FOLDER --out DIR [--other-model NAME]
        [--slice N]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", help="scan opened in the viewer")
    parser.add_argument("folder", help="folder scored in the batch dock")
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    parser.add_argument(
        "--other-model",
        metavar="NAME",
        help="after the first shot, pick this model in the list and shoot the result again "
        "(e.g. a model for the other modality: the refusal banner)",
    )
    parser.add_argument(
        "--slice",
        type=int,
        metavar="N",
        help="after the first shot, go to slice N (1 = the first) and shoot it too (e.g. a "
        "slice left out of a series' score)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from PySide6.QtCore import QEventLoop, QSettings, Qt, QTimer

    from lunglens.gui.app import create_app
    from lunglens.gui.main_window import MainWindow
    from lunglens.gui.settings import Settings

    app = create_app()
    tmp = Path(tempfile.mkdtemp())
    win = MainWindow(Settings(QSettings(str(tmp / "first-run.ini"), QSettings.Format.IniFormat)))
    win.show()

    def wait(signal: object, ms: int = 120_000) -> None:
        loop = QEventLoop()
        signal.connect(loop.quit)  # type: ignore[attr-defined]
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def settle(ms: int = 800) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def shot(name: str) -> None:
        settle()
        path = args.out / f"{name}.png"
        subprocess.run(["import", "-window", "root", str(path)], check=True)
        geo = win.frameGeometry()
        print(f"{path}: window {geo.width()}x{geo.height()} at ({geo.x()}, {geo.y()})")

    win.open_path(args.scan)
    wait(win.resultReady)
    win.cam_controls.show_box.setChecked(True)
    shot("1-viewer-headline")
    if args.slice:
        win.set_slice(args.slice - 1)
        settle(3000)  # its CAM (or the note that it has none) is computed in a worker
        shot(f"1c-viewer-slice-{args.slice}")
        print(f"slice {args.slice}:", win.cam_controls.status_label.text())
        win.set_slice(win.state.result.representative_slice if win.state.result else 0)
    if args.other_model:
        combo = win.classify_panel.model_combo
        combo.setCurrentIndex(combo.findData(args.other_model))
        settle(5000)  # a result, or a refusal (no signal): wait a fixed time
        shot("1b-viewer-other-model")
        print("with", args.other_model + ":", win.classify_panel.prediction_label.text())
        print("banner:", win.classify_panel.refusal())
        combo.setCurrentIndex(0)  # back to automatic for the batch
        wait(win.resultReady)
    win.batch_dock.show()
    panel = win.batch_panel
    panel._csv_auto = False
    panel.csv_edit.setText(str(tmp / "results.csv"))
    panel.set_folder(args.folder)
    panel.start()
    wait(panel.finished)
    # as a user would drag it: more of the ranked table in view
    win.resizeDocks([win.batch_dock], [430], Qt.Orientation.Vertical)
    settle(2000)
    shot("2-batch-ranked")
    panel.table.scrollToBottom()
    shot("3-batch-errors-last")
    print("headline:", win.classify_panel.prediction_label.text())
    win.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
