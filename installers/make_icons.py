"""Render resources/anomalydesk.svg to the PNG (Linux, macOS) and ICO (Windows) icons the installers use.

Run with the project's venv: `.venv/bin/python installers/make_icons.py`. Qt renders the SVG; ImageMagick's
`convert` packs the Windows .ico from the rendered sizes. The outputs are committed, so builds do not need this.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
SVG = RESOURCES / "anomalydesk.svg"
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)


def render_png(size: int, target: Path) -> None:
    """Render the SVG at size x size pixels into `target`."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtCore, QtGui, QtSvg

    QtGui.QGuiApplication.instance() or QtGui.QGuiApplication([])
    image = QtGui.QImage(size, size, QtGui.QImage.Format.Format_ARGB32)
    image.fill(QtCore.Qt.GlobalColor.transparent)
    painter = QtGui.QPainter(image)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    QtSvg.QSvgRenderer(str(SVG)).render(painter)
    painter.end()
    if not image.save(str(target), "PNG"):
        raise SystemExit(f"could not write {target}")


def main() -> int:
    """Write resources/anomalydesk.png (256 px) and resources/anomalydesk.ico."""
    render_png(256, RESOURCES / "anomalydesk.png")
    convert = shutil.which("convert")
    if convert is None:
        print("ImageMagick `convert` not found: anomalydesk.ico not rebuilt", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        pngs = []
        for size in ICO_SIZES:
            png = Path(tmp) / f"icon-{size}.png"
            render_png(size, png)
            pngs.append(str(png))
        subprocess.run([convert, *pngs, str(RESOURCES / "anomalydesk.ico")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
