"""What the screenshot scripts share: waiting on the Qt event loop, and saving the window."""

import time

from qtpy.QtWidgets import QApplication


def wait_until(condition, timeout: float = 600.0) -> None:
    """Process Qt events until ``condition()`` is true (workers report through the event loop)."""
    app, start = QApplication.instance(), time.time()
    while not condition() and time.time() - start < timeout:
        app.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 1.0) -> None:
    """Let layers that are added in later turns of the event loop arrive and draw."""
    wait_until(lambda: False, timeout=seconds)


def save(viewer, out, status: str = "") -> None:
    """Fit the view, draw, write the whole window to ``out`` and close napari."""
    viewer.reset_view()
    settle()
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"{out}: {status}")
    viewer.close()
