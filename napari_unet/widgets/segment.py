"""The Segment dock widget: run a U-Net on the current image layer.

All torch work happens in a napari thread worker that drains
:func:`napari_unet.inference.segment.segment_iter`; this module only reads widget values,
shows progress and puts results into layers (on the Qt thread, in the worker's callbacks).

Large images (a dask-, zarr- or memory-map-backed layer, or planes above 64 Mpx) go through
:func:`napari_unet.inference.large.segment_to_zarr_iter` instead: the image is read block by
block, never whole, and the labels are a zarr store in a temporary folder, shown as a layer as
soon as the run starts and refreshed while blocks are written. Above 4096 px a side the layer is
multiscale (:class:`napari_unet.inference.pyramid.Pyramid`), so redrawing reads only what is on
screen. The folder goes away with the layer, or when napari exits.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import napari.viewer
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from ._base import DEVICES, JobWidget, device_line
from ._dock import wrap
from ._layers import (KEY, build_layer, input_images, keep_temporary, layer_kind, layer_meta, model_label, move_below, put_layer,
                      release_temporary, spatial_transform, temporary_folder)

TILE_SIZES = ("auto", "256", "512", "768", "1024", "2048")
DIAMETER_HELP = ("Typical diameter of the objects in this image, in pixels. The image is resized so that they reach "
                 "the size the model works at; the labels keep the image's size. 'auto' (0): estimated from the "
                 "image at each run (a few small first passes).")
NO_CHANNELS = "none (grey)"


@dataclass
class _Ready:
    """A finished job, with its layers already built in the worker thread."""

    segmentation: object
    n_objects: int
    labels: object
    probabilities: object


@dataclass
class _Live:
    """The first event of a large run: its labels layer (zarr-backed, still filling) comes along."""

    progress: object
    layer: object


@dataclass
class _LargeReady:
    """A finished large run: the result and its probabilities layer (None unless asked for)."""

    segmentation: object
    probabilities: object


#: Seconds between two refreshes of a filling labels layer (at most).
REFRESH_EVERY = 0.5


def _segment_large(predictor, data, settings: dict, stop, want_probabilities: bool, name: str, meta: dict,
                   transform: dict):
    """Thread-worker job for a large image: yields the core's :class:`BlockProgress` events (the
    first wrapped in :class:`_Live` with the labels layer) and keeps the layer's pyramid up to date;
    returns a :class:`_LargeReady`, or None when cancelled."""
    import zarr

    from ..inference.large import segment_to_zarr_iter
    from ..inference.pyramid import Pyramid, needs_pyramid
    from ..jobs import PredictionCancelled, Progress, relay

    probs_folder = temporary_folder() if want_probabilities else None
    probs_path = None if probs_folder is None else Path(probs_folder) / "probabilities.zarr"
    gen = segment_to_zarr_iter(predictor.model, data, None, probs_path, predictor=predictor, stop=stop, **settings)
    pyramid, live, last = None, None, None

    def show(event):
        """The first event with a store brings the layer along; later ones update its pyramid."""
        nonlocal pyramid, live, last
        last = event
        if live is None and event.labels_path:
            folder = Path(event.labels_path).parent
            keep_temporary(folder)
            store = zarr.open_array(str(event.labels_path), mode="r")
            if needs_pyramid(store.shape):
                pyramid = Pyramid(store, folder / "pyramid")
                pyramid = pyramid if pyramid.coarse else None
            live = build_layer(pyramid.levels if pyramid else store, "labels", name,
                               {**meta, "temporary": str(folder), "store": str(event.labels_path)},
                               multiscale=pyramid is not None, **transform)
            return _Live(event, live)
        if pyramid is not None and event.stage in ("label", "number") and event.region is not None:
            pyramid.update(event.region)
        return event

    try:
        result = yield from relay(gen, show)
        probabilities = None
        if want_probabilities:
            yield Progress(last.done, last.total, "preparing the probabilities layer")
            probabilities = _probability_layer(result, predictor.model.spatial_dims, probs_folder,
                                               name.replace(" labels", " probabilities"),
                                               {**meta, "kind": "probabilities", "temporary": probs_folder},
                                               transform)
        return _LargeReady(result, probabilities)
    except BaseException as exc:
        if probs_folder:
            release_temporary(probs_folder)
        if isinstance(exc, PredictionCancelled):
            return None
        raise


def _probability_layer(result, spatial_dims: int, folder: str, name: str, meta: dict, transform: dict):
    """The foreground probability of a large run as an image layer: lazy (dask) at full resolution,
    through a pyramid written here, block by block, when the planes are large."""
    import dask.array as da

    from ..inference.large import DEFAULT_BLOCK_2D
    from ..inference.pyramid import Pyramid, needs_pyramid

    store, shape = result.probabilities, tuple(result.labels.shape)
    axis = len(shape) - spatial_dims if store.ndim > len(shape) else None  # the class axis, if any

    def read(region):
        index = region if axis is None else region[:axis] + (slice(None),) + region[axis:]
        block = np.asarray(store[index])
        return block if axis is None else block.sum(axis=axis)  # foreground = sum of the classes

    base = da.from_zarr(store)
    if axis is not None:
        base = base.sum(axis=axis)
    levels = [base]
    if needs_pyramid(shape):
        pyramid = Pyramid(base, Path(folder) / "pyramid", read=read, dtype=np.float32, shape=shape)
        step = DEFAULT_BLOCK_2D
        for lead in np.ndindex(*shape[:-2]):
            for y in range(0, shape[-2], step):
                for x in range(0, shape[-1], step):
                    pyramid.update(tuple(slice(i, i + 1) for i in lead) + (slice(y, y + step), slice(x, x + step)))
        levels = pyramid.levels
    return build_layer(levels if len(levels) > 1 else base, "image", name, meta, multiscale=len(levels) > 1,
                       colormap="magma", blending="additive", contrast_limits=(0.0, 1.0), **transform)


class SegmentWidget(JobWidget):
    """Dock widget: image layer, model, device, tiles and post-processing, Run/Cancel."""

    job_name = "Segmentation"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)  # PyTorch loads in a worker (widgets._workers.warm_up)
        self._job_done = False
        self._pending_ui = False
        self._cached = None  # (settings, Predictor) of the last run
        self._extra_models: dict[str, None] = {}  # model files the user loaded, in order
        self.last_result = None  # the last Segmentation (LargeSegmentation for large images)
        self._live = None  # the labels layer a large run is filling
        self._live_refreshed = 0.0

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
        self.diameter = FloatSpinBox(label="Object size (px)", value=0.0, min=0.0, max=5000.0, step=1.0,
                                     tooltip=DIAMETER_HELP)
        self.estimate_button = PushButton(text="Estimate from image",
                                          tooltip="Set the object size from first passes of the model on the image "
                                                  "(no labels needed; a few seconds).")
        self.measure_button = PushButton(text="Measure on labels",
                                         tooltip="Set the object size to the median diameter of the objects in the "
                                                 "selected labels layer (or the top-most one of the image's size).")
        self.add_probabilities = CheckBox(text="Also add probabilities", value=False)
        self.run_button = PushButton(text="Run")
        self.status = Label(label="")
        from ._export import export_button

        self.export_button = export_button()
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
        from ..catalog import on_models_changed

        on_models_changed(self.refresh_models)  # a fine-tuned model shows up at once
        if not self._torch_ready:
            self._on_model_changed()  # the model's threshold from the start (read without PyTorch)
            self.model_info.value = self.device_info.value = "loading PyTorch…"

    def _on_torch_ready(self):
        self._on_model_changed()
        self._show_device()

    # -- choices ------------------------------------------------------------------------
    def _image_choices(self, _widget=None):
        return input_images(self._viewer)

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
        self._on_active_layer()

    def _on_active_layer(self, *_):
        active = self._viewer.layers.selection.active
        if isinstance(active, Image) and KEY not in active.metadata and self.image.value is not active:
            self.image.value = active
        elif self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]  # the top-most image

    # -- model and device ---------------------------------------------------------------
    def _apply_postprocess_defaults(self, config: dict) -> None:
        from ..catalog import postprocess_defaults

        defaults = postprocess_defaults(config)
        self.threshold.value = defaults["threshold"]
        self.min_size.value = defaults["min_size"]
        self.split.value = defaults["split_touching"]
        sizes = config.get("input") if isinstance(config.get("input"), dict) else {}  # (a peeked config is unchecked)
        network, made_for = sizes.get("object_diameter"), sizes.get("image_object_diameter")
        network = network if isinstance(network, (int, float)) and network > 0 else None
        made_for = made_for if isinstance(made_for, (int, float)) and made_for > 0 else None
        # a model that declares the object size it works at resizes images; the field starts at the size it was
        # made for (its fine-tuning corrections'), else at "auto" (estimated at each run); other models take
        # images as they are
        self.diameter.value = min(float(made_for or 0.0), self.diameter.max) if network else 0.0
        self.diameter.native.setSpecialValueText("auto" if network else "")
        self.diameter.enabled = self.measure_button.enabled = self.estimate_button.enabled = bool(network)
        self.diameter.tooltip = DIAMETER_HELP + (f" This model works at objects of {network:g} px." if network else
                                                 " This model takes images at their own size (it declares no object "
                                                 "size).")

    def measure_object_size(self, *_):
        """Set the object size to the median object diameter of a labels layer: the selected one,
        else the top-most one of the image's size (a correction or an earlier result)."""
        from napari.layers import Labels

        from ..scaling import median_diameter

        image = self.image.value
        active = self._viewer.layers.selection.active
        candidates = [active] if isinstance(active, Labels) else []
        if image is not None:
            shape = tuple((image.data[0] if image.multiscale else image.data).shape)
            rows_cols = shape[-3:-1] if image.rgb else shape[-2:]
            candidates += [layer for layer in reversed(self._viewer.layers) if isinstance(layer, Labels)
                           and not layer.multiscale and tuple(layer.data.shape[-2:]) == rows_cols]
        if not candidates or candidates[0].multiscale:
            self.report_error("No labels layer to measure: select one (corrections or an earlier result) first.")
            return
        layer = candidates[0]
        diameter = median_diameter(np.asarray(layer.data))
        if diameter is None:
            self.report_error(f"'{layer.name}' has no object of 16 pixels or more to measure.")
            return
        self.diameter.value = round(diameter, 1)
        self.status.value = f"object size {diameter:.1f} px: the median diameter of the objects in '{layer.name}'"

    def _ready_to_start(self):
        """``(layer, data, model)`` for a new job, or None (a job runs, or the inputs are refused:
        the message is shown)."""
        if self.running:
            return None
        self.ensure_torch()
        try:
            return self._check_inputs()
        except ValueError as exc:
            self.report_error(str(exc))
            return None

    def estimate_object_size(self, *_):
        """Set the object size from first passes of the model on the chosen image (a job)."""
        inputs = self._ready_to_start()
        if inputs is None:
            return
        layer, data, model = inputs
        from ..inference.estimate import estimate_diameter_iter
        from ..jobs import PredictionCancelled

        channel_axis = None if layer.rgb else self.channels.value
        rgb, device, tile = bool(layer.rgb), self.device.value, self.tile_size.value
        stop = threading.Event()
        plane = None  # a stack of planes: the one on screen (other layouts: the middle plane)
        if data.ndim == 3 and not rgb and channel_axis is None and data.shape[0] > 1:
            try:
                at = float(layer.world_to_data(self._viewer.dims.point)[0])
                plane = int(min(max(round(at), 0), data.shape[0] - 1))
            except (IndexError, ValueError, TypeError):
                plane = None

        def job():
            predictor = self._predictor(model, device, tile)
            try:
                return (yield from estimate_diameter_iter(predictor.model, data, channel_axis=channel_axis, rgb=rgb,
                                                          plane=plane, stop=stop, predictor=predictor))
            except PredictionCancelled:
                return None

        def done(estimate):
            if estimate is None:
                return
            if estimate.diameter is None:
                self.report_error(f"No object size found in '{layer.name}': {estimate.describe()}. Measure it on "
                                  "labels, or type it in.")
                return
            self.diameter.value = round(min(estimate.diameter, self.diameter.max), 1)
            self.status.value = f"object size {estimate.diameter:.1f} px, estimated in '{layer.name}': " \
                                f"{estimate.describe()}"

        self.start_job(job, done, f"napari-unet: object size of {layer.name}", stop=stop)

    def _on_model_changed(self, *_):
        """Describe the chosen model and apply the post-processing it was tuned with (the fields
        show it at once, read from the file's header, before PyTorch has loaded)."""
        if not self._torch_ready:
            from ..catalog import peek_config

            config = peek_config(self.model.value) if self.model.value else None
            if config is not None:
                self._apply_postprocess_defaults(config)
            return  # the description: _on_torch_ready
        from ..modelfile import ModelFileError, read_config, resolve_model_path
        from ..models import get_spec

        name = self.model.value
        if not name:
            self.model_info.value = "no model yet: load a model file"
            return
        from ..bioimageio import is_package, package_summary

        if is_package(resolve_model_path(name)):  # described from its YAML: bioimageio loads it in the worker
            text, config = package_summary(resolve_model_path(name))
            self.model_info.value = text
            if config is not None:
                self._apply_postprocess_defaults(config)
            return
        try:
            config = read_config(resolve_model_path(name))
        except ModelFileError as exc:
            self.model_info.value = f"unusable: {exc}"
            return
        text = f"{get_spec(config['architecture']).title}, {config['output']['target']} target"
        trained = config.get("provenance", {}).get("data", "")
        # a zero-width space after _ and / lets long folder names wrap at the dock's width instead of being cut
        trained = trained.replace("_", "_\u200b").replace("/", "/\u200b")
        self.model_info.value = text + (f"\ntrained on {trained}" if trained else "")
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
        if self.running:
            self.cancel()
        else:
            self.run()

    def _check_inputs(self):
        layer = self.image.value
        if layer is None:
            active = self._viewer.layers.selection.active
            if active is not None and not isinstance(active, Image):
                raise ValueError(f"The selected layer '{active.name}' is a {layer_kind(active)} layer: "
                                 "select an image layer to segment.")
            raise ValueError("There is no image layer: open an image (or File > Open Sample > napari-unet) first.")
        if layer.multiscale:
            data = layer.data[0]
        else:
            data = layer.data
        model = self.model.value
        if not model:
            raise ValueError("Choose a model first (or load a model file).")
        return layer, data, model

    def _predictor(self, model: str, device: str, tile: str):
        """The cached predictor for these settings (called in the worker thread: model loading and
        batch-norm folding stay off the Qt thread). A model file rewritten since is reloaded."""
        from ..catalog import ModelFileError, resolve_model_path
        from ..inference.predictor import Predictor

        path = resolve_model_path(model)
        try:
            modified = path.stat().st_mtime_ns
        except OSError:
            raise ModelFileError(f"The model file {path} is gone (moved, renamed or deleted): load it again with "
                                 "'Load model file…', or choose another model.") from None
        key = (model, device, tile, modified)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, Predictor(model, device=device, tile_size=tile if tile == "auto" else int(tile)))
        return self._cached[1]

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
                return (yield from _segment_large(predictor, data, settings, stop, want_probabilities,
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
        if isinstance(event, _Live):  # a large run's labels layer: shown while it fills
            self._live = put_layer(self._viewer, event.layer)
            self._live.editable = False  # no brush strokes into blocks that are still being written
            self._live_refreshed = time.perf_counter()
            event = event.progress
        elif self._live is not None and getattr(event, "stage", "") in ("label", "number") \
                and time.perf_counter() - self._live_refreshed > REFRESH_EVERY:
            self._live.refresh()
            self._live_refreshed = time.perf_counter()
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
        if ready is None or self.cancelled:
            return
        if isinstance(ready, _LargeReady):
            self._on_large_result(ready, layer, started)
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

    def _on_large_result(self, ready, layer, started):
        result, live = ready.segmentation, self._live
        self._live = None
        self.last_result = result
        if live is None or live not in self._viewer.layers:  # removed by the user meanwhile (with its folder)
            self.status.value = "the result layer was removed while it was being filled; the result was discarded."
            return
        if not live.multiscale:  # napari paints single-scale layers only: now into the store itself
            import zarr

            live.data = zarr.open_array(live.metadata[KEY]["store"], mode="r+")
            live.editable = True
        live.refresh()
        self._viewer.layers.selection.active = live
        n = int(sum(result.n_objects))
        where = live.metadata[KEY]["temporary"]
        self.status.value = (f"{n} objects in {time.perf_counter() - started:.1f} s on {result.device}, "
                             f"{result.n_blocks} block(s) per plane. The labels are a zarr store in {where}, "
                             "removed with the layer or when napari closes: save the layer to keep it."
                             + "".join(f"\n{message}" for message in result.warnings))
        for message in result.warnings:
            show_warning(message)
        show_info(f"napari-unet: {n} objects found in '{layer.name}'.")
        if ready.probabilities is not None:
            move_below(self._viewer, put_layer(self._viewer, ready.probabilities), live)
            self._viewer.layers.selection.active = live

    def _on_job_finished(self):
        self.run_button.text = "Run"
        live, self._live = self._live, None
        if live is not None and live in self._viewer.layers:  # cancelled or failed: nothing stays behind
            self._viewer.layers.remove(live)


