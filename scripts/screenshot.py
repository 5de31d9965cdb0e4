"""Make docs/screenshot.png: napari with the Segment widget after a run on the nuclei sample.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py
"""

import sys
from pathlib import Path

import napari
from _screens import save, wait_until

out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "screenshot.png")
viewer = napari.Viewer()
viewer.window._qt_window.resize(1500, 900)
viewer.open_sample("napari-unet", "nuclei")
viewer.layers["nuclei (synthetic) ground truth"].visible = False
_, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
viewer.layers.selection.active = viewer.layers["nuclei (synthetic)"]
widget.run_button.native.click()
wait_until(lambda: not widget.running)
viewer.layers[-1].contour = 2
save(viewer, out, widget.status.value)
