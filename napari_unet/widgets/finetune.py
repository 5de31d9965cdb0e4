"""The Fine-tune dock widget: teach a model the user's corrections, in the background.

Training data are either the corrected layers in the viewer (made by the Correct widget, with
their reviewed regions and images) or a training-set folder. The layers' arrays are copied on
the Qt thread when Train is clicked, so the user can keep painting while the model trains; a
folder's images are read by the run's worker (its index is checked at the click; Cancel stops
the read between entries, and nothing is trained or saved). They are
made fit for the base model by :func:`napari_unet.training.corrections.fit_corrections`, and the
work runs in a thread worker that drains
:func:`napari_unet.training.resume.resuming_finetune_iter`; this module only updates the chart,
the progress bar and the status line. Cancel stops within about a second and keeps the best
model so far; the result is saved in the user's model folder and shows up at once in the Segment
widget's model list.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from pathlib import Path

import napari.viewer
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, LineEdit, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_info, show_warning

from ._base import DEVICES, JobWidget, device_line, layer_meta as _meta
from ._dock import TRAINING_FOLDER, wrap
from ._layers import corrections_full_shape, image_for_corrections, input_images, pixels_source
from ._plot import LossPlot

FROM_VIEWER = "corrected layers in the viewer"
FROM_FOLDER = "training-set folder"
SAME_TARGET = "as the base model"


def advice(result) -> str:
    """What to do next when fine-tuning gained little (a line for the status), else ""."""
    base, best = result.baseline.get("ap50"), result.metrics.get("ap50")
    if base is None or best is None or best - base >= 0.02:
        return ""
    return ("\nlittle gain over the base model: correct more objects (every object in the reviewed area), mark "
            "more area reviewed, or train longer")


def result_message(result) -> str:
    """The status line for a fine-tuning result: what was kept and why, its score against the base
    model, the post-processing and scale chosen, and what to do next."""
    from ..inference.postprocess import postprocess_text  # (loaded by the run by now)

    if result.path is None:
        if result.discarded:  # trained and validated, but no better than the base model
            return (f"{result.discarded} ({result.steps} steps, {result.stopped}); the base model stays your best. "
                    "Correct more objects, train longer, or untick 'Keep only if better' to keep it anyway.")
        return f"{result.stopped} before the first validation: nothing was saved."
    base = result.baseline.get("ap50")
    best = result.metrics.get("ap50")
    gain = "" if base is None or best is None else f" (base model {base:.3f}, {best - base:+.3f})"
    score = f"validation AP@0.5 {best:.3f}" if best is not None else "not validated"
    pp = result.postprocess
    chosen = (f"\npost-processing chosen on the validation region: {postprocess_text(pp)} (AP@0.5 "
              f"{result.tuned_ap50:.3f})" if result.tuned_ap50 is not None else "")
    if result.scale != 1:
        chosen += (f"\nimages resized {result.scale:.2f}x for training (objects of {result.object_diameter:.0f} px); "
                   "the model resizes new images the same way (Segment's object size)")
    if result.weights == "base":  # fine-tuning did not beat the base with tuned post-processing
        score, gain = result.discarded, ""  # which scores, and where its post-processing was chosen
        chosen = f"\npost-processing: {postprocess_text(pp)}"
    if result.resumed:
        chosen += "\nresumed an interrupted run: the steps count the whole run"
    return (f"saved '{result.name}' ({result.stopped}, {result.steps} steps): {score}{gain}{chosen}"
            f"{advice(result)}") + "".join(f"\n{warning}" for warning in result.warnings)


class Notes(list):
    """Lines for the user from a run's preparation in its worker (shown as warnings on the Qt thread)."""


def read_pending(pending: list) -> list:
    """``(image, labels, reviewed)`` triples from :meth:`FinetuneWidget.viewer_corrections`' items:
    the image's pixels under each corrections layer are read here (channels first for RGB)."""
    triples = []
    for image_source, meta, labels, reviewed in pending:
        image = np.array(image_for_corrections(image_source, meta), copy=True)
        if image_source.rgb:
            image = np.moveaxis(image, -1, 0)
        triples.append((image, labels, reviewed))
    return triples


