"""The Deep-supervision dock widget: what every depth of U-Net++ / U-Net 3+ predicts.

One tiled pass gives every side output (:mod:`napari_unet.inference.supervision`); each becomes
a probability layer named by its depth, beside the ensemble, a disagreement map and, for U-Net 3+,
the classification-guided module's "object present" probability per tile. Against a corrected
Labels layer a table gives each depth's Dice and AP@0.5 (within the reviewed region when there is
one) and highlights the best. "Run pruned" times U-Net++'s depth-k sub-network alone. "Next region
to review" jumps to where the depths disagree most and nobody has reviewed yet.

Torch and scoring run in thread workers; this module only reads widgets and puts layers.
"""

from __future__ import annotations

import threading

import napari.viewer
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Label, PushButton, SpinBox, Table
from napari.layers import Image, Labels
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer
from qtpy.QtGui import QBrush, QColor, QFont

from ._base import DEVICES, JobWidget, device_line, layer_meta as _meta
from ._dock import wrap
from ._layers import KEY, build_layer, input_images, model_label, put_layer, spatial_transform

ALL = "all depths"
NO_CORRECTIONS = "none"
SCORE_COLUMNS = ["Dice", "AP@0.5", "objects"]
PRUNE_COLUMNS = ["ms / Mpx", "speed-up", "Dice", "AP@0.5"]
BEST_BRUSH = QBrush(QColor(60, 140, 60))


