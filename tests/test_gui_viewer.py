"""Desktop viewer (issue #6): open, classify, CAM, gallery, batch, report, errors, settings.

Runs offscreen with the synthetic test model (deterministic, milliseconds per call), real DICOM
files from ``../shared/data`` and tiny generated images. Every test waits on the window's signals
and then checks what the user would see: label texts, table rows, progress values, pixmaps.
"""

from __future__ import annotations

import csv
import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QSettings, Qt
from PySide6.QtGui import QImage

from lunglens import DISCLAIMER
from lunglens.gui.classify_panel import AUTO
from lunglens.gui.main_window import MainWindow
from lunglens.gui.settings import Settings
from lunglens.inference import clear_engines
from onnx_fixtures import make_models_dir, write_modality_check, write_png

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"  # the shipped models

pytestmark = pytest.mark.gui

TIMEOUT = 20_000


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Synthetic models, audit log and settings all under ``tmp_path``."""
    clear_engines()
    models = make_models_dir(tmp_path / "models")
    monkeypatch.setenv("LUNGLENS_MODELS_DIR", str(models))
    monkeypatch.setenv("LUNGLENS_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture
def settings(env: Path) -> Settings:
    return Settings(QSettings(str(env / "lunglens.ini"), QSettings.Format.IniFormat))


@pytest.fixture
def window(qtbot, settings: Settings) -> Iterator[MainWindow]:
    win = MainWindow(settings)
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    yield win
    win.pool.cancel_all()
    win.pool.wait(10_000)


@pytest.fixture
def ct_file(shared_data: Path) -> Path:
    return shared_data / "dicom" / "chest-ct-transfer-syntaxes" / "CTImage.dcm"


@pytest.fixture
def cxr_file(shared_data: Path) -> Path:
    return shared_data / "dicom" / "chest-cr" / "RG1_J2KI.dcm"


@pytest.fixture
def ct_series(shared_data: Path, tmp_path: Path) -> Path:
    """A 5-slice CT series folder made from the real slice (positions 0, 5, ... 20 mm)."""
    import pydicom
    from pydicom.uid import generate_uid

    src = shared_data / "dicom" / "chest-ct-transfer-syntaxes" / "CTImage.dcm"
    folder = tmp_path / "series"
    folder.mkdir()
    uid = generate_uid()
    for i in range(5):
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(5 * i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        arr = ds.pixel_array.copy()
        arr[100:180, 300:380] = arr.max() if i == 3 else arr[100:180, 300:380]  # bright on slice 4
        ds.PixelData = arr.tobytes()
        ds.save_as(folder / f"slice{i:02d}.dcm")
    return folder


def open_and_classify(qtbot, win: MainWindow, path: Path) -> None:
    with qtbot.waitSignal(win.resultReady, timeout=TIMEOUT):
        win.open_path(str(path))


def test_open_ct_classify_and_show_result(qtbot, window: MainWindow, ct_file: Path) -> None:
    open_and_classify(qtbot, window, ct_file)
    scan, result = window.scan, window.result
    assert scan is not None and result is not None
    assert scan.modality == "ct"
    assert window.view.has_image()
    assert not window.view.image_item.pixmap().isNull()
    assert window.view.image_item.pixmap().width() == 512
    panel = window.classify_panel
    assert panel.current_model_name() == "auto"  # "Automatic (by modality)" is the default
    assert panel.model_combo.currentText() == "Automatic (by modality)"
    assert result.model == "synthetic-ct"  # ... and picked the CT model for a CT
    # the headline is the triage decision with its numbers, never a bare class name
    assert panel.prediction_label.text() == result.headline
    assert panel.prediction_label.text().startswith(
        ("Flagged for review - COVID-19", "Not flagged")
    )
    assert f"{result.threshold:.3f}" in panel.threshold_label.text()
    assert window.cam_controls.caveat_label.text() == "Where the model looked, not a lesion outline"
    assert window.cam_controls.caveat_label.isVisibleTo(window)
    assert "synthetic-ct" in panel.model_label.text()
    assert result.model_sha256[:16] in panel.model_label.text()
    assert panel.disclaimer_label.text() == DISCLAIMER
    assert set(panel.bars) == {"covid", "non-covid"}
    assert panel.bars["covid"].value() == round(result.probs["covid"] * 1000)
    assert panel.progress.value() == panel.progress.maximum()
    assert window.tags_panel.value("Modality") == "CT"
    assert window.tags_panel.value("LungLens modality") == "CT"
    assert window.windowTitle().endswith("CTImage.dcm")
    assert window.settings.recent_files()[0] == str(ct_file)
    assert not panel.slices_box.isVisibleTo(window)  # single image: no slice list


def test_pixel_value_window_level_and_zoom(qtbot, window: MainWindow, ct_file: Path) -> None:
    with qtbot.waitSignal(window.scanLoaded, timeout=TIMEOUT):
        window.open_path(str(ct_file))
    assert window.scan is not None and window.scan.raw is not None
    # the combo names the window the slice is shown in (the loader's lung window)
    assert window.display_window is not None
    assert window.window_combo.currentData() == window.display_window.name == "lung"
    window._on_hover(10, 20)
    hu = float(window.scan.raw[0, 20, 10])
    assert window.pixel_label.text() == f"(10, 20)  HU {hu:.0f}"
    before = window.view.image_item.pixmap().toImage()
    window.set_window("bone")
    assert window.display_window is not None and window.display_window.name == "bone"
    assert window.window_label.text() == "W 1800  L 400"
    assert window.view.image_item.pixmap().toImage() != before
    assert window.window_combo.currentData() == "bone"
    window._on_window_drag(20, -10)
    assert window.display_window.name == "custom" and window.display_window.width > 1800
    assert window.window_combo.currentText() == "Window: custom"
    # right-drag on the view emits the same signal
    with qtbot.waitSignal(window.view.windowDragged, timeout=2000):
        vp = window.view.viewport()
        qtbot.mousePress(vp, Qt.MouseButton.RightButton, pos=QPoint(50, 50))
        qtbot.mouseMove(vp, QPoint(70, 40))
    qtbot.mouseRelease(vp, Qt.MouseButton.RightButton, pos=QPoint(70, 40))
    window.view.actual_size()
    assert window.zoom_label.text().endswith("%")
    assert not window.view.fit_mode
    qtbot.keyClick(window, Qt.Key.Key_F)
    assert window.view.fit_mode


def test_series_slices_and_suspicious_list(qtbot, window: MainWindow, ct_series: Path) -> None:
    open_and_classify(qtbot, window, ct_series)
    scan, result = window.scan, window.result
    assert scan is not None and result is not None and scan.n_slices == 5
    assert window.slider.maximum() == 4
    assert result.n_slices == 5
    assert "series of 5 slices" in window.classify_panel.threshold_label.text()
    assert window.classify_panel.prediction_label.text() == window.result.headline
    lst = window.classify_panel.slices_list
    assert lst.count() == len(result.top_slices) == 3
    assert "mm" in lst.item(0).text()
    # the viewer jumps to the most suspicious slice, and its position is shown
    assert window.slice_index == result.representative_slice
    assert "mm" in window.slice_label.text()
    target = result.top_slices[1]
    window.classify_panel._on_slice_item(lst.item(1))
    assert window.slice_index == target and window.slider.value() == target
    qtbot.keyClick(window, Qt.Key.Key_PageDown)
    assert window.slice_index == min(4, target + 1)
    window.set_slice(0)
    qtbot.keyClick(window, Qt.Key.Key_PageUp)
    assert window.slice_index == 0
    assert window.slice_label.text().startswith("Slice 1/5")


def test_cam_toggle_opacity_class_and_export(
    qtbot, window: MainWindow, ct_series: Path, tmp_path: Path
) -> None:
    open_and_classify(qtbot, window, ct_series)
    cam = window.cam_controls
    assert cam.show_box.isEnabled()
    assert not window.view.overlay_item.isVisible()
    with qtbot.waitSignal(window.camReady, timeout=TIMEOUT):
        qtbot.keyClick(window, Qt.Key.Key_C)
    assert cam.is_shown()
    assert window.view.overlay_item.isVisible()
    assert not window.view.overlay_item.pixmap().isNull()
    assert window.view.overlay_item.pixmap().size() == window.view.image_item.pixmap().size()
    cam.opacity.setValue(70)
    assert window.view.overlay_item.opacity() == pytest.approx(0.7)
    assert window.settings.opacity() == pytest.approx(0.7)
    assert not cam.legend.pixmap().isNull()
    covid_heat = window.view.overlay_item.pixmap().toImage()
    cam.class_combo.setCurrentText("non-covid")
    assert (window.slice_index, "non-covid", "jet") in window.heat_cache
    assert window.view.overlay_item.pixmap().toImage() != covid_heat
    # another slice: its CAM is computed in a worker, then shown
    other = next(i for i in range(5) if i != window.slice_index)
    with qtbot.waitSignal(window.camReady, timeout=TIMEOUT):
        window.set_slice(other)
    assert other in window.raw_cams and window.view.overlay_item.isVisible()
    out = window.export_cam_png(str(tmp_path / "cam.png"))
    img = QImage(str(out))
    assert not img.isNull() and img.width() == 512
    qtbot.keyClick(window, Qt.Key.Key_C)
    assert not window.view.overlay_item.isVisible()


def test_cxr_uses_cxr_model_and_gallery(qtbot, window: MainWindow, cxr_file: Path) -> None:
    open_and_classify(qtbot, window, cxr_file)
    assert window.scan is not None and window.scan.modality == "cxr"
    assert window.tags_panel.value("LungLens modality") == "CXR"
    assert window.classify_panel.is_auto() and window.result.model == "synthetic-cxr"
    assert not window.window_combo.isEnabled()  # HU presets are CT only
    assert window.view.image_item.pixmap().width() == 1841
    window._on_hover(5, 5)
    assert "value" in window.pixel_label.text()
    gallery = window.gallery
    assert gallery.layer_combo.count() == 1 and "conv1" in gallery.layer_combo.currentText()
    with qtbot.waitSignal(gallery.computed, timeout=TIMEOUT) as sig:
        gallery.show()
    assert sig.args == [4]  # the synthetic layer has 4 channels; top-16 gives all of them
    assert gallery.grid.count() == 4
    # the maps name their model: with several installed they must be traceable to one
    info = window.state.result_info
    assert f"model {info.name} v{info.version} (SHA-256 {info.sha256[:12]})" in (
        gallery.status.text()
    )
    assert not gallery.grid.item(0).icon().isNull()
    gallery.grid.setCurrentRow(2)
    assert gallery.preview.pixmap() is not None and not gallery.preview.pixmap().isNull()
    assert "channel" in gallery.preview_caption.text()
    # plain words on what a layer map shows, and a readable enlargement
    assert "Early layer" in gallery.explain_label.text() or "Late layer" in (
        gallery.explain_label.text()
    )
    assert gallery.enlarge_button.isEnabled()
    qtbot.mouseClick(gallery.enlarge_button, Qt.MouseButton.LeftButton)
    assert gallery.enlarged.isVisible()
    pix = gallery.enlarged.image.pixmap()
    assert pix.width() >= 400 and pix.height() >= 400  # the 64 px map, shown at 480 px
    assert "Channel" in gallery.enlarged.caption.text()
    assert f"model {info.name} v{info.version}" in gallery.enlarged.caption.text()
    caption, image = gallery.enlarged.caption, gallery.enlarged.image
    qtbot.waitUntil(lambda: caption.height() > 0)
    # the whole caption fits under the map, not over its bottom rows
    assert caption.height() >= caption.heightForWidth(caption.width())
    assert caption.geometry().top() > image.geometry().bottom()
    gallery.enlarged.close()
    # cached per scan: changing N and back does not recompute
    with qtbot.waitSignal(gallery.computed, timeout=TIMEOUT):
        gallery.top_n.setValue(2)
    assert gallery.grid.count() == 2
    qtbot.waitUntil(lambda: not gallery.busy(), timeout=TIMEOUT)
    n_cached = len(gallery.cache)
    with qtbot.waitSignal(gallery.computed, timeout=1000):
        gallery.top_n.setValue(16)
    assert len(gallery.cache) == n_cached and not gallery.busy()


def test_plain_image_and_model_choice(qtbot, window: MainWindow, tmp_path: Path) -> None:
    png = write_png(tmp_path / "bright.png", 0.9, size=40)
    # automatic mode cannot tell a plain image's modality without the modality check: it
    # says so instead of scoring it with the CT model
    with qtbot.waitSignal(window.errorShown, timeout=TIMEOUT) as sig:
        window.open_path(str(png))
    assert "choose a CT or X-ray model" in sig.args[0] and window.result is None
    with qtbot.waitSignal(window.resultReady, timeout=TIMEOUT):
        idx = window.classify_panel.model_combo.findData("synthetic-ct")
        window.classify_panel.model_combo.setCurrentIndex(idx)
    assert window.scan is not None and window.scan.modality == "unknown"
    assert window.result is not None and window.result.flagged
    assert window.classify_panel.prediction_label.text().startswith(
        "Flagged for review - COVID-19 not ruled out (P "
    )
    window._on_hover(3, 4)
    assert "gray" in window.pixel_label.text()
    # switching model re-classifies with the new one
    with qtbot.waitSignal(window.resultReady, timeout=TIMEOUT):
        idx = window.classify_panel.model_combo.findData("synthetic-cxr")
        window.classify_panel.model_combo.setCurrentIndex(idx)
    assert window.result.model == "synthetic-cxr"


def test_plain_image_routed_by_modality_check(
    qtbot, window: MainWindow, env: Path, tmp_path: Path
) -> None:
    """With a modality check installed, a bright plain image "looks like" an X-ray: the X-ray
    model is chosen, the status bar says why, and the result panel shows the check's note."""
    write_modality_check(env / "models" / "synthetic-modality")
    assert [m.name for m in window.models] == ["synthetic-ct", "synthetic-cxr"]  # not offered
    on_load: list[str] = []
    window.scanLoaded.connect(lambda _s: on_load.append(window.statusBar().currentMessage()))
    open_and_classify(qtbot, window, write_png(tmp_path / "bright.png", 1.0, size=40))
    assert window.classify_panel.is_auto()
    assert window.result is not None and window.result.model == "synthetic-cxr"
    assert on_load and "chest X-ray" in on_load[0] and "synthetic-cxr" in on_load[0]
    assert "chest X-ray" in window.classify_panel.notes_label.text()
    assert window.tags_panel.value("LungLens modality").startswith("not in the file")
    assert window.cam.controls.show_box.isEnabled()  # the X-ray model's CAM
    # choosing the CT model for it is refused: a red banner, no numbers
    results: list[object] = []
    window.resultReady.connect(results.append)
    idx = window.classify_panel.model_combo.findData("synthetic-ct")
    window.classify_panel.model_combo.setCurrentIndex(idx)
    qtbot.waitUntil(lambda: bool(window.classify_panel.refusal()), timeout=TIMEOUT)
    assert "Not scored with this model" in window.classify_panel.refusal()
    assert "synthetic-ct is for CT" in window.classify_panel.refusal()
    assert window.classify_panel.prediction_label.text() == "Not scored" and not results
    # the X-ray model's result and its CAM do not stay on screen under the banner
    assert window.result is None and not window.cam.controls.show_box.isEnabled()
    assert window.statusBar().currentMessage().startswith("Not scored: plain image that looks")


