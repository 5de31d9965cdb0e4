"""Make docs/screenshot_supervision.png: the Deep-supervision widget after U-Net++ on the nuclei sample.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_supervision.py
"""

import sys
from pathlib import Path

import napari
from _screens import save, settle, wait_until

out = Path(sys.argv[1] if len(sys.argv) > 1 else
           Path(__file__).resolve().parents[1] / "docs" / "screenshot_supervision.png")
viewer = napari.Viewer()
viewer.window._qt_window.resize(1600, 1000)
viewer.open_sample("napari-unet", "nuclei")
image, truth = viewer.layers
_, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Deep supervision")
wait_until(lambda: widget._torch_ready)
widget.model.value = "unet++"
widget.corrections.value = truth
widget.run_button.native.click()
wait_until(lambda: not widget.running)
for depth in (1, 2):
    widget.prune_depth.value = depth
    widget.prune_button.native.click()
    wait_until(lambda: not widget.running)
settle()
for layer in viewer.layers:
    layer.visible = "depth" in layer.name and "labels" not in layer.name or layer is image
widget.grid.value = True
save(viewer, out, widget.status.value)
