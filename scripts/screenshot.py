"""Make docs/screenshot.png: napari with the Segment widget after a run on the nuclei sample.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py
"""

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "screenshot.png")
viewer = napari.Viewer()
viewer.window._qt_window.resize(1500, 900)
viewer.open_sample("napari-unet", "nuclei")
viewer.layers["nuclei (synthetic) ground truth"].visible = False
_, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
viewer.layers.selection.active = viewer.layers["nuclei (synthetic)"]
app = QApplication.instance()
widget.run_button.native.click()
while widget.running:
    app.processEvents()
    time.sleep(0.02)
viewer.layers[-1].contour = 2
viewer.reset_view()
for _ in range(50):
    app.processEvents()
    time.sleep(0.02)
viewer.screenshot(str(out), canvas_only=False, flash=False)
print(f"{out}: {widget.status.value}")
viewer.close()
