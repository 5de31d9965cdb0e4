"""The Segment dock widget: run a U-Net on the current image layer.

All torch work happens in a napari thread worker that drains
:func:`napari_unet.inference.segment.segment_iter`; this module only reads widget values,
shows progress and puts results into layers (on the Qt thread, in the worker's callbacks). The
predictor of the last run is kept (:class:`~napari_unet.inference.predictor_cache.PredictorCache`,
keyed by its settings and the model file's modification time).

Large images (a dask-, zarr- or memory-map-backed layer, or planes above 64 Mpx) go through
:func:`napari_unet.inference.largeview.segment_large_iter` instead (layers: :mod:`._segment_large`):
the image is read block by block, never whole, and the labels are a zarr store in a temporary
folder, shown as a layer as soon as the run starts and refreshed while blocks are written. Above
4096 px a side the layer is multiscale (:class:`napari_unet.inference.pyramid.Pyramid`), so
redrawing reads only what is on screen. The folder goes away with the layer, or when napari exits.
The object-size field and its buttons: :mod:`._object_size`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import napari.viewer
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from ._base import DEVICES, JobWidget, device_line
from ._dock import wrap
from ._layers import (KEY, build_layer, layer_kind, layer_meta, model_label, move_below, put_layer,
                      release_temporary, spatial_transform)
from ._object_size import ObjectSizeControls
from ._segment_large import _LargeReady, discard_probabilities, large_job, show_large_result, show_live

TILE_SIZES = ("auto", "256", "512", "768", "1024", "2048")
NO_CHANNELS = "none (grey)"


@dataclass
class _Ready:
    """A finished job, with its layers already built in the worker thread."""

    segmentation: object
    n_objects: int
    labels: object
    probabilities: object


class SegmentWidget(ObjectSizeControls, JobWidget):
    """Dock widget: image layer, model, device, tiles and post-processing, Run/Cancel."""

    job_name = "Segmentation"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)  # PyTorch loads in a worker (widgets._workers.warm_up)
        self._job_done = False
        self._pending_ui = False
        from ..inference.predictor_cache import PredictorCache

        self._predictors = PredictorCache()  # the predictor of the last run
        self._extra_models: dict[str, None] = {}  # model files the user loaded, in order
        self.last_result = None  # the last Segmentation (LargeSegmentation for large images)
        self._live = None  # the labels layer a large run is filling
        self._live_refreshed = 0.0
        self._make_controls()
        self._lay_out()
        self._connect(viewer)
        if not self._torch_ready:
            self._on_model_changed()  # the model's threshold from the start (read without PyTorch)
            self.model_info.value = self.device_info.value = "loading PyTorch…"

    def _make_controls(self):
        self.image = ComboBox(label="Image", choices=self._image_choices, nullable=True,
                              tooltip="The image layer to segment (defaults to the selected layer).")
        self.channels = ComboBox(label="Channel axis", choices=self._channel_choices,
                                 tooltip="Which axis holds colour channels. RGB layers use their colour axis.")
        self.model = ComboBox(label="Model", choices=self._model_choices,
                              tooltip="A bundled model, one of your fine-tuned models, a .safetensors file or a "
                                      "BioImage.IO model package.")
        self.load_button = PushButton(text="Load model file…")
        self.model_info = Label(label="")
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto",
                               tooltip="'auto' picks a CUDA GPU, then Apple MPS, then the CPU.")
        self.device_info = Label(label="")
        self.tile_size = ComboBox(label="Tile size", choices=TILE_SIZES, value="auto",
                                  tooltip="Network input size per tile; 'auto' is fastest on this device.")
        self.threshold = FloatSpinBox(label="Threshold", value=0.5, min=0.05, max=0.95, step=0.05,
                                      tooltip="Foreground probability above which a pixel belongs to an object.")
        self.min_size = SpinBox(label="Min size (px)", value=16, min=0, max=100000,
                                tooltip="Objects with fewer pixels are removed (pixels as the model sees them: "
                                        "when the image is resized, they count at the model's scale).")
        self.split = CheckBox(text="Split touching objects", value=True,
                              tooltip="Seeded watershed on the distance transform of each object.")
        self._make_size_controls()
        self.add_probabilities = CheckBox(text="Also add probabilities", value=False)
        self.run_button = PushButton(text="Run")
        self.status = Label(label="")
        from ._export import export_button

        self.export_button = export_button()

    def _lay_out(self):
        self.extend([self.image, self.channels, self.model, self.load_button, self.model_info, self.diameter,
                     self.estimate_button, self.measure_button, self.threshold, self.min_size, self.split])
        self.add_section("Device, tiles, probabilities", [self.device, self.device_info, self.tile_size,
                                                          self.add_probabilities])
        self.add_qt(self.run_button.native)
        self.add_qt(self.status.native)
        self.add_qt(self.export_button.native)
        self.finish_layout()

        for label in (self.model_info, self.device_info, self.status):
            wrap(label)  # long model cards and messages wrap instead of widening the dock

    def _connect(self, viewer):
        self.run_button.changed.connect(self._on_run_clicked)
        self.model.changed.connect(self._on_model_changed)
        self.load_button.changed.connect(self._ask_for_model_file)
        self.export_button.changed.connect(self.export_model)
        self.measure_button.changed.connect(self.measure_object_size)
        self.estimate_button.changed.connect(self.estimate_object_size)
        self.device.changed.connect(self._show_device)
        self.image.changed.connect(lambda *_: self.channels.reset_choices())
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._refresh_layers)
        events.removed.connect(self._on_layer_removed)
        viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._refresh_layers()
        self._on_active_layer()
        from ..catalog import on_models_changed

        on_models_changed(self.refresh_models)  # a fine-tuned model shows up at once

    def _on_torch_ready(self):
        self._on_model_changed()
        self._show_device()

    # -- choices ------------------------------------------------------------------------
    def _channel_choices(self, _widget=None):
        layer = self.image.value
        if layer is None or layer.rgb:
            return [("rgb" if layer is not None else NO_CHANNELS, None)]
        return [(NO_CHANNELS, None)] + [(f"axis {a} ({n})", a) for a, n in enumerate(layer.data.shape)]

    def _model_choices(self, _widget=None):
        from ..catalog import known_models

        return [(name, name) for name in known_models()] + [(Path(p).name, p) for p in self._extra_models]

    def refresh_models(self):
        """Re-read the installed models (keeps the current choice when it still exists)."""
        self.model.reset_choices()

    def _refresh_layers(self, *_):
        self.image.reset_choices()
        self.channels.reset_choices()
        # a layer added, removed or moved leaves the user's choice alone (napari announces a new
        # layer before it makes it active: following the active layer here would switch to another)
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]  # the top-most image

    def _on_active_layer(self, *_):
        active = self._viewer.layers.selection.active
        if isinstance(active, Image) and KEY not in active.metadata and self.image.value is not active:
            self.image.value = active
        elif self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]  # the top-most image

    # -- model and device ---------------------------------------------------------------
    def _apply_postprocess_defaults(self, config: dict) -> None:
        """The post-processing and object size a model was tuned with."""
        from ..catalog import postprocess_defaults

        defaults = postprocess_defaults(config)
        self.threshold.value = defaults["threshold"]
        self.min_size.value = defaults["min_size"]
        self.split.value = defaults["split_touching"]
        self._apply_object_size(config)

    def _on_model_changed(self, *_):
        """Describe the chosen model and apply the post-processing it was tuned with (the fields
        show it at once, read from the file's header, before PyTorch has loaded)."""
        if not self._torch_ready:
            from ..catalog import peek_config

            config = peek_config(self.model.value) if self.model.value else None
            if config is not None:
                self._apply_postprocess_defaults(config)
            return  # the description: _on_torch_ready
        from ..modelinfo import describe_model

        if not self.model.value:
            self.model_info.value = "no model yet: load a model file"
            return
        self.model_info.value, config = describe_model(self.model.value)
        if config is not None:  # None: an unusable file (the description says why)
            self._apply_postprocess_defaults(config)

    def _ask_for_model_file(self, *_):
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self.native, "Load a napari-unet model", str(Path.home()),
                                              "Models (*.safetensors *.zip rdf.yaml bioimageio.yaml);;"
                                              "napari-unet models (*.safetensors);;"
                                              "BioImage.IO model packages (*.zip rdf.yaml bioimageio.yaml);;"
                                              "All files (*)")
        if path:
            self.add_model_file(path)

    def add_model_file(self, path: str):
        """Offer a model file (or a BioImage.IO package) in the model list and select it (checked before it
        is listed; a package's description and weights are checked when it first runs, in the worker)."""
        from ..bioimageio import check_package_quickly, is_package
        from ..modelfile import ModelFileError, read_config

        try:
            check_package_quickly(path) if is_package(path) else read_config(path)
        except ModelFileError as exc:
            self.report_error(str(exc))
            return
        self._extra_models[path] = None
        self.model.reset_choices()
        self.model.value = path

    def export_model(self, *_):
        """Export the chosen model as a BioImage.IO package (asks where; runs as a job)."""
        from ._export import export_in_background

        if self.running:
            self.report_error("Wait for the current run to finish (or cancel it), then export.")
            return
        if not self.model.value:
            self.report_error("Choose a model to export first (or load a model file).")
            return
        export_in_background(self, self.model.value, model_label(self.model.value))

    def _show_device(self, *_):
        if self._torch_ready:
            self.device_info.value = device_line(self.device.value)

    # -- running ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while a job runs or its results are still being put into layers."""
        return self.job_running or self._pending_ui

    def _on_run_clicked(self, *_):
        self.run_or_cancel(self.run)

    def _check_inputs(self):
        layer = self.image.value
        if layer is None:
            active = self._viewer.layers.selection.active
            if active is not None and not isinstance(active, Image):
                raise ValueError(f"The selected layer '{active.name}' is a {layer_kind(active)} layer: "
                                 "select an image layer to segment.")
            raise ValueError("There is no image layer: open an image (or File > Open Sample > napari-unet) first.")
        data = layer.data[0] if layer.multiscale else layer.data
        model = self.model.value
        if not model:
            raise ValueError("Choose a model first (or load a model file).")
        return layer, data, model

    def _predictor(self, model: str, device: str, tile: str):
        """The cached predictor for these settings (called in the worker thread: model loading and
        batch-norm folding stay off the Qt thread). A model file rewritten since is reloaded."""
        from ..inference.predictor_cache import PredictorSettings

        return self._predictors.get(PredictorSettings(model, device=device, tile_size=tile).stamped())

    def run(self):
        """Start segmenting the chosen layer in a thread worker (returns at once)."""
        inputs = self._ready_to_start()
        if inputs is None:
            return
        layer, data, model = inputs
        from ..inference.segment import segment_iter
        from ..jobs import PredictionCancelled

        channel_axis = None if layer.rgb else self.channels.value
        stop = threading.Event()
        settings = dict(threshold=float(self.threshold.value), min_size=int(self.min_size.value),
                        split_touching=bool(self.split.value), channel_axis=channel_axis, rgb=bool(layer.rgb),
                        diameter=(float(self.diameter.value) or "auto") if self.diameter.enabled else None)
        started = time.perf_counter()

        want_probabilities = bool(self.add_probabilities.value)
        transform = spatial_transform(layer, channel_axis)

        device, tile = self.device.value, self.tile_size.value  # read widgets here, on the Qt thread

        meta = {"source": layer.name, "model": str(model), "kind": "labels"}
        base = f"{layer.name} [{model_label(model)}]"

        def job():
            from ..inference.large import needs_blocks

            predictor = self._predictor(model, device, tile)
            if needs_blocks(data, predictor.model.spatial_dims):  # never loaded whole
                return (yield from large_job(predictor, data, settings, stop, want_probabilities,
                                             f"{base} labels", meta, transform))
            try:
                seg = yield from segment_iter(predictor.model, data, predictor=predictor, stop=stop, **settings)
            except PredictionCancelled:
                return None
            # layers are built here: their array work stays off the Qt thread
            labels = build_layer(seg.labels, "labels", f"{base} labels", meta, **transform)
            probabilities = None
            if want_probabilities:
                probabilities = build_layer(seg.prediction.foreground, "image", f"{base} probabilities",
                                            {**meta, "kind": "probabilities"}, colormap="magma",
                                            blending="additive", contrast_limits=(0.0, 1.0), **transform)
            return _Ready(seg, int(seg.labels.max()), labels, probabilities)

        self.start_job(job, lambda result: self._on_result(result, layer, started), f"napari-unet: {layer.name}",
                       stop=stop)

    def _on_job_started(self):
        self._job_done = False
        self.run_button.text = "Cancel"
        self.status.value = "starting…"

    def _on_progress(self, event):
        event = show_live(self, event)  # a large run's labels layer: shown while it fills
        if not self._job_done:  # a late progress event must not hide the result line
            super()._on_progress(event)

    def _on_layer_removed(self, event):
        """A large run's layer removed: while it fills, that cancels the run; after, its folder goes."""
        removed = event.value
        if removed is self._live and self.job_running:
            self.cancel()
            return
        folder = layer_meta(removed).get("temporary")
        if folder:
            release_temporary(folder, self._viewer)

    def _on_result(self, ready, layer, started):
        self._job_done = True
        if ready is None:
            return
        if self.cancelled:  # (a large run's labels layer goes in _on_job_finished, its folder with it)
            if isinstance(ready, _LargeReady):
                discard_probabilities(ready)
            return
        if isinstance(ready, _LargeReady):
            show_large_result(self, ready, layer, started)
            return
        if layer not in self._viewer.layers:
            self.status.value = f"'{layer.name}' was removed while it was being segmented; the result was discarded."
            show_warning(self.status.value)
            return
        result = ready.segmentation
        self.last_result = result
        labels = put_layer(self._viewer, ready.labels)
        self._viewer.layers.selection.active = labels
        warnings = result.prediction.warnings
        scale = result.prediction.scale
        estimate = result.size_estimate
        self.status.value = f"{ready.n_objects} objects in {time.perf_counter() - started:.1f} s on " \
                            f"{result.prediction.device}" + (f", image resized {scale:.2f}x for the model"
                                                             if scale != 1 else "") \
                            + (f"\nobject size estimated: {estimate.describe()}" if estimate is not None else "") \
                            + "".join(f"\n{message}" for message in warnings)
        for message in warnings:
            show_warning(message)
        show_info(f"napari-unet: {ready.n_objects} objects found in '{layer.name}'.")
        if ready.probabilities is not None:
            # a second large layer in a later turn of the event loop: two short stalls, not one long
            self._pending_ui = True

            def add_probabilities():
                self._pending_ui = False
                move_below(self._viewer, put_layer(self._viewer, ready.probabilities), labels)
                self._viewer.layers.selection.active = labels

            QTimer.singleShot(0, add_probabilities)

    def _on_job_finished(self):
        self.run_button.text = "Run"
        live, self._live = self._live, None
        if live is not None and live in self._viewer.layers:  # cancelled or failed: nothing stays behind
            self._viewer.layers.remove(live)