def test_errors_are_shown_not_raised(
    qtbot, window: MainWindow, tmp_path: Path, shared_data: Path
) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with qtbot.waitSignal(window.errorShown, timeout=TIMEOUT) as sig:
        window.open_path(str(bad))
    assert "broken.png" in sig.args[0]
    assert window.banner.isVisible() and "broken.png" in window.banner.message()
    assert window.scan is None
    window.banner.dismiss()
    assert not window.banner.isVisible()
    no_pixels = shared_data / "dicom" / "ct-misc" / "no-pixel-data.dcm"
    with qtbot.waitSignal(window.errorShown, timeout=TIMEOUT):
        window.open_path(str(no_pixels))
    assert "no-pixel-data.dcm" in window.banner.message()
    with qtbot.waitSignal(window.errorShown, timeout=TIMEOUT):
        window.open_path(str(tmp_path / "does-not-exist.dcm"))


def test_report_pdf(qtbot, window: MainWindow, ct_file: Path, tmp_path: Path) -> None:
    open_and_classify(qtbot, window, ct_file)
    out = tmp_path / "report.pdf"
    with qtbot.waitSignal(window.reportSaved, timeout=60_000) as sig:
        window.save_report(str(out))
    assert sig.args == [str(out)]
    assert out.read_bytes()[:5] == b"%PDF-"


