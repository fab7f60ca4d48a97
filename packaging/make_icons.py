"""Render resources/icons/lunglens.svg to the PNG (Linux) and ICO (Windows) icons.

Run after editing the SVG: ``QT_QPA_PLATFORM=offscreen python packaging/make_icons.py``.
Uses Qt's SVG renderer (PySide6, already a dependency) and Pillow for the multi-size ICO.
"""

from __future__ import annotations

from pathlib import Path

ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"


def main() -> None:
    from PIL import Image
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = QGuiApplication([])  # noqa: F841  (QPainter needs an application)
    renderer = QSvgRenderer(str(ICONS / "lunglens.svg"))
    png = ICONS / "lunglens-256.png"
    image = QImage(256, 256, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    image.save(str(png))
    Image.open(png).save(
        ICONS / "lunglens.ico", sizes=[(16, 16), (32, 32), (48, 48), (64, 64), (256, 256)]
    )
    print(f"wrote {png} and {ICONS / 'lunglens.ico'}")


if __name__ == "__main__":
    main()
