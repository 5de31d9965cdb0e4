"""Make docs/screenshot_loop.png: the correct / fine-tune loop (Correct and Fine-tune widgets docked).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_loop.py
"""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NAPARI_UNET_MODEL_DIR", tempfile.mkdtemp(prefix="napari-unet-shot-"))
import napari  # noqa: E402
from _screens import save, wait_until  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "screenshot_loop.png")
minutes = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
viewer = napari.Viewer()
viewer.window._qt_window.resize(1600, 1000)
viewer.open_sample("napari-unet", "nuclei")
image, truth = viewer.layers
truth.metadata["napari_unet"] = {"kind": "labels", "source": image.name}
_, correct = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
correct.source.value = truth
correct.start_correcting()
correct.mark_reviewed("view")
_, finetune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
wait_until(lambda: finetune._torch_ready)
finetune.minutes.value = minutes
finetune.train_button.native.click()
wait_until(lambda: not finetune.running)
save(viewer, out, finetune.status.value)