def _batch_folder(root: Path, n_good: int = 6) -> Path:
    folder = root / "batch"
    for i in range(n_good):
        write_png(folder / f"img{i:02d}.png", 0.9 if i % 2 else 0.1, size=32)
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return folder


def test_batch_with_bad_file_table_and_open(
    qtbot, window: MainWindow, env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Automatic model choice (default), table ranked most suspicious first with errors last,
    triage words per row, report written beside the CSV and opened by a button."""
    write_modality_check(env / "models" / "synthetic-modality")  # routes the plain images
    folder = _batch_folder(env)
    (folder / "notes.txt").write_text("not a scan", encoding="utf-8")
    window.batch_dock.show()
    panel = window.batch_panel
    assert panel.model_combo.currentText() == "Automatic (by modality)"
    panel.set_folder(str(folder))
    assert panel.csv_path().endswith(".csv") and str(env / "data") in panel.csv_path()
    with qtbot.waitSignal(panel.finished, timeout=60_000) as sig:
        assert panel.start()
    summary = sig.args[0]
    assert summary.total == 7 and summary.errors == 1 and summary.ok == 6
    assert panel.row_count() == 7
    assert panel.progress.value() == panel.progress.maximum() == 7
    assert panel.status.text().startswith("Done: 7 of 7 processed, 6 scans scored (")
    assert "1 not scored" in panel.status.text()  # a refused file is not "scored"
    assert "1 file ignored (not scans)" in panel.status.text()  # every file accounted for
    # ranked as it opens: highest P(covid) on top, the error row last
    pcol, tcol = panel.column("p_covid"), panel.column("prediction")
    shown = [panel.proxy.index(r, pcol).data() for r in range(7)]
    assert shown[-1] == "" and [float(p) for p in shown[:-1]] == sorted(
        (float(p) for p in shown[:-1]), reverse=True
    )
    status_col = panel.column("status")
    assert panel.proxy.index(6, status_col).data() == "error"
    assert "bad.png" in panel.proxy.index(6, 0).data()
    top = panel.proxy.index(0, tcol).data()
    assert top.startswith("Flagged for review - COVID-19 not ruled out (P ")
    assert "Prediction" not in [
        panel.model.headerData(c, Qt.Orientation.Horizontal)
        for c in range(panel.model.columnCount())
    ]
    models = {panel.proxy.index(r, panel.column("model")).data() for r in range(6)}
    assert models == {
        "synthetic-ct v0.0.1",
        "synthetic-cxr v0.0.1",
    }  # each by its modality, one file
    # flagged rows highlighted, error row grey
    flagged = [r for r in range(7) if panel.proxy.index(r, tcol).data().startswith("Flagged")]
    assert len(flagged) == 3
    assert all(
        panel.proxy.index(r, 0).data(Qt.ItemDataRole.BackgroundRole).color().name() == "#ffd6d6"
        for r in flagged
    )
    assert panel.proxy.index(6, 0).data(Qt.ItemDataRole.BackgroundRole).color().name() == (
        "#ebebeb"
    )
    # double-click opens the scan in the viewer
    with qtbot.waitSignal(window.scanLoaded, timeout=TIMEOUT):
        panel._on_double_click(panel.proxy.index(0, 0))
    assert window.scan is not None and Path(window.scan.source).parent == folder
    # export CSV
    out = env / "copy.csv"
    panel.export_csv(str(out))
    assert len(list(csv.DictReader(out.open(encoding="utf-8")))) == 7
    # the summary report was written beside the CSV (not to a hidden place) ...
    qtbot.waitUntil(lambda: panel.report_path is not None, timeout=60_000)
    assert panel.report_path == Path(panel.csv_path()).with_suffix(".html")
    assert str(panel.report_path) in panel.report_label.text()
    assert panel.open_report_button.isEnabled()
    # ... is opened by a button ...
    from lunglens.gui import batch_panel as bp

    opened: list[str] = []
    monkeypatch.setattr(bp.QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    qtbot.mouseClick(panel.open_report_button, Qt.MouseButton.LeftButton)
    assert [u.toLocalFile() for u in opened] == [str(panel.report_path)]
    # ... and can be saved where the user chooses
    chosen = env / "elsewhere" / "my-report.html"
    chosen.parent.mkdir()
    panel.make_report(str(chosen))
    qtbot.waitUntil(lambda: panel.report_path == chosen, timeout=60_000)
    assert chosen.read_text("utf-8").startswith("<!DOCTYPE html>")
    # the audit log went to LUNGLENS_DATA_DIR
    assert (env / "data" / "audit.log").exists()


def test_batch_cancel_and_resume(
    qtbot, window: MainWindow, env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_modality_check(env / "models" / "synthetic-modality")  # automatic mode, resumed
    folder = env / "many"
    for i in range(40):
        write_png(folder / f"s{i:03d}.png", (i % 10) / 10, size=32)
    panel = window.batch_panel
    panel.set_folder(str(folder))
    # slow the core decode a little so cancel lands mid-run, deterministically
    import lunglens.batch.runner as runner

    real = runner._decode

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        import time

        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_decode", slow)
    with qtbot.waitSignal(panel.finished, timeout=60_000) as sig:
        panel.start()
        qtbot.waitUntil(
            lambda: panel.last_progress is not None and panel.last_progress.done >= 3,
            timeout=30_000,
        )
        assert panel.cancel_button.isEnabled()
        panel.cancel()
    first = sig.args[0]
    assert first.cancelled and 0 < first.done < 40
    assert "Cancelled" in panel.status.text()
    assert panel.resume_box.isChecked()  # offered for the next start
    assert panel.row_count() == first.done
    monkeypatch.setattr(runner, "_decode", real)
    with qtbot.waitSignal(panel.finished, timeout=60_000) as sig:
        panel.start()
    second = sig.args[0]
    assert not second.cancelled and second.skipped == first.done
    assert second.done == 40 - first.done
    assert panel.row_count() == 40  # previous rows reloaded + new ones
    assert len(set(panel.row_keys())) == 40
    assert panel.progress.value() == panel.progress.maximum()


def test_batch_refuses_missing_folder(qtbot, window: MainWindow, env: Path) -> None:
    panel = window.batch_panel
    panel.set_folder(str(env / "nope"))
    with qtbot.waitSignal(window.errorShown, timeout=2000):
        assert not panel.start()
    assert "existing folder" in window.banner.message()


def test_settings_remembered(qtbot, settings: Settings, ct_file: Path) -> None:
    win = MainWindow(settings)
    qtbot.addWidget(win)
    win.resize(700, 500)
    win.show()
    with qtbot.waitSignal(win.scanLoaded, timeout=TIMEOUT):
        win.open_path(str(ct_file))
    win.cam_controls.opacity.setValue(55)
    win.batch_dock.show()
    qtbot.waitUntil(win.pool.idle, timeout=TIMEOUT)
    win.close()
    again = MainWindow(settings)
    qtbot.addWidget(again)
    assert again.cam_controls.alpha() == pytest.approx(0.55)
    assert again.settings.recent_files() == [str(ct_file)]
    assert again.settings.last_folder() == str(ct_file.parent)
    assert again.batch_panel.folder_edit.text() == str(ct_file.parent)
    assert again.settings.geometry() is not None
    assert again.batch_dock.isVisibleTo(again)  # dock layout restored (window state)
    assert not again.gallery.isVisibleTo(again)
    again._fill_recent_menu()
    assert str(ct_file) in [a.text() for a in again.recent_menu.actions()]


def test_drop_and_app_run_entry_point(
    qtbot, window: MainWindow, ct_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(ct_file))])
    event = QDropEvent(
        QPointF(10, 10),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    with qtbot.waitSignal(window.scanLoaded, timeout=TIMEOUT):
        window.dropEvent(event)
    # run() exists and returns the loop's exit code; exec is stubbed so the test does not block
    from lunglens.gui import app as app_mod

    monkeypatch.setattr(app_mod.QApplication, "exec", lambda self: 0)
    monkeypatch.setattr(app_mod, "Settings", lambda: window.settings)
    assert app_mod.run([]) == 0


def test_slider_shows_the_core_slice(qtbot, window: MainWindow, ct_series: Path) -> None:
    """Scrolling shows the right pixels: the slider displays exactly the core's slice."""
    with qtbot.waitSignal(window.scanLoaded, timeout=TIMEOUT):
        window.open_path(str(ct_series))
    assert window.scan is not None
    window.slider.setValue(3)
    pixmap = window.view.image_item.pixmap()
    shown = pixmap.toImage().convertToFormat(QImage.Format.Format_Grayscale8)
    ptr = shown.constBits()
    arr = np.frombuffer(ptr, np.uint8).reshape(shown.height(), shown.bytesPerLine())[:, :512]
    expected = np.clip(np.rint(window.scan.image[3] * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(arr, expected)


@pytest.fixture(autouse=True)
def _no_leftover_dirs(tmp_path: Path) -> Iterator[None]:
    yield
    shutil.rmtree(tmp_path / "series", ignore_errors=True)


def test_app_icon_from_resources(qtbot) -> None:
    from lunglens.gui.app import app_icon

    icon = app_icon()
    assert not icon.isNull()
    assert not icon.pixmap(64, 64).isNull()


def test_classification_stays_visible_with_gallery_and_batch_docks(
    qtbot, window: MainWindow, ct_file: Path
) -> None:
    """Opening the gallery and the batch dock must not squeeze the result out of view."""
    from lunglens.gui.window_layout import CLASSIFY_MIN_HEIGHT

    open_and_classify(qtbot, window, ct_file)
    window.gallery.show()
    window.batch_dock.show()
    qtbot.waitUntil(lambda: window.batch_dock.isVisible() and window.gallery.isVisible())
    qtbot.wait(50)
    scroll = window.classify_dock.widget()
    assert scroll.height() >= CLASSIFY_MIN_HEIGHT
    assert window.gallery.height() > 0 and window.batch_dock.height() > 0


def test_window_with_every_dock_open_fits_a_laptop_screen(qtbot, window: MainWindow) -> None:
    """1366x768 (minus title bar and taskbar): the docks scroll rather than grow the window
    (it needed 794 px, so the status bar with the triage-aid notice fell off the screen)."""
    from lunglens.gui.window_layout import (
        BATCH_MIN_HEIGHT,
        CLASSIFY_MIN_HEIGHT,
        MAX_WINDOW_MIN_HEIGHT,
    )

    for dock in (window.classify_dock, window.tags_dock, window.gallery, window.batch_dock):
        dock.show()
    qtbot.waitUntil(lambda: window.batch_dock.isVisible() and window.gallery.isVisible())
    assert window.minimumSizeHint().height() <= MAX_WINDOW_MIN_HEIGHT
    assert window.minimumSizeHint().width() <= 1366
    window.resize(1366, MAX_WINDOW_MIN_HEIGHT)
    qtbot.wait(50)
    assert window.height() <= MAX_WINDOW_MIN_HEIGHT  # Qt would enforce a larger minimum
    # and at that height the result and the batch table still get room of their own
    assert window.classify_dock.height() >= CLASSIFY_MIN_HEIGHT
    assert window.batch_dock.widget().height() >= BATCH_MIN_HEIGHT


def test_batch_dock_opens_at_a_modest_height(qtbot, window: MainWindow) -> None:
    """First run: Qt would split the height evenly and leave the scan a strip."""
    from lunglens.gui.window_layout import BATCH_DEFAULT_HEIGHT

    window.resize(1366, 740)
    window.batch_dock.show()
    qtbot.waitUntil(window.batch_dock.isVisible)
    qtbot.wait(50)
    assert abs(window.batch_dock.height() - BATCH_DEFAULT_HEIGHT) <= 30
    assert window.centralWidget().height() > window.batch_dock.height()


def test_first_window_fits_the_screen_and_size_is_remembered(qtbot, settings: Settings) -> None:
    """A 1366x768 laptop (work area 1366x728 under a taskbar) gets a window that fits, frame
    included; the 1400x900 it used to get cut off the right panel. The user's size is kept."""
    from PySide6.QtCore import QRect, QSize

    from lunglens.gui.window_layout import FRAME_MARGIN, first_run_size

    laptop = QRect(0, 0, 1366, 728)
    size = first_run_size(laptop)
    assert size.width() + FRAME_MARGIN.width() <= 1366
    assert size.height() + FRAME_MARGIN.height() <= 728
    assert first_run_size(QRect(0, 0, 2560, 1400)) == QSize(1400, 900)  # big screens: as before
    win = MainWindow(settings)
    qtbot.addWidget(win)
    first = first_run_size(win.screen().availableGeometry())  # offscreen: an 800x600 screen
    assert win.width() == first.width() < 1400
    # the height cannot go under the layout's minimum (the docks scroll from there on)
    assert win.height() <= max(first.height(), win.minimumSizeHint().height())
    win.resize(777, 705)
    win.close()
    again = MainWindow(settings)
    qtbot.addWidget(again)
    assert again.size() == QSize(777, 705)


def test_cam_overlay_low_end_is_transparent(qtbot, window: MainWindow, ct_file: Path) -> None:
    open_and_classify(qtbot, window, ct_file)
    window.cam_controls.show_box.setChecked(True)
    qtbot.waitUntil(window.view.overlay_item.isVisible, timeout=TIMEOUT)
    heat = window.current_heat()
    assert heat is not None and heat.shape[2] == 4
    assert (heat[..., 3] == 0).any() and (heat[..., 3] == 255).any()  # alpha ramps with value
    img = window.view.overlay_item.pixmap().toImage()
    assert img.hasAlphaChannel()


def test_report_anonymize_option(
    qtbot, window: MainWindow, ct_file: Path, tmp_path: Path, settings: Settings
) -> None:
    open_and_classify(qtbot, window, ct_file)
    assert not window.anonymize_action.isChecked()
    window.anonymize_action.setChecked(True)
    assert settings.anonymize_reports()  # remembered
    out = tmp_path / "anon.pdf"
    with qtbot.waitSignal(window.reportSaved, timeout=60_000):
        window.save_report(str(out))
    import shutil
    import subprocess

    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) not installed")
    text = subprocess.run(
        ["pdftotext", str(out), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "MISTER" not in text and "2178309" not in text and "anonymized" in text


def test_non_chest_scan_is_shown_with_a_red_refusal_and_never_scored(
    qtbot, window: MainWindow, ct_file: Path, tmp_path: Path
) -> None:
    import pydicom

    ds = pydicom.dcmread(ct_file)
    ds.BodyPartExamined = "BRAIN"
    brain = tmp_path / "brain.dcm"
    ds.save_as(brain)
    window.open_path(str(brain))
    qtbot.waitUntil(lambda: window.scan is not None, timeout=TIMEOUT)
    panel = window.classify_panel
    assert window.view.has_image()  # the user sees what was opened
    assert panel.refusal_label.isVisibleTo(window)
    assert "Not a chest scan: body part BRAIN" in panel.refusal()
    assert "#b00020" in panel.refusal_label.styleSheet()  # red banner
    assert not panel.bars_box.isVisibleTo(window)
    assert window.cam_controls.status_label.text() == "No CAM: the scan was not scored"
    with qtbot.waitSignal(window.cam.message, timeout=2000) as said:
        window.cam.export_dialog()  # Ctrl+E: no dialog, and no "classify first" either
    assert said.args[0].startswith("No CAM to export: the scan was not scored (not a chest")
    # nor does the activation gallery show the model's view of a scan it must not judge
    window.gallery.show()
    qtbot.waitUntil(window.pool.idle, timeout=TIMEOUT)
    assert window.gallery.grid.count() == 0 and not window.gallery.busy()
    assert "No activation maps: not a chest scan" in window.gallery.status.text()
    window.gallery.hide()
    # a failed open of another file leaves this image refused, banner and all
    broken = tmp_path / "broken.dcm"
    broken.write_text("not a DICOM file", encoding="utf-8")
    with qtbot.waitSignal(window.errorShown, timeout=TIMEOUT):
        window.open_path(str(broken))
    assert window.scan is not None and window.scan.source == str(brain)
    assert "body part BRAIN" in panel.refusal() and not panel.bars_box.isVisibleTo(window)
    assert panel.prediction_label.text() == (
        "Not scored; broken.dcm could not be opened; the image is still brain.dcm"
    )
    window.classify()  # the button does not score it either
    qtbot.waitUntil(window.pool.idle, timeout=TIMEOUT)
    assert window.result is None and "%" not in panel.prediction_label.text()
    assert panel.refusal()
    # the refusal also comes from the core when the window did not know yet
    window.gate = None
    with qtbot.waitSignal(window.errorShown, timeout=TIMEOUT, raising=False):
        window.classify()
    qtbot.waitUntil(window.pool.idle, timeout=TIMEOUT)
    assert window.result is None and "body part BRAIN" in panel.refusal()
    window.open_path(str(ct_file))  # a chest scan clears the banner
    qtbot.waitUntil(lambda: window.scan is not None and window.scan.source == str(ct_file))
    assert not panel.refusal()


def test_plain_image_the_check_and_the_gate_disagree_on_is_not_scored(
    qtbot, settings: Settings, shared_data: Path
) -> None:
    """With the shipped models: a chest X-ray the modality check calls a CT slice (p 0.81)
    while the gate finds it nearest the X-ray training images. Automatic mode picks no model
    and the button gives the red banner, not a headline from the CT model."""
    clear_engines()
    win = MainWindow(settings, models_dir=REPO_MODELS)
    qtbot.addWidget(win)
    win.show()
    try:
        win.open_path(str(shared_data / "cxr-3class" / "covid" / "covid-ieee8023-0256.jpg"))
        qtbot.waitUntil(lambda: win.scan is not None, timeout=TIMEOUT)
        assert "nearer to the chest X-rays" in (win.state.unrouted or "")
        assert win.chosen_model() is None
        win.classify()
        qtbot.waitUntil(win.pool.idle, timeout=TIMEOUT)
        assert win.result is None
        assert "Not scored: cannot tell whether this plain image" in win.classify_panel.refusal()
        assert not win.classify_panel.bars_box.isVisibleTo(win)
        # the user picks the X-ray model: its result replaces the banner, and says why
        win.classify_panel.select_model("efficientnet-lite-cxr")
        win.classify()
        qtbot.waitUntil(lambda: win.result is not None, timeout=TIMEOUT)
        assert win.classify_panel.refusal() == ""
        assert "P " in win.classify_panel.prediction_label.text()
        assert "check that the model fits the image" in win.classify_panel.notes_label.text()
        # the scored image gets its maps too: nothing refused is left to hide them behind
        assert win.unscored_reason() is None
        with qtbot.waitSignal(win.gallery.computed, timeout=TIMEOUT) as maps:
            win.gallery.show()
        assert maps.args[0] > 0 and "efficientnet-lite-cxr" in win.gallery.status.text()
        win.gallery.hide()
        # the batch dock keeps its own choice: a model picked for one image does not change
        # (nor redirect to another CSV) what a folder is scored with
        assert win.batch_panel.current_model_name() == AUTO
        # back to automatic: refused again, and the X-ray model's result is gone, not kept
        # behind the banner (its map drawn, its PDF still written)
        combo = win.classify_panel.model_combo
        combo.setCurrentIndex(combo.findData(AUTO))
        win.classify()
        qtbot.waitUntil(win.pool.idle, timeout=TIMEOUT)
        assert win.result is None and win.state.result_info is None
        assert "cannot tell whether" in win.classify_panel.refusal()
        status = win.cam_controls.status_label
        assert status.text() == "No CAM: the scan was not scored"
        # a model picked in the list may score it: the CAM panel no longer says "not scored"
        combo.setCurrentIndex(combo.findData("efficientnet-lite-cxr"))
        assert status.text() != "No CAM: the scan was not scored" and win.cam.unscored is None
        qtbot.waitUntil(win.pool.idle, timeout=TIMEOUT)
    finally:
        win.pool.cancel_all()
        win.pool.wait(10_000)


def test_batch_table_shows_a_rows_notes(qtbot) -> None:
    """A series scored without a slice it could not read says so in the app's table too."""
    from lunglens.gui.batch_table import result_columns, row_items

    cols = result_columns([])
    row = {"path": "ct#1.2.3", "status": "ok", "notes": "skipped slice: ct/3.dcm: cannot decode"}
    cell = row_items(row, cols)[[key for key, _title in cols].index("notes")]
    assert cell.text() == cell.toolTip() == row["notes"]


def test_batch_table_says_why_an_error_row_was_not_scored(qtbot) -> None:
    """On a laptop screen the Error column is off to the right: the Triage cell of an error row
    carries the reason, and a scored row keeps its decision."""
    from lunglens.gui.batch_table import result_columns, row_items

    cols = result_columns([])
    triage = [key for key, _title in cols].index("prediction")
    error = "NotChestImage: the DICOM header says BodyPartExamined HEAD"
    bad = row_items({"path": "a.dcm", "status": "error", "error": error}, cols)[triage]
    assert bad.text() == "Not scored - the DICOM header says BodyPartExamined HEAD"
    assert bad.toolTip() == bad.text()
    named = {"path": "in/a.dcm", "status": "error", "error": "CorruptFile: in/a.dcm: truncated"}
    assert row_items(named, cols)[triage].text() == "Not scored - truncated"
    ok = {
        "path": "b.dcm",
        "status": "ok",
        "prediction": "Not flagged for COVID-19 (P 0.014 < 0.095)",
        "model": "efficientnet-lite-ct",
        "model_version": "1.1.3",
        "model_sha256": "07c8fde17903",
    }
    cells = row_items(ok, cols)
    assert cells[triage].text() == ok["prediction"]
    model = cells[[key for key, _title in cols].index("model")]
    assert model.text() == "efficientnet-lite-ct v1.1.3" and "07c8fde17903" in model.toolTip()


def test_cam_status_line_takes_no_row_when_empty(qtbot) -> None:
    """An empty status line under the CAM legend is hidden (its row pushed Export below the
    fold at 1366x768); a message shows it again."""
    from lunglens.gui.cam_controls import CamControls

    controls = CamControls()
    qtbot.addWidget(controls)
    controls.show()
    controls.set_available(True)
    assert not controls.status_label.isVisible()
    controls.set_status("CAM of slice 3")
    assert controls.status_label.isVisible()
    controls.set_available(False)
    assert controls.status_label.isVisible() and "Classify" in controls.status_label.text()


def test_a_failed_open_clears_the_previous_scans_decision(
    qtbot, window: MainWindow, ct_file: Path, tmp_path: Path
) -> None:
    """Opening a file that cannot be read keeps the previous image but not its headline: a
    "Flagged" next to the new file's error banner would read as the new file's decision."""
    open_and_classify(qtbot, window, ct_file)
    assert window.result is not None
    broken = tmp_path / "patient-b.dcm"
    broken.write_text("not a DICOM file", encoding="utf-8")
    with qtbot.waitSignal(window.errorShown, timeout=TIMEOUT) as shown:
        window.open_path(str(broken))
    assert "patient-b.dcm" in shown.args[0]
    assert window.scan is not None and window.scan.source == str(ct_file)  # the image stays
    assert window.result is None and window.cam.state.result is None
    text = window.classify_panel.prediction_label.text()
    assert text.startswith("No result shown: patient-b.dcm could not be opened")
    assert "Flagged" not in text and "still CTImage.dcm" in text
    # no old P, and no rows of the old model's classes either
    assert window.classify_panel.bars == {}
    assert not window.classify_panel.bars_box.isVisibleTo(window)
    # two files of one name (IM0001.dcm of two series): their folders tell them apart
    from lunglens.gui.opening import _names

    assert _names("a/IM0001.dcm", "b/IM0001.dcm") == ("a/IM0001.dcm", "b/IM0001.dcm")
    assert _names("a/x.dcm", "b/y.dcm") == ("x.dcm", "y.dcm")


def test_scan_information_names_an_unknown_modality_by_its_source(qtbot) -> None:
    """A plain image has no modality in the file; a DICOM file of another modality says which
    (it is not a plain image)."""
    from dataclasses import replace

    from lunglens.gui.tags_panel import modality_text
    from lunglens.io import Modality, Scan

    plain = Scan("a.png", np.zeros((1, 4, 4), np.float32), Modality.UNKNOWN, kind="raster")
    assert modality_text(plain).startswith("not in the file (plain image")
    other = replace(plain, source="b.dcm", kind="dicom", metadata={"dicom_modality": "OT"})
    assert modality_text(other) == "UNKNOWN (DICOM Modality OT)"
    assert modality_text(replace(plain, modality=Modality.CT)) == "CT"


def test_a_refused_model_folder_is_named_in_the_banner(
    qtbot, env: Path, settings: Settings, ct_file: Path
) -> None:
    """A model folder the registry refuses (here: its threshold edited after the manifest was
    sealed) is not offered, and the window says which and why, instead of leaving a CT scan to
    "no model handles CT" without a reason."""
    mpath = env / "models" / "synthetic-ct" / "manifest.json"
    data = json.loads(mpath.read_text(encoding="utf-8"))
    data["threshold"] = 0.01
    mpath.write_text(json.dumps(data), encoding="utf-8")
    win = MainWindow(settings)
    qtbot.addWidget(win)
    win.show()
    assert [m.name for m in win.models] == ["synthetic-cxr"]
    message = win.banner.message()
    assert win.banner.isVisible() and "1 model folder(s) refused" in message
    assert "synthetic-ct" in message and "decision_sha256" in message

    # a CT scan in automatic mode: refused with the reason, never scored by the X-ray model
    win.open_path(str(ct_file))
    qtbot.waitUntil(lambda: win.scan is not None, timeout=TIMEOUT)
    assert "automatic mode uses, synthetic-ct, is refused" in win.banner.message()
    win.classify()
    assert win.result is None
    assert "Not scored: the ct model automatic mode uses" in win.classify_panel.refusal()


def test_a_failed_open_puts_back_a_core_refusal_as_first_worded(
    qtbot, window: MainWindow, ct_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the core refused the scan at classification time (e.g. the CT feature check for a
    model chosen by hand), a failed open of another file puts back that banner, not a
    "Not scored with this model" wording of a modality mismatch."""
    import lunglens.gui.classify_runner as runner
    from lunglens.errors import NotChestImage

    def refuse(scan: object, *args: object, **kwargs: object) -> None:
        raise NotChestImage(
            str(ct_file),
            "not a chest scan: does not look like a chest CT slice to the CT model x",
            "No score is given: LungLens scores chest CT slices and chest X-rays only.",
        )

    monkeypatch.setattr(runner, "classify_scan", refuse)
    panel = window.classify_panel
    window.open_path(str(ct_file))
    qtbot.waitUntil(lambda: "Not a chest scan" in panel.refusal(), timeout=TIMEOUT)
    first = panel.refusal()
    broken = tmp_path / "broken.dcm"
    broken.write_text("not a DICOM file", encoding="utf-8")
    with qtbot.waitSignal(window.errorShown, timeout=TIMEOUT):
        window.open_path(str(broken))
    assert panel.refusal() == first and "with this model" not in panel.refusal()