def _camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _grid(viewer):
    """Grid-mode settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


class SupervisionWidget(JobWidget):
    """Dock widget: image, deep-supervision model, corrections; per-depth layers and scores."""

    job_name = "The deep-supervision run"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)  # PyTorch loads in a worker (widgets._workers.warm_up)
        self._predictors: dict = {}
        self._supervised: dict = {}  # (model path, mtime) -> has deep supervision
        self._full_runs: dict = {}
        self._pending_layers: list = []  # (model, device, shape) -> PrunedRun of the full network
        self._visited: set = set()
        self.last_depths = None  # the last DepthPrediction, for scripts and tests
        self.last_scores = None
        self.last_pruned = None
        self._context = None  # (image layer, transform, base name, model) of last_depths

        self.image = ComboBox(label="Image", choices=self._image_choices, nullable=True,
                              tooltip="The image layer to predict (defaults to the selected image).")
        self.model = ComboBox(label="Model", choices=self._model_choices,
                              tooltip="Models with deep supervision: U-Net++, U-Net 3+ and your fine-tuned ones.")
        self.corrections = ComboBox(label="Corrections", choices=self._labels_choices,
                                    tooltip="A corrected Labels layer of this image: each depth is scored against it "
                                            "(within its reviewed region, when you marked one).")
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto")
        self.device_info = Label(label="")
        self.run_button = PushButton(text="Run all depths")
        self.status = Label(label="")
        self.show_depth = ComboBox(label="Show", choices=self._depth_choices,
                                   tooltip="Flip through the depths: shows one depth's layer and hides the others.")
        self.grid = CheckBox(text="Side by side (grid)", value=False,
                             tooltip="napari's grid mode: every layer in its own view, cameras linked.")
        self.scores = Table(tooltip="Each depth against the corrections (within the reviewed region, when one "
                                    "is marked); ★ marks the best AP@0.5.")
        self.rescore_button = PushButton(text="Update scores",
                                         tooltip="Score the last prediction again against the corrections as they "
                                                 "are now (no new prediction).")
        self.next_button = PushButton(text="Next region to review",
                                      tooltip="Jump to the block where the depths disagree most and that is not "
                                              "reviewed yet (each click goes to the next one).")
        self.prune_depth = SpinBox(label="Pruned depth", value=2, min=1, max=4,
                                   tooltip="U-Net++ only: run just the sub-network of this depth (fewer poolings, "
                                           "fewer nodes) and see its speed and score.")
        self.prune_button = PushButton(text="Run pruned")
        self.pruned = Table(tooltip="Time per megapixel of each pruned run, its speed-up over the full network "
                                    "(timed the same way, after a warm-up) and its score.")
        self.extend([self.image, self.model, self.corrections, self.run_button, self.status, self.show_depth,
                     self.grid])
        # the tables span the dock's width, under a title, instead of sitting in the value column
        from magicgui.widgets import Label as MLabel

        for table in (self.scores, self.pruned):
            table.read_only = True
            table.native.setMinimumHeight(150)
        self.add_qt(MLabel(value="Scores against the corrections (★ best AP@0.5)").native)
        self.add_qt(self.scores.native)
        self.add_section("Review, pruning, device", [
            self.next_button, self.rescore_button, self.prune_depth, self.prune_button,
            MLabel(value="Pruned U-Net++ runs (speed-up over the full network)"), self.pruned, self.device,
            self.device_info])
        self.finish_layout()
        for label in (self.device_info, self.status):
            wrap(label)

        self.run_button.changed.connect(self._on_run_clicked)
        self.prune_button.changed.connect(lambda *_: self.run_pruned())
        self.rescore_button.changed.connect(lambda *_: self.rescore())
        self.next_button.changed.connect(lambda *_: self.next_region())
        self.show_depth.changed.connect(self._on_show_depth)
        self.grid.changed.connect(lambda value: setattr(_grid(self._viewer), "enabled", bool(value)))
        self.device.changed.connect(self._show_device)
        self.model.changed.connect(self._on_model_changed)
        self.image.changed.connect(lambda *_: self._default_corrections())
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._refresh_layers)
        viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._refresh_layers()
        from ..catalog import on_models_changed

        on_models_changed(self.refresh_models)
        if not self._torch_ready:
            self.device_info.value = "loading PyTorch…"

    def _on_torch_ready(self):
        self.refresh_models()
        self._show_device()

    # -- choices ------------------------------------------------------------------------
    def _image_choices(self, _widget=None):
        return input_images(self._viewer)

    def _depth_choices(self, _widget=None):
        names = [] if self.last_depths is None else self.last_depths.names + ["ensemble"]
        return [ALL] + names

    def _labels_choices(self, _widget=None):
        return [(NO_CORRECTIONS, None)] + [(layer.name, layer) for layer in self._viewer.layers
                                           if isinstance(layer, Labels) and _meta(layer).get("kind") != "reviewed"]

    def _model_choices(self, _widget=None):
        """Installed models with more than one side output (all of them until PyTorch is loaded)."""
        from ..catalog import known_models

        models = known_models()
        if not self._torch_ready:
            return list(models)
        from ..modelfile import ModelFileError, read_config
        from ..models import get_spec

        names = []
        for name, path in models.items():
            try:
                key = (str(path), path.stat().st_mtime_ns)
                if key not in self._supervised:  # napari re-reads choices on every layer event
                    self._supervised[key] = get_spec(read_config(path)["architecture"]).deep_supervision
            except (OSError, ModelFileError, KeyError):
                continue
            if self._supervised[key]:
                names.append(name)
        return names

    def refresh_models(self):
        self.model.reset_choices()

    def _refresh_layers(self, *_):
        self.image.reset_choices()
        self.corrections.reset_choices()
        self._on_active_layer()
        self._default_corrections()

    def _on_active_layer(self, *_):
        active = self._viewer.layers.selection.active
        if isinstance(active, Image) and KEY not in active.metadata and self.image.value is not active:
            self.image.value = active
        elif self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]

    def _default_corrections(self):
        """Pick the Correct widget's layer for this image when the user has not chosen one."""
        if self.corrections.value is not None or self.image.value is None:
            return
        for layer in self._viewer.layers:
            if _meta(layer).get("kind") == "corrections" and _meta(layer).get("source") == self.image.value.name:
                self.corrections.value = layer
                return

    def _on_model_changed(self, *_):
        if not self._torch_ready or not self.model.value:
            return
        from ..modelfile import read_config, resolve_model_path
        from ..models import get_spec

        config = read_config(resolve_model_path(self.model.value))
        features = config.get("arguments", {}).get("features")
        if features:
            self.prune_depth.max = len(features) - 1
        prunable = get_spec(config["architecture"]).prunable
        self.prune_depth.enabled = self.prune_button.enabled = prunable

    def _show_device(self, *_):
        if self._torch_ready:
            self.device_info.value = device_line(self.device.value)

    # -- running ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while a job runs or its layers are still being added."""
        return self.job_running or bool(self._pending_layers)

    def _on_run_clicked(self, *_):
        if self.running:
            self.cancel()
        else:
            self.run()

    def _inputs(self):
        layer = self.image.value
        if layer is None:
            raise ValueError("There is no image layer: open an image (or File > Open Sample > napari-unet) first.")
        if not self.model.value:
            raise ValueError("No model with deep supervision is installed: U-Net++ and U-Net 3+ ship with the "
                             "plugin; reinstall it, or fine-tune one of them.")
        return layer, (layer.data[0] if layer.multiscale else layer.data), self.model.value

    def _corrections_data(self, shape):
        """Copies of the chosen corrections and their reviewed region (Qt thread; both may be None)."""
        layer = self.corrections.value
        if layer is None or layer not in self._viewer.layers:
            return None, None
        truth = np.array(layer.data)
        if truth.shape != tuple(shape):
            raise ValueError(f"'{layer.name}' has shape {truth.shape} but the prediction {tuple(shape)}: choose the "
                             "corrections of this image.")
        reviewed_name = _meta(layer).get("reviewed")
        reviewed = None
        if reviewed_name in self._viewer.layers:
            reviewed = np.array(self._viewer.layers[reviewed_name].data)
        return truth, reviewed

    def _predictor(self, model: str, device: str, side_outputs: bool):
        """A cached predictor (made in the worker thread)."""
        from ..catalog import resolve_model_path
        from ..inference.predictor import Predictor
        from ..inference.supervision import deep_supervision_predictor

        key = (model, device, side_outputs, resolve_model_path(model).stat().st_mtime_ns)
        if key not in self._predictors:
            self._predictors = {k: v for k, v in self._predictors.items() if k[2] != side_outputs}
            self._predictors[key] = deep_supervision_predictor(model, device=device) if side_outputs else \
                Predictor(model, device=device)
        return self._predictors[key]

    def _on_job_started(self):
        self.run_button.text = "Cancel"
        self.prune_button.enabled = self.next_button.enabled = self.rescore_button.enabled = False
        self.status.value = "starting…"

    def _on_job_finished(self):
        self.run_button.text = "Run all depths"
        self.next_button.enabled = self.rescore_button.enabled = True
        self._on_model_changed()

    def run(self):
        """Predict every depth of the chosen model on the chosen image (in a thread worker)."""
        if self.running:
            return
        self.ensure_torch()
        try:
            layer, data, model = self._inputs()
        except ValueError as exc:
            self.report_error(str(exc))
            return
        from ..inference.supervision import predict_depths_iter, score_depths
        from ..jobs import PredictionCancelled

        corrections = self.corrections.value
        stop = threading.Event()
        device = self.device.value
        transform = spatial_transform(layer, None)
        base = f"{layer.name} [{model_label(model)}]"
        try:
            truth, reviewed = self._corrections_data(self._spatial_shape(layer))
        except ValueError as exc:
            self.report_error(str(exc))
            return

        def job():
            predictor = self._predictor(model, device, True)
            try:
                depths = yield from predict_depths_iter(predictor.model, data, predictor=predictor, stop=stop,
                                                        rgb=bool(layer.rgb))
            except PredictionCancelled:
                return None
            scores = None
            if truth is not None:
                scores = score_depths(depths, truth, reviewed, **predictor.model.postprocess)
            meta = {"source": layer.name, "model": str(model)}
            layers = [build_layer(depths.foreground(i), "image", f"{base} {name}",
                                  {**meta, "kind": "depth", "depth": name}, colormap="magma",
                                  contrast_limits=(0.0, 1.0), **transform) for i, name in enumerate(depths.names)]
            layers.append(build_layer(depths.foreground(None), "image", f"{base} ensemble",
                                      {**meta, "kind": "depth", "depth": "ensemble"}, colormap="magma",
                                      contrast_limits=(0.0, 1.0), **transform))
            disagreement = depths.disagreement()
            layers.append(build_layer(disagreement, "image", f"{base} disagreement",
                                      {**meta, "kind": "disagreement"}, colormap="inferno",
                                      blending="additive",  # black where the depths agree: the image shows
                                      contrast_limits=(0.0, 0.5), **transform))
            present = depths.object_probability_map()
            if present is not None:
                layers.append(build_layer(present, "image", f"{base} object present (CGM)",
                                          {**meta, "kind": "object present"}, colormap="viridis", opacity=0.5,
                                          contrast_limits=(0.0, 1.0), **transform))
            return depths, scores, layers, disagreement

        def done(result):
            if result is None or stop.is_set():
                return
            if layer not in self._viewer.layers:
                self.status.value = f"'{layer.name}' was removed while it was predicted; the result was discarded."
                show_info(self.status.value)
                return
            depths, scores, layers, disagreement = result
            self.last_depths, self.last_scores = depths, scores
            self._context = (layer, transform, base, model, disagreement, corrections)
            self._visited = set()
            self._put_layers_one_by_one(layers)
            self.show_depth.reset_choices()
            self._fill_scores(scores)
            text = f"{depths.n_depths} depths in {depths.seconds:.1f} s on {depths.device}"
            if depths.object_probability is not None:
                p = depths.object_probability
                text += f"; object present (CGM) per tile: {np.nanmin(p):.2f}–{np.nanmax(p):.2f}"
            self.status.value = text + "".join(f"\n{w}" for w in depths.warnings)

        self.start_job(job, done, f"napari-unet: depths of {layer.name}", stop=stop)

    def _spatial_shape(self, layer):
        shape = tuple(layer.data[0].shape if layer.multiscale else layer.data.shape)
        return shape[:-1] if layer.rgb else shape

    def _put_layers_one_by_one(self, layers):
        """Add result layers in separate turns of the event loop (short stalls, not one long one)."""
        self._pending_layers = list(layers)

        def add_next():
            if not self._pending_layers:
                return
            put_layer(self._viewer, self._pending_layers.pop(0))
            QTimer.singleShot(0, add_next)

        add_next()

    def rescore(self):
        """Score the last prediction against the corrections as they are now (in a worker)."""
        if self.running or self.last_depths is None:
            if self.last_depths is None:
                self.report_error("Run all depths first: there is nothing to score yet.")
            return
        from ..modelfile import load_model

        depths = self.last_depths
        try:
            truth, reviewed = self._corrections_data(depths.disagreement().shape)
        except ValueError as exc:
            self.report_error(str(exc))
            return
        if truth is None:
            self.report_error("Choose a corrections layer to score against (Correct widget, or any Labels layer).")
            return
        model = self._context[3]
        from ..inference.supervision import score_depths

        def job():
            yield from ()
            return score_depths(depths, truth, reviewed, **load_model(model).postprocess)

        def done(scores):
            self.last_scores = scores
            self._fill_scores(scores)
            self.status.value = "scores updated"

        self.start_job(job, done, "napari-unet: scoring depths")

    def _fill_scores(self, scores):
        from ..inference.supervision import best_score

        if not scores:
            self.scores.value = {"data": [], "index": [], "columns": SCORE_COLUMNS}
            return
        self.scores.value = {"data": [[round(s.dice, 3), round(s.ap50, 3), s.n_objects] for s in scores],
                             "index": [s.name for s in scores], "columns": SCORE_COLUMNS}
        best = best_score(scores)
        native = self.scores.native
        bold = QFont()
        bold.setBold(True)
        for c in range(len(SCORE_COLUMNS)):
            item = native.item(best, c)
            item.setBackground(BEST_BRUSH)
            item.setFont(bold)
        native.verticalHeaderItem(best).setText(f"★ {scores[best].name}")
        native.resizeColumnsToContents()
        self.best_row = best

    def run_pruned(self):
        """Predict with U-Net++'s depth-k sub-network only; time it and score it (in a worker)."""
        if self.running:
            return
        self.ensure_torch()
        try:
            layer, data, model = self._inputs()
            truth, reviewed = self._corrections_data(self._spatial_shape(layer))
        except ValueError as exc:
            self.report_error(str(exc))
            return
        from ..inference.supervision import labels_from, predict_pruned_iter, score_labels
        from ..jobs import PredictionCancelled

        depth = int(self.prune_depth.value)
        stop = threading.Event()
        device = self.device.value
        transform = spatial_transform(layer, None)
        base = f"{layer.name} [{model_label(model)}]"

        shape = self._spatial_shape(layer)
        full_key = (model, device, shape)
        have_full = full_key in self._full_runs

        def job():
            predictor = self._predictor(model, device, False)
            depths = [depth] if have_full else [None, depth]  # None: the full network, the reference
            results = []
            try:
                if not have_full:
                    predictor.warm_up(shape[-predictor.spatial_dims:])
                for k in depths:
                    run = yield from predict_pruned_iter(predictor.model, data, k, predictor=predictor, stop=stop,
                                                         rgb=bool(layer.rgb))
                    prediction = run.prediction
                    labels = labels_from(prediction.probabilities, prediction.target, prediction.spatial_dims,
                                         scale=prediction.scale, **predictor.model.postprocess)
                    score = None if truth is None else score_labels(f"depth {k}", truth, labels,
                                                                    prediction.spatial_dims, reviewed)
                    results.append((run, score))
            except PredictionCancelled:
                return None
            layer_out = build_layer(labels, "labels", f"{base} depth {depth} labels",
                                    {"source": layer.name, "model": str(model), "kind": "labels", "depth": depth},
                                    **transform)
            return results, layer_out

        def done(result):
            if result is None or stop.is_set():
                return
            results, layer_out = result
            if not have_full:
                self._full_runs[full_key] = results[0]
            run, score = results[-1]
            self.last_pruned = run
            put_layer(self._viewer, layer_out)
            self._add_pruned_row(run, score, self._full_runs[full_key])
            self.status.value = f"depth {depth}: {run.ms_per_megapixel:.0f} ms per megapixel on " \
                                f"{run.prediction.device}"

        self.start_job(job, done, f"napari-unet: depth {depth} of {layer.name}", stop=stop)

    def _add_pruned_row(self, run, score, full):
        """One row per pruned run: its time per megapixel, its speed-up over the full network on
        the same image (``full``: its run and score, timed the same way after a warm-up), its score."""
        rows = [list(r) for r in self.pruned.data] if self.pruned.shape[0] else []
        index = list(self.pruned.row_headers) if self.pruned.shape[0] else []

        def row(r, sc, speed):
            return [round(r.ms_per_megapixel), speed, "–" if sc is None else round(sc.dice, 3),
                    "–" if sc is None else round(sc.ap50, 3)]

        full_run, full_score = full
        if "full" not in index:
            rows.append(row(full_run, full_score, "1.0x"))
            index.append("full")
        rows.append(row(run, score, f"{full_run.ms_per_megapixel / run.ms_per_megapixel:.1f}x"))
        index.append(f"depth {run.depth}")
        self.pruned.value = {"data": rows, "index": index, "columns": PRUNE_COLUMNS}
        self.pruned.native.resizeColumnsToContents()

    # -- looking at the results ----------------------------------------------------------
    def _result_layers(self):
        if self._context is None:
            return []
        base = self._context[2]
        return [layer for layer in self._viewer.layers if layer.name.startswith(base) and
                _meta(layer).get("kind") == "depth"]

    def _on_show_depth(self, choice):
        for layer in self._result_layers():
            layer.visible = choice == ALL or _meta(layer).get("depth") == choice

    def next_region(self):
        """Centre the view on the not-yet-reviewed block where the depths disagree most."""
        if self.running:
            return
        if self._context is None:
            self.report_error("Run all depths first: the disagreement between depths says where to look.")
            return
        from ..inference.supervision import regions_to_review

        layer, transform, _base, _model, disagreement, corrections = self._context
        reviewed = None
        if corrections is not None and corrections in self._viewer.layers:
            name = _meta(corrections).get("reviewed")
            if name in self._viewer.layers and self._viewer.layers[name].data.shape == disagreement.shape:
                reviewed = np.array(self._viewer.layers[name].data)
        spatial_dims = self.last_depths.spatial_dims
        visited = set(self._visited)

        def job():
            yield from ()
            for region in regions_to_review(disagreement, spatial_dims, reviewed):
                key = (region.plane, tuple((s.start, s.stop) for s in region.box))
                if key not in visited:
                    return region, key
            return None

        def done(found):
            if found is None:
                self.status.value = "every region where the depths disagree is reviewed (or visited)"
                show_info("napari-unet: nothing left to review where the depths disagree.")
                return
            region, key = found
            self._visited.add(key)
            self._go_to(region, transform)
            self.status.value = f"region {len(self._visited)}: disagreement {region.score:.3f} " \
                                f"(plane {', '.join(map(str, region.plane)) or '-'}, rows {region.box[-2].start}–{region.box[-2].stop}, " \
                                f"columns {region.box[-1].start}–{region.box[-1].stop})"

        self.start_job(job, done, "napari-unet: finding the next region")

    def _go_to(self, region, transform):
        """Set the sliders to the region's plane and centre and zoom the camera on its block."""
        scale, translate = np.asarray(transform["scale"]), np.asarray(transform["translate"])
        world = np.asarray(region.center) * scale + translate
        offset = self._viewer.dims.ndim - len(world)  # the viewer may hold layers with more axes
        displayed = [a - offset for a in self._viewer.dims.displayed]
        for axis, value in enumerate(world):
            if axis not in displayed:
                self._viewer.dims.set_point(offset + axis, value)
        camera = _camera(self._viewer)
        camera.center = tuple(world[a] for a in displayed if a >= 0)
        n_planes = len(region.plane)
        extent = max((s.stop - s.start) * scale[n_planes + i] for i, s in enumerate(region.box))
        canvas = self._viewer.canvas.size if hasattr(self._viewer, "canvas") else self._viewer._canvas_size
        camera.zoom = 0.8 * min(canvas) / max(extent, 1e-9)
