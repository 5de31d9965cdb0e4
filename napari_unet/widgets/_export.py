"""The docks' **Export to BioImage.IO…** button: a file dialog, then
:func:`napari_unet.bioimageio.export_model` as a job of the dock (a worker thread, napari's
progress bar and Cancel), so napari never waits for the trace and the package test."""

from __future__ import annotations

import threading
from pathlib import Path

from magicgui.widgets import PushButton
from napari.utils.notifications import show_info

from ..bioimageio import INSTALL_HINT, available

TOOLTIP = ("Write the model as a BioImage.IO model package (.zip) that deepImageJ (Fiji), QuPath, ilastik and "
           "bioimageio.core run; bioimageio.core tests the package before it is written.")


def export_button() -> PushButton:
    """The button; without bioimageio.core its tooltip (and a click) says how to install it."""
    return PushButton(text="Export to BioImage.IO…", tooltip=TOOLTIP if available() else INSTALL_HINT + ".")


def ask_export_path(parent, name: str) -> str:
    """The package to write, from a save dialog ('' when cancelled)."""
    from qtpy.QtWidgets import QFileDialog

    suggested = str(Path.home() / f"{Path(str(name)).stem}.zip")
    path, _ = QFileDialog.getSaveFileName(parent, "Export to BioImage.IO", suggested,
                                          "BioImage.IO model packages (*.zip)")
    return path


def export_in_background(dock, model, name: str) -> None:
    """Ask where to write ``model`` (a name, a model file or a package) and export it as a job of
    ``dock`` (a :class:`~._base.JobWidget` with a ``status`` label)."""
    if not available():
        dock.report_error(INSTALL_HINT + ".")
        return
    if dock.job_running:
        dock.report_error("Wait for the current job to finish (or cancel it), then export.")
        return
    path = ask_export_path(dock.native, name)
    if not path:
        return
    stop = threading.Event()

    def job():
        from ..bioimageio import ExportCancelled, export_model

        try:
            return export_model(model, path, stop=stop)
        except ExportCancelled:
            return None

    def done(out):
        if out is None:
            return
        dock.status.value = f"exported '{name}' to {out}: bioimageio.core's model test passed"
        show_info(f"napari-unet: '{name}' exported to BioImage.IO ({out}).")

    dock.start_job(job, done, f"napari-unet: exporting {name} to BioImage.IO", stop=stop, job_name="The export",
                   cancelled_message="export cancelled: nothing was written",
                   cancelling_message="cancelling the export…")
    dock.status.value = f"exporting '{name}' to BioImage.IO (tracing the network, then bioimageio.core tests " \
                        "the package)…"
