"""The Deep-supervision dock widget: what every depth of U-Net++ / U-Net 3+ predicts.

One tiled pass gives every side output (:mod:`napari_unet.inference.supervision`); each becomes
a probability layer named by its depth, beside the ensemble, a disagreement map and, for U-Net 3+,
the classification-guided module's "object present" probability per tile. Against a corrected
Labels layer a table gives each depth's Dice and AP@0.5 (within the reviewed region when there is
one) and highlights the best. "Run pruned" times U-Net++'s depth-k sub-network alone. "Next region
to review" jumps to where the depths disagree most and nobody has reviewed yet.

Torch and scoring run in thread workers on the core's functions (:mod:`napari_unet.inference.supervision`,
the tables and camera moves of :mod:`napari_unet.inference.review`); this module only reads widgets
and puts layers.
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
from ._layers import KEY, build_layer, model_label, put_layer, spatial_transform
from ._supervision_review import ALL, PruningAndReview, _grid

NO_CORRECTIONS = "none"
BEST_BRUSH = QBrush(QColor(60, 140, 60))


def _depth_layers(depths, disagreement, base: str, meta: dict, transform: dict) -> list:
    """The layers of a :class:`DepthPrediction` (built in the worker): each depth and the ensemble,
    the disagreement between them and, for U-Net 3+, the "object present" probability per tile."""
    def probability(data, suffix, extra, **style):
        return build_layer(data, "image", f"{base} {suffix}", {**meta, **extra}, contrast_limits=(0.0, 1.0),
                           **style, **transform)

    layers = [probability(depths.foreground(i), name, {"kind": "depth", "depth": name}, colormap="magma")
              for i, name in enumerate(depths.names)]
    layers.append(probability(depths.foreground(None), "ensemble", {"kind": "depth", "depth": "ensemble"},
                              colormap="magma"))
    layers.append(build_layer(disagreement, "image", f"{base} disagreement",
                              {**meta, "kind": "disagreement"}, colormap="inferno",
                              blending="additive",  # black where the depths agree: the image shows
                              contrast_limits=(0.0, 0.5), **transform))
    present = depths.object_probability_map()
    if present is not None:
        layers.append(probability(present, "object present (CGM)", {"kind": "object present"}, colormap="viridis",
                                  opacity=0.5))
    return layers


class SupervisionWidget(PruningAndReview, JobWidget):
    """Dock widget: image, deep-supervision model, corrections; per-depth layers and scores (and,
    from :class:`~._supervision_review.PruningAndReview`, pruned runs and the next region to review)."""

    job_name = "The deep-supervision run"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)  # PyTorch loads in a worker (widgets._workers.warm_up)
        from ..inference.predictor_cache import PredictorCache

        # the last predictor with side outputs (all depths) and the last plain one (pruning)
        self._predictors = {side_outputs: PredictorCache() for side_outputs in (True, False)}
        self._full_runs: dict = {}  # (model, device, image, shape, corrections) -> (PrunedRun, score): the last full run
        self._pending_layers: list = []  # result layers still to be added, one per turn of the event loop
        self._visited: set = set()
        self.last_depths = None  # the last DepthPrediction, for scripts and tests
        self.last_scores = None
        self.last_pruned = None
        self._context = None  # (image layer, transform, base name, model, disagreement, corrections) of last_depths
        self._make_controls()
        self._lay_out()
        self._connect(viewer)
        if not self._torch_ready:
            self.device_info.value = "loading PyTorch…"

    def _make_controls(self):
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

    def _lay_out(self):
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

    def _connect(self, viewer):
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
        self._on_active_layer()
        from ..catalog import on_models_changed

        on_models_changed(self.refresh_models)

    def _on_torch_ready(self):
        self.refresh_models()
        self._show_device()

    # -- choices ------------------------------------------------------------------------
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
        from ..modelinfo import deep_supervision_models

        return deep_supervision_models(models)

    def refresh_models(self):
        self.model.reset_choices()

    def _refresh_layers(self, *_):
        self.image.reset_choices()
        self.corrections.reset_choices()
        # a layer added, removed or moved leaves the user's choice alone (napari announces a new
        # layer before it makes it active: following the active layer here would switch to another)
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]  # the top-most image
        self._default_corrections()

    def _on_active_layer(self, *_):
        active = self._viewer.layers.selection.active
        if isinstance(active, Image) and KEY not in active.metadata and self.image.value is not active:
            self.image.value = active
        elif self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]

    def _default_corrections(self):
        """Pick the Correct widget's layer for this image when the user has not chosen one, or when
        the one chosen corrects another image (never score an image against another's objects)."""
        if self.image.value is None:
            return
        chosen = self.corrections.value
        if chosen is not None and _meta(chosen).get("source") in (None, "", self.image.value.name):
            return
        for layer in self._viewer.layers:
            if _meta(layer).get("kind") == "corrections" and _meta(layer).get("source") == self.image.value.name:
                self.corrections.value = layer
                return
        if chosen is not None:  # another image's: none rather than the wrong ones
            self.corrections.value = None

    def _on_model_changed(self, *_):
        if not self._torch_ready or not self.model.value:
            return
        from ..modelfile import read_config, resolve_model_path
        from ..modelinfo import pruning

        deepest, prunable = pruning(read_config(resolve_model_path(self.model.value)))
        if deepest:
            self.prune_depth.max = deepest
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
        self.run_or_cancel(self.run)

    def _check_inputs(self):
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
        source = _meta(layer).get("source")
        if source and self.image.value is not None and source != self.image.value.name:
            raise ValueError(f"'{layer.name}' corrects '{source}', not '{self.image.value.name}': choose the "
                             "corrections of this image (or none).")
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
        """The cached predictor of these settings (made in the worker thread; a model file
        rewritten since is loaded again). With ``side_outputs``, one that returns every depth."""
        from ..inference.predictor_cache import PredictorSettings
        from ..inference.supervision import require_side_outputs

        settings = PredictorSettings(model, device=device, side_outputs=side_outputs).stamped()
        predictor = self._predictors[side_outputs].get(settings)
        return require_side_outputs(predictor) if side_outputs else predictor

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
        inputs = self._ready_to_start()
        if inputs is None:
            return
        layer, data, model = inputs
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
            # layers are built here: their array work stays off the Qt thread
            disagreement = depths.disagreement()
            layers = _depth_layers(depths, disagreement, base, {"source": layer.name, "model": str(model)}, transform)
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
            truth, reviewed = self._corrections_data(self._context[4].shape)  # the disagreement map's
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
            if self.cancelled:  # Cancel: the table stays as it was
                return
            self.last_scores = scores
            self._fill_scores(scores)
            self.status.value = "scores updated"

        self.start_job(job, done, "napari-unet: scoring depths")

    def _fill_scores(self, scores):
        """The scores table, its best row highlighted and starred."""
        from ..inference.review import score_table

        table, best = score_table(scores)
        self.scores.value = table
        if best is None:
            return
        native = self.scores.native
        bold = QFont()
        bold.setBold(True)
        for c in range(len(table["columns"])):
            item = native.item(best, c)
            item.setBackground(BEST_BRUSH)
            item.setFont(bold)
        native.verticalHeaderItem(best).setText(f"★ {scores[best].name}")
        native.resizeColumnsToContents()
        self.best_row = best