class FinetuneWidget(JobWidget):
    """Dock widget: base model, training data, loss, budget; Train/Cancel with a live chart."""

    job_name = "Fine-tuning"
    cancelled_message = None  # the result says what was kept
    cancelling_message = "stopping (the best model so far is kept)…"

    #: the open Fine-tune docks (the Correct dock shows the weight map of their chosen loss)
    instances: "weakref.WeakSet[FinetuneWidget]" = weakref.WeakSet()

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)  # PyTorch loads in a worker (widgets._workers.warm_up)
        FinetuneWidget.instances.add(self)
        self.last_result = None
        self._build_controls()
        self.train_button.changed.connect(self._on_train_clicked)
        self.run_button.changed.connect(self.run_new_model)
        self.export_button.changed.connect(self.export_model)
        self.device.changed.connect(self._show_device)
        self.loss.changed.connect(self._on_loss_changed)
        self._on_loss_changed()
        from ..catalog import on_models_changed

        on_models_changed(self.refresh_models)
        if not self._torch_ready:
            self.device_info.value = "loading PyTorch…"

    def _build_controls(self):
        from ..training.finetune import LOSS_PRESETS, FinetuneSettings

        defaults = FinetuneSettings()
        patch, batch = defaults.patches(2)
        self.model = ComboBox(label="Base model", choices=self._model_choices,
                              tooltip="The model to start from: a bundled one or one of yours. It is never modified.")
        self.source = ComboBox(label="Train on", choices=(FROM_VIEWER, FROM_FOLDER), value=FROM_VIEWER,
                               tooltip="The corrected layers in this viewer (Correct widget), or a training-set folder.")
        self.image = ComboBox(label="Image", choices=self._image_choices, nullable=True, value=None,
                              tooltip="Only for corrections that do not say which image they belong to (masks "
                                      "opened from a file): their image. Empty: the only open image of their shape.")
        self.folder = TRAINING_FOLDER.field(tooltip="The training-set folder (shared with the Correct dock).")
        self.loss = ComboBox(label="Loss", choices=list(LOSS_PRESETS), value=defaults.loss,
                             tooltip="Weight-map cross-entropy is the U-Net paper's loss: it stresses the thin gaps "
                                     "between touching objects.")
        self.w0 = FloatSpinBox(label="w0", value=defaults.w0, min=0.0, max=100.0, step=1.0,
                               tooltip="Weight-map amplitude at the gaps (the paper: 10).")
        self.sigma = FloatSpinBox(label="sigma (px)", value=defaults.sigma, min=0.5, max=100.0, step=0.5,
                                  tooltip="Weight-map width in pixels (the paper: about 5).")
        self.target = ComboBox(label="Target", choices=(SAME_TARGET, "binary", "boundary"), value=SAME_TARGET,
                               tooltip="'boundary' learns background / interior / boundary (a new output layer).")
        self.minutes = FloatSpinBox(label="Minutes", value=defaults.minutes, min=0.1, max=24 * 60, step=0.5,
                                    tooltip=f"Training time, validation included. {defaults.minutes:g} min on a "
                                            "laptop CPU already gives a clear gain on a new kind of image "
                                            f"(2D models: batches of {batch} patches of {patch[0]} px, 3D: "
                                            f"{defaults.patches(3)[1]} of {' x '.join(map(str, defaults.patches(3)[0]))}; "
                                            f"learning rate {defaults.lr:g} with warm-up and cosine decay).")
        self.augment = CheckBox(text="Augmentation (flips, elastic, intensity)", value=defaults.augment)
        self.only_if_better = CheckBox(text="Keep only if better than the base model", value=defaults.only_if_better,
                                       tooltip="Save the new model only if it scores better than the base model on "
                                               "the held-out part of your corrections.")
        self.validate = CheckBox(text="Hold out part to check the model", value=defaults.validate,
                                 tooltip="Score the model on a held-out strip of each image (every 4th image from "
                                         "four on). Off: everything trains and the model is kept unchecked.")
        self.resize = CheckBox(text="Resize objects to the network's size", value=defaults.resize,
                               tooltip="Shrink the corrected images so that their objects reach the size the base "
                                       "model works at (objects over 30 px for models that declare none); the new "
                                       "model resizes images the same way. Off: train at the images' own size.")
        self.resume = CheckBox(text="Resume an interrupted run", value=True,
                               tooltip="When napari closed (or crashed) during a run with the same base model, "
                                       "corrections, settings and name, Train goes on from its last epoch instead of "
                                       "starting again (its state is kept after every epoch).")
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto")
        self.device_info = Label(label="")
        self.name = LineEdit(label="Save as", value="",
                             tooltip="Name of the new model (empty: <base>-ft-<date>), saved in your model folder.")
        self.train_button = PushButton(text="Train")
        self.plot = LossPlot()
        self._new_chart = False
        self.status = Label(label="")
        wrap(self.status)
        wrap(self.device_info)
        self.run_button = PushButton(text="Run new model on current layer", enabled=False)
        from ._export import export_button

        self.export_button = export_button()
        self.extend([self.model, self.source, self.image, self.folder, self.minutes, self.name])
        self.add_section("Loss, target, device", [self.loss, self.w0, self.sigma, self.target, self.augment,
                                                   self.resize, self.validate, self.only_if_better, self.resume,
                                                   self.device, self.device_info])
        for widget in (self.train_button, self.plot, self.status, self.run_button,  # in this order, below
                       self.export_button):
            self.add_qt(getattr(widget, "native", widget))
        self.finish_layout()

    def _on_torch_ready(self):
        self._show_device()

    def _model_choices(self, _widget=None):
        from ..catalog import known_models

        return list(known_models())

    def refresh_models(self):
        self.model.reset_choices()

    def _show_device(self, *_):
        if self._torch_ready:
            self.device_info.value = device_line(self.device.value, "trains on")

    def _on_loss_changed(self, *_):
        from ..training.finetune import LOSS_PRESETS

        uses_map = LOSS_PRESETS.get(self.loss.value, ("", None))[1] is not None
        self.w0.enabled = self.sigma.enabled = uses_map

    # -- training data ---------------------------------------------------------------------
    def _image_of(self, layer, image_name) -> tuple[object, str]:
        """``(image layer, "")`` for a corrections layer, or ``(None, why not)``: the layer it was
        made from, else the one chosen in Image, else the only image of its shape."""
        if image_name and image_name in self._viewer.layers:
            return self._viewer.layers[image_name], ""
        shape = corrections_full_shape(layer)

        def fits(image):
            data_shape = tuple(image.data[0].shape if image.multiscale else image.data.shape)
            return (data_shape[:-1] if image.rgb else data_shape)[-len(shape):] == shape

        chosen = self.image.value
        if chosen is not None and chosen in self._viewer.layers and fits(chosen):
            return chosen, ""
        fitting = [im for _, im in input_images(self._viewer) if fits(im)]
        if len(fitting) == 1:
            return fitting[0], ""
        what = (f"the image of '{layer.name}' ({image_name}) is no longer in the viewer" if image_name
                else f"'{layer.name}' does not say which image it belongs to")
        if not fitting:
            return None, f"{what} and no open image has its shape {shape}: open it again under that name"
        return None, (f"{what} and {len(fitting)} images have its shape {shape}: choose its image in 'Image'")

    def viewer_corrections(self) -> tuple[list, list, str]:
        """What the corrected layers in the viewer hold now, as ``(pending, names, source)``: per
        layer a copy of its labels and reviewed mask, and what its image's pixels are read from
        (read by :func:`read_pending`, in the run's worker: a lazy image is read from disk); the
        ``(labels, image)`` layer names, for the messages of
        :func:`~napari_unet.training.corrections.fit_corrections`. A layer whose image cannot be
        found is skipped with a warning (an error when none is left)."""
        pending, names, skipped = [], [], []
        for layer in self._viewer.layers:
            meta = _meta(layer)
            if not isinstance(layer, Labels) or meta.get("kind") != "corrections":
                continue
            reviewed_name = meta.get("reviewed")
            reviewed = (np.asarray(self._viewer.layers[reviewed_name].data) > 0
                        if reviewed_name in self._viewer.layers else np.zeros(layer.data.shape, bool))
            if not reviewed.any():
                continue
            image_layer, why = self._image_of(layer, meta.get("source"))
            if image_layer is None:
                skipped.append(why)
                continue
            source = pixels_source(image_layer)
            pending.append((source, dict(meta), np.array(layer.data, copy=True), reviewed))
            names.append((layer.name, image_layer.name))
        if not pending:
            if skipped:
                raise ValueError(skipped[0][0].upper() + skipped[0][1:] + "." +
                                 "".join(f" Also: {why}." for why in skipped[1:]))
            raise ValueError("No reviewed corrections in the viewer: use the Correct widget (Correct, edit, "
                             "mark reviewed), or train on a training-set folder.")
        for why in skipped:
            show_warning(f"Skipped: {why}.")
        return pending, names, "layers " + ", ".join(n for n, _ in names)

    def viewer_triples(self) -> tuple[list, str]:
        """Copies of ``(image, labels, reviewed)`` of every corrected layer in the viewer, as
        ``(triples, source)`` (:meth:`viewer_corrections`, read at once)."""
        pending, _, source = self.viewer_corrections()
        return read_pending(pending), source

    def training_set(self):
        """The chosen training-set folder, opened (its index only; the images are read by the
        run's worker): ``ValueError`` when it is not one, or empty."""
        from ..trainingset import TrainingSet

        return TrainingSet.open_existing(Path(self.folder.value))

    def _base_model_inputs(self) -> tuple[int, int]:
        """``(in_channels, spatial_dims)`` of the chosen base model, from its config (no weights)."""
        from ..modelfile import read_config, resolve_model_path
        from ..models import get_spec

        config = read_config(resolve_model_path(self.model.value))
        dims = config["arguments"].get("spatial_dims", get_spec(config["architecture"]).spatial_dims)
        return int(config["input"]["channels"]), int(dims)

    # -- running ---------------------------------------------------------------------------
    def _on_train_clicked(self, *_):
        self.run_or_cancel(self.train)

    def settings(self):
        from ..training.finetune import FinetuneSettings

        return FinetuneSettings(minutes=float(self.minutes.value), loss=self.loss.value, w0=float(self.w0.value),
                                sigma=float(self.sigma.value), augment=bool(self.augment.value),
                                target=None if self.target.value == SAME_TARGET else self.target.value,
                                only_if_better=bool(self.only_if_better.value), validate=bool(self.validate.value),
                                resize=bool(self.resize.value), device=self.device.value)

    def train(self):
        """Start fine-tuning in a thread worker (returns at once)."""
        if self.running:
            return
        try:
            if not self.model.value:
                raise ValueError("Choose a base model.")
            self.ensure_torch()
            inputs = self._base_model_inputs()
            # the images are read in the worker: a folder's (seconds for a large set), and the layers' (a lazy
            # image is read from disk); here only what they are read from
            if self.source.value == FROM_VIEWER:
                pending, names, source = self.viewer_corrections()
                folder, entries = None, []
            else:
                folder = self.training_set()
                pending, source = None, str(folder.folder)
                entries = folder.names()
                names = [(f"masks/{n}", f"images/{n}") for n in entries]
        except (ValueError, KeyError) as exc:
            self.report_error(str(exc.args[0]) if exc.args else str(exc))
            return
        from ..training.resume import resuming_finetune_iter

        settings, base, name = self.settings(), self.model.value, self.name.value.strip() or None
        stop, lifetime, resume = threading.Event(), self.lifetime, bool(self.resume.value)

        def job():
            from ..training.corrections import fit_corrections

            if pending is not None:
                data = read_pending(pending)
            else:
                started = time.perf_counter()
                data = folder.triples(entries, stop)  # Cancel is heard between entries
                if data is None:
                    from ..training.finetune import FinetuneResult

                    return FinetuneResult(None, name or "", {}, {}, "stopped by user", 0,
                                          time.perf_counter() - started)
            data, changed = fit_corrections(data, *inputs, names=names)
            if changed:
                yield Notes(changed)
            # the run's state is kept after every epoch: if napari closes (or crashes) before the end, the same
            # base, corrections, settings and name resume from there next time
            return (yield from resuming_finetune_iter(base, data, settings, name=name, stop=stop, source=source,
                                                      resume=resume, keep_state=lambda: lifetime.closed))

        self._started = time.perf_counter()
        self._budget = settings.minutes * 60 if settings.minutes else None
        self._new_chart = True  # the last run's chart stays until this one reports (a bad input keeps it)
        self.run_button.enabled = False
        self.start_job(job, self._on_result, "napari-unet: fine-tuning", total=100, stop=stop)
        self.status.value = (f"preparing {len(names)} image(s) and scoring "
                             "the base model…")

    def _on_progress(self, event):
        if isinstance(event, Notes):  # what was changed to fit the base model, found while reading the folder
            for note in event:
                show_warning(note)
            return
        if self._new_chart:
            self.plot.clear()
            self._new_chart = False
        if event.phase:  # seconds of work after training (the post-processing), no step
            self.status.value = f"step {event.step}: {event.phase}"
            if self._progress is not None:  # napari's activity dock says it too
                self._progress.set_description(f"napari-unet: {event.phase.split(': ')[-1].rstrip('…')}")
            return
        if event.step == 0:
            if event.val_ap is not None:
                self.plot.set_baseline(event.val_ap)
                self.status.value = f"base model: validation AP@0.5 {event.val_ap:.3f}; training…"
            return
        finite = math.isfinite(event.loss)  # the closing validation event carries no loss
        if finite:
            self.plot.add_loss(event.step, event.loss)
        if event.validated and event.val_ap is not None:
            self.plot.add_score(event.step, event.val_ap)
        left = "" if event.seconds_left is None else f", {event.seconds_left / 60:.1f} min left"
        parts = ([f"loss {event.loss:.3f}"] if finite else []) + \
            ([f"validation AP@0.5 {event.val_ap:.3f}"] if event.val_ap is not None else [])
        self.status.value = f"step {event.step}: {', '.join(parts) or 'validating'}{left}"
        bar = self._progress
        if bar is not None and self._budget:
            bar.n = int(min(100, 100 * (time.perf_counter() - self._started) / self._budget))
            bar.set_description(f"napari-unet: fine-tuning{left}")

    def _on_result(self, result):
        from ..catalog import notify_models_changed

        self.last_result = result
        self.status.value = result_message(result)
        if result.path is None:
            return
        for warning in result.warnings:
            show_warning(warning)
        notify_models_changed()
        self.run_button.enabled = True
        show_info(f"napari-unet: fine-tuned model '{result.name}' saved.")

    def _on_job_started(self):
        self.train_button.text = "Cancel"  # whatever runs (training, an export): the button stops it

    def _on_job_finished(self):
        self.train_button.text = "Train"
        # (a run that failed or saved nothing leaves the previous model runnable)
        self.run_button.enabled = self.last_result is not None and self.last_result.path is not None

    def export_model(self, *_):
        """Export the last fine-tuned model (else the chosen base model) as a BioImage.IO package (asks where;
        runs as a job)."""
        from ._export import export_in_background

        if self.last_result is not None and self.last_result.path is not None:
            export_in_background(self, self.last_result.path, self.last_result.name)
        elif self.model.value:
            export_in_background(self, self.model.value, Path(str(self.model.value)).stem)
        else:
            self.report_error("Choose a base model or fine-tune one first, then export.")

    def run_new_model(self, *_):
        """Open (or reuse) the Segment widget, choose the new model and run it on the current image."""
        if self.last_result is None or self.last_result.path is None:
            return None
        _, segment = self._viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
        if segment.running:  # its fields stay as they are: the user sees what the next click runs
            self.status.value = "The Segment dock is still busy: run the new model there when it is done."
            return segment
        segment.refresh_models()
        segment.model.value = self.last_result.name
        segment.run()
        return segment
