"""The Correct dock widget: turn a prediction into corrections, mark what was reviewed, keep it.

- "Correct" copies a labels layer into an editable ``<name> corrected`` layer (the prediction
  and the image stay untouched), selects it and starts napari's paint mode with a fresh id.
- Click tools for what napari lacks (delete an object, merge two, split one along a line
  between two clicks), plus remove-small and relabel 1..N; every edit goes through
  ``Labels.data_setitem`` so napari's undo (Ctrl+Z) reverts it.
- The reviewed region is a translucent ``<name> reviewed`` labels layer (1 = checked): mark the
  whole image, the current plane, the visible area, or paint it with napari's brush. Pixels
  outside it are ignored by the fine-tuning loss.
- "Show weight map" adds the U-Net paper's weight map of the corrections (w0, sigma in pixels
  or micrometres from the layer's scale), computed as the dock's job (a worker, napari's
  progress bar; :class:`~._base.JobWidget`).
- A large layer is corrected region by region; "Write into the full labels" writes a corrected
  region back into the labels it was copied from, as the dock's job
  (:mod:`napari_unet.writeback`: new ids kept apart, coarse levels updated, refused when read-only).
- "Add to training set" stores image + corrections + reviewed region in a training-set folder;
  from then on every edit is saved again (atomically) a second after the user stops editing,
  and once more, at once, when the viewer window closes (:mod:`._autosave`). A failed save (full
  disk, a killed worker) leaves the previous files whole and the edits in the layer; they are
  saved again with the next edit.

The layers are found and made by :mod:`._correct_layers`; the arithmetic of edits, regions and
reviewed marks is :mod:`napari_unet.editing`'s.
"""

from __future__ import annotations

import threading
from pathlib import Path

import napari.viewer
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, PushButton, SpinBox
from napari.utils.notifications import show_info

from .. import editing
from . import _correct_layers as layers
from . import _workers
from ._autosave import Autosave
from ._base import JobWidget, layer_meta as _meta
from ._dock import TRAINING_FOLDER, wrap
from ._layers import KEY, current_plane, image_for_corrections, pixels_source, real_viewer

TOOLS = ("paint (napari)", "delete object (click)", "merge objects (click two)", "split object (click two ends)")


def _load_edit_tools() -> None:
    import importlib

    importlib.import_module("scipy.ndimage")


class CorrectWidget(JobWidget):
    """Dock widget for correcting masks and collecting them into a training set.

    Its jobs (:class:`~._base.JobWidget`, one at a time, in workers) are the weight map, adding to
    the training set, opening one, and writing a corrected region back into large labels; the
    saves of the edits run beside them
    (:class:`~._autosave.Autosave`), never waiting for them."""

    job_name = "Weight map"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, warm_up=False)
        # nothing to wait for: opening the dock loads no PyTorch, the weight map's job imports it in its worker
        self._torch_ready = True
        self._clicks: list = []  # pending click positions of a two-click tool
        self._hooked: dict[int, tuple] = {}  # id of a watched layer -> (layer, its event callbacks)
        self._writing = None  # (corrected layer, labels layer, outcome) while a write into large labels runs
        self._build_controls()
        # edits of layers linked to a training set are saved a second after the last one, and on closing
        # saving goes on when the dock is closed (its layers still take edits); it ends with napari
        saves = _workers.Lifetime()
        saves.attach(self.native, removal=False)
        self.autosave = Autosave(viewer, saves, self._say, self.report_error, self.native)
        self._connect_controls()
        events = viewer.layers.events
        for event in (events.inserted, events.removed):
            event.connect(lambda *_: self.source.reset_choices())
        events.inserted.connect(self._on_inserted)
        events.removing.connect(self._on_removing)
        for layer in viewer.layers:
            self._watch(layer)
        # the split tool's scipy.ndimage, loaded in a worker (0.35-0.5 s on the Qt thread when Correct is the only
        # dock; with another dock open, its warm-up loads it with the post-processing)
        _workers.start(_load_edit_tools, lifetime=self.lifetime)

    def _build_controls(self):
        self.source = ComboBox(label="Labels", choices=self._labels_choices,
                               tooltip="The labels to correct (a prediction, or your own layer).")
        self.correct_button = PushButton(text="Correct")
        self.draw_button = PushButton(text="Draw a missing object",
                                      tooltip="Click around the outline of an object the model missed; a double "
                                              "click (or Enter) closes it and fills it with a new id.")
        self.tool = ComboBox(label="Click tool", choices=TOOLS, value=TOOLS[0],
                             tooltip="What a click on the corrected layer does. Ctrl+Z undoes any edit.")
        self.min_size = SpinBox(label="Min size (px)", value=30, min=1, max=10**7)
        self.remove_small_button = PushButton(text="Remove objects under min size")
        self.relabel_button = PushButton(text="Relabel 1..N")
        self.review_whole = PushButton(text="Mark whole image reviewed")
        self.review_plane = PushButton(text="Mark current plane reviewed")
        self.review_view = PushButton(text="Mark visible area reviewed")
        self.review_clear = PushButton(text="Clear reviewed")
        self.w0 = FloatSpinBox(label="w0", value=10.0, min=0.0, max=100.0, step=1.0,
                               tooltip="Weight of the gaps between touching objects (the U-Net paper: 10).")
        self.sigma = FloatSpinBox(label="sigma", value=5.0, min=0.1, max=100.0, step=0.5,
                                  tooltip="Width of the gap weights (the paper: about 5 pixels).")
        self.sigma_unit = ComboBox(label="sigma unit", choices=("pixels", "micrometres (layer scale)"),
                                   value="pixels")
        self.weight_button = PushButton(text="Show weight map")
        self.folder = TRAINING_FOLDER.field(tooltip="A folder for your corrections (images/, masks/, reviewed/ and "
                                                    "index.json), shared with the Fine-tune dock.")
        self.plane_only = CheckBox(text="Only the current plane (stacks)", value=False)
        self.add_button = PushButton(text="Add to training set")
        self.write_button = PushButton(text="Write into the full labels",
                                       tooltip="A region of a large labels layer: write the corrected region back into "
                                               "the labels it was copied from (new objects get new ids).")
        self.open_button = PushButton(text="Open training set")
        self.status = Label(label="")
        wrap(self.status)
        self.extend([self.source, self.correct_button, self.draw_button, self.tool, self.review_whole, self.review_plane,
                     self.review_view, self.review_clear, self.folder, self.add_button, self.write_button])
        self.add_section("Clean-up, weight map, training set", [
            self.min_size, self.remove_small_button, self.relabel_button, self.w0, self.sigma, self.sigma_unit,
            self.weight_button, self.plane_only, self.open_button])
        self.add_qt(self.status.native)
        self.finish_layout()

    def _connect_controls(self):
        for button, action, args in (
                (self.correct_button, self.start_correcting, ()), (self.draw_button, self.draw_missing, ()),
                (self.remove_small_button, self.remove_small, ()), (self.relabel_button, self.relabel, ()),
                (self.review_whole, self.mark_reviewed, ("image",)), (self.review_plane, self.mark_reviewed, ("plane",)),
                (self.review_view, self.mark_reviewed, ("view",)), (self.review_clear, self.mark_reviewed, ("clear",)),
                (self.weight_button, self.show_weight_map, ()), (self.add_button, self.add_to_training_set, ()),
                (self.write_button, self.write_back, ()),
                (self.open_button, self.open_training_set, ())):
            button.changed.connect(lambda *_, action=action, args=args: self._guard(action, *args))
        self.tool.changed.connect(self._on_tool_changed)

    # -- helpers ---------------------------------------------------------------------------
    def _guard(self, fn, *args):
        """Run a button's action; a ValueError becomes a notification, nothing else changes."""
        try:
            return fn(*args)
        except (ValueError, KeyError) as exc:
            self.report_error(str(exc.args[0]) if exc.args else str(exc))
        return None

    def _say(self, text: str):
        self.status.value = text

    def _labels_choices(self, _widget=None):
        return layers.correctable_labels(self._viewer)

    def corrected_layer(self):
        """The corrected layer to work on: the selected one, else the one made from ``Labels``."""
        return layers.find_corrected(self._viewer, self.source.value)

    def reviewed_layer(self, corrected):
        return layers.reviewed_layer(self._viewer, corrected)

    def source_image(self, corrected):
        """The image the corrections belong to (by the prediction's metadata), or None."""
        return layers.source_image(self._viewer, corrected)

    def flush(self):
        """Save pending edits now, in a worker (used by tests)."""
        self.autosave.flush()

    def flush_now(self):
        """Save pending edits on this thread, after any save in progress."""
        self.autosave.flush_now()

    # -- correcting ------------------------------------------------------------------------
    def start_correcting(self):
        """Copy the chosen labels into a new editable layer, select it and start painting."""
        source = self.source.value
        if source is None:
            raise ValueError("There is no labels layer: run the Segment widget (or add a labels layer) first.")
        region = None
        if _meta(source).get("kind") == "corrections":
            layer = source
        else:
            layer, region = layers.editable_copy(self._viewer, source)
        self.reviewed_layer(layer)
        self._viewer.layers.selection.active = layer
        layer.selected_label = layers.fresh_label(layer)
        layer.mode = "paint"
        self.tool.value = TOOLS[0]
        self.status.value = (f"Correcting '{layer.name}': paint, fill and erase with napari's tools (new id "
                             f"{layer.selected_label} is ready); mark what you checked as reviewed.")
        if region is not None:
            where = ", ".join(f"{s.start}:{s.stop}" for s in region)
            self.status.value += (f" '{source.name}' is large: this layer holds its region [{where}] (what was "
                                  f"visible, at most {editing.REGION_PIXELS // 2**20} Mpx at full resolution); pan or "
                                  "zoom, show the labels again and press Correct for another region.")
        return layer

    def draw_missing(self):
        """napari's polygon tool on the corrected layer with a fresh id: each outline closed by a
        double click is filled as a new object, and the next id is ready for the next one."""
        layer = self.corrected_layer()
        self._viewer.layers.selection.active = layer
        self.tool.value = TOOLS[0]
        layer.selected_label = layers.fresh_label(layer)
        layer.mode = "polygon"
        self.status.value = (f"Click around the missing object's outline; a double click (or Enter) closes and fills "
                             f"it as object {layer.selected_label}. Escape drops the outline; Ctrl+Z undoes.")
        return layer

    def _on_labels_update(self, event):
        """After a polygon filled the selected id, the next outline gets a new one."""
        layer = event.source
        if layer.mode == "polygon" and np.any(np.asarray(layer.data) == layer.selected_label):
            layer.selected_label = layers.fresh_label(layer)

    def _on_inserted(self, event):
        self._watch(event.value)

    def _watch(self, layer):
        """Hook our click tools into corrected layers and watch them (and their reviewed layers) for autosave."""
        kind = _meta(layer).get("kind")
        if kind not in ("corrections", "reviewed") or id(layer) in self._hooked:
            return
        if kind == "corrections":
            layer.mouse_drag_callbacks.append(self._on_click)

        def edited(*_):
            self.autosave.mark_dirty(layer)
        layer.events.paint.connect(edited)
        layer.events.data.connect(edited)
        if kind == "corrections":  # napari says "paint" before the pixels change, "labels_update" after
            layer.events.labels_update.connect(self._on_labels_update)
        self._hooked[id(layer)] = (layer, edited)

    def _on_removing(self, event):
        """A layer is about to leave the viewer (deleted, or napari closing: the viewer removes
        every layer first): save its pending edits now, then let go of it (no callback of ours
        stays on a removed layer)."""
        try:
            layer = event.source[event.index]
        except (IndexError, TypeError, AttributeError):
            return
        if self._writing is not None and layer is self._writing[1] and self._stop is not None:
            self._stop.set()  # its store may go with it: the write stops before it begins
        if id(layer) not in self._hooked:
            return
        if self.autosave.pending:
            self.autosave.flush_now(only=layer)
        layer, edited = self._hooked.pop(id(layer))
        if self._on_click in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_click)
        layer.events.paint.disconnect(edited)
        if _meta(layer).get("kind") == "corrections":
            layer.events.labels_update.disconnect(self._on_labels_update)
        layer.events.data.disconnect(edited)

    def _on_tool_changed(self, *_):
        self._clicks = []
        if self.tool.value != TOOLS[0]:
            try:
                layer = self.corrected_layer()
            except ValueError:
                return
            layer.mode = "pan_zoom"  # a click picks an object instead of painting
            self._viewer.layers.selection.active = layer
            self.status.value = {TOOLS[1]: "Click an object to delete it.",
                                 TOOLS[2]: "Click the object to keep, then the one to merge into it.",
                                 TOOLS[3]: "Click where the cut starts, then where it ends (outside the object)."
                                 }[self.tool.value]

    def _on_click(self, layer, event):
        if self.tool.value == TOOLS[0] or layer.mode != "pan_zoom" or event.type != "mouse_press":
            return
        self._guard(self.click, layer, np.asarray(layer.world_to_data(event.position)))

    def click(self, layer, position):
        """Apply the current click tool at ``position`` (data coordinates) of ``layer``."""
        data = np.asarray(layer.data)
        pixel = editing.pixel_at(position, data.shape)
        tool = self.tool.value
        if tool == TOOLS[1]:
            self.apply(layer, editing.delete_object(data, data[pixel]))
        elif tool == TOOLS[2]:
            self._clicks.append(data[pixel])
            if len(self._clicks) == 2:
                keep, other = self._clicks
                self._clicks = []
                self.apply(layer, editing.merge_objects(data, keep, other))
            else:
                self.status.value = f"Keep object {data[pixel]}: now click the object to merge into it."
        elif tool == TOOLS[3]:
            self._clicks.append(np.asarray(position, float))
            if len(self._clicks) == 2:
                points = np.stack(self._clicks)
                self._clicks = []
                self.apply(layer, editing.split_object(data, points, above=_meta(layer).get("region_max", 0)))
            else:
                self.status.value = "Now click where the cut ends."

    def apply(self, layer, edit: editing.Edit):
        """Apply an edit through napari's history (Ctrl+Z undoes it), widening the layer's type when
        a new id does not fit it."""
        if edit.size:
            layers.apply_edit(layer, edit)
            self.autosave.mark_dirty(layer)
        self.status.value = edit.message

    def remove_small(self):
        layer = self.corrected_layer()
        self.apply(layer, editing.remove_small(np.asarray(layer.data), int(self.min_size.value)))

    def relabel(self):
        layer = self.corrected_layer()
        if _meta(layer).get("region"):
            raise ValueError(f"'{layer.name}' is a region of large labels: numbering its objects 1..N would give "
                             "them ids of other objects of those labels (and cut objects at the region's edge "
                             "from their other part). Relabel the full labels instead.")
        self.apply(layer, editing.relabel_sequential(np.asarray(layer.data)))

    # -- reviewed region -------------------------------------------------------------------
    def mark_reviewed(self, what: str):
        """Mark the whole image, the current plane or the visible area as reviewed (or clear)."""
        corrected = self.corrected_layer()
        reviewed = self.reviewed_layer(corrected)
        plane = current_plane(self._viewer, reviewed, reviewed.data.shape) if what in ("plane", "view") else ()
        box = layers.visible_box(self._viewer, reviewed) if what == "view" else ()
        edit = editing.mark_reviewed(np.asarray(reviewed.data), what, plane, box)
        if edit.size:
            reviewed.data_setitem(edit.indices, edit.values)
        self.autosave.mark_dirty(reviewed)
        fraction = float(np.asarray(reviewed.data).mean())
        self.status.value = f"{fraction:.0%} of '{corrected.name}' is marked as reviewed."

    def _busy(self) -> bool:
        """True (and the status line says which job) while the dock's one job slot is taken."""
        if self.job_running:
            self.status.value = f"still busy ({self.job_name.lower()})… one job at a time: wait for it to end."
        return self.job_running

    # -- weight map ------------------------------------------------------------------------
    def show_weight_map(self):
        """Compute the U-Net paper's weight map of the corrections as the dock's job and show it;
        returns its worker (None while one is still being computed)."""
        if self._busy():
            return None
        corrected = self.corrected_layer()
        labels = np.asarray(corrected.data).copy()
        params = {"w0": float(self.w0.value), "sigma": float(self.sigma.value),
                  "class_weights": self._loss_class_weights()}
        micrometres = self.sigma_unit.value != "pixels"
        spacing = tuple(float(s) for s in corrected.scale) if micrometres else None
        name = f"{corrected.name} weight map"

        def job():
            from ..training.patches import loss_weight_map_planes

            return loss_weight_map_planes(labels, spacing=spacing, **params)

        self.job_name = "Weight map"
        self.start_job(job, lambda weights: self._show_weights(weights, name, corrected), "napari-unet: weight map")
        self.status.value = "computing the weight map…"
        return self._worker

    def _loss_class_weights(self):
        """The map the fine-tuning loss uses: the Fine-tune dock's chosen loss in this viewer, or
        the default loss (the border term alone, w_c = 1)."""
        from ..training.finetune import FinetuneSettings
        from .finetune import FinetuneWidget

        docks = [w for w in list(FinetuneWidget.instances) if real_viewer(w._viewer) is real_viewer(self._viewer)]
        settings = docks[-1].settings() if docks else FinetuneSettings()
        params = settings.weight_map() or FinetuneSettings().weight_map()
        return params["class_weights"]

    def _show_weights(self, weights, name, corrected):
        layers.show_weights(self._viewer, weights, name, corrected)
        self.status.value = (f"weight map: {weights.min():.2f} .. {weights.max():.2f} (w0 {self.w0.value:g}, "
                             f"sigma {self.sigma.value:g} {'µm' if self.sigma_unit.value != 'pixels' else 'px'})")

    # -- writing a corrected region back ----------------------------------------------------
    def write_back(self):
        """Write a corrected region of a large labels layer back into that layer's labels (and its
        coarser levels) as the dock's job; returns its worker (None while another job runs). What
        the corrected layer holds when the job starts is written; edits made meanwhile stay in
        the layer (and its undo history), for the next write."""
        if self._busy():
            return None
        corrected = self.corrected_layer()
        source, levels, region = layers.labels_of_region(self._viewer, corrected)
        values = np.asarray(corrected.data).copy()
        checksum = _meta(corrected).get("region_checksum")
        stop, outcome = threading.Event(), {}

        def job():
            from ..jobs import PredictionCancelled
            from ..writeback import PartialWrite, write_back_iter

            try:
                return (yield from write_back_iter(levels, region, values, checksum, stop))
            except PredictionCancelled:  # the dock or the labels closed before the write began: nothing written
                return None
            except PartialWrite:
                outcome["partial"] = True
                raise

        self.job_name = "Writing the corrections"
        self._writing = (corrected, source, outcome)
        self.start_job(job, lambda result: self._written(result, corrected, source, region),
                       "napari-unet: writing corrections", stop=stop)
        self.status.value = f"writing '{corrected.name}' into '{source.name}'…"
        return self._worker

    def _written(self, result, corrected, source, region):
        if result is None:
            return
        # first the state of the region now written (so the next write is checked against it, whatever follows)
        meta = _meta(corrected)
        corrected.metadata[KEY] = {**meta, "region_checksum": result.checksum, "region_max": max(
            int(meta.get("region_max", 0)), int(result.labels.max(initial=0)))}
        source.refresh()
        if result.renumbered and corrected in self._viewer.layers:  # the layer shows the ids the labels got
            # on what the layer holds now (edits made during the write kept), as one undoable step
            self.apply(corrected, editing.renumber(np.asarray(corrected.data), result.renumbered))
            corrected.selected_label = result.renumbered.get(int(corrected.selected_label), corrected.selected_label)
        where = ", ".join(f"{s.start}:{s.stop}" for s in region)
        pairs = [f"{a} -> {b}" for a, b in result.renumbered.items()]
        renumbered = ("; new objects renumbered " + ", ".join(pairs[:5])
                      + (f" and {len(pairs) - 5} more" if len(pairs) > 5 else "")) if pairs else ""
        temporary = (" They are a temporary store: save the layer to keep them."
                     if _meta(source).get("temporary") else "")
        self.status.value = (f"Wrote '{corrected.name}' into '{source.name}' [{where}]: {result.changed_pixels} "
                             f"pixels changed{renumbered}.{temporary}")

    def _on_job_finished(self):
        writing, self._writing = self._writing, None
        if writing is None:
            return
        corrected, _, outcome = writing
        if outcome.get("partial"):  # the region is neither its old state nor the new one: let the next write go
            corrected.metadata[KEY] = {**_meta(corrected), "region_checksum": None}

    # -- training set ----------------------------------------------------------------------
    def add_to_training_set(self):
        """Store image + corrections + reviewed region, as the dock's job (the image is read and the
        files are written in a worker); edits are saved from then on, those made while the entry is
        written included. Returns the worker (None while another job runs)."""
        if self._busy():
            return None
        corrected = self.corrected_layer()
        image_layer = self.source_image(corrected)
        if image_layer is None:
            raise ValueError(f"Which image do '{corrected.name}' correct? Keep the image layer it was predicted "
                             "from in the viewer (one image of the same shape also works).")
        reviewed = self.reviewed_layer(corrected)
        labels = np.array(corrected.data, copy=True)  # what the layer holds now; edits go on meanwhile
        region = np.asarray(reviewed.data) > 0
        if not region.any():
            raise ValueError("Nothing is marked as reviewed: mark the whole image, a plane, the visible area, or "
                             "paint the reviewed layer first. Unreviewed pixels are ignored by training.")
        # the image's pixels are read in the worker (a lazy or multiscale image is read from disk): here only
        # what it reads them from, as it is now
        image_source = pixels_source(image_layer)
        meta = dict(_meta(corrected))
        name, lead = corrected.name, ()
        whole = not (self.plane_only.value and labels.ndim > 2)  # whole layers stay linked for autosave
        if not whole:
            lead = current_plane(self._viewer, corrected, labels.shape)
            labels, region = labels[lead], region[lead]
            name = f"{name} plane {'-'.join(map(str, lead))}"
            if not region.any():
                raise ValueError("Nothing of the current plane is marked as reviewed.")
        folder, source = Path(self.folder.value), f"layer {image_layer.name}"
        link = self.autosave.begin_link(corrected) if whole else None

        def job():
            from ..trainingset import TrainingSet

            try:
                image = np.array(image_for_corrections(image_source, meta)[lead], copy=True)  # (lead: the plane)
                channel_axis = image.ndim - 1 if image_source.rgb else None  # (colour last, after any plane is taken)
                ts = TrainingSet(folder)
                entry = ts.add(image, labels, region, name=name, source=source, channel_axis=channel_axis)
            except BaseException:
                if link is not None:
                    link.finish(None)
                raise
            if link is not None:  # (also read by the autosave when the window closes before the result comes)
                link.finish({"training_set": str(ts.folder), "entry": entry.name})
            return ts.folder, entry.name, len(ts)

        def added(result):
            folder, entry, count = result
            if link is not None:
                self.autosave.end_link(link)
            self.status.value = (f"Added '{entry}' to {folder} ({count} image(s)); "
                                 f"{'edits are saved as you go' if whole else 'plane stored'}.")
            show_info(f"napari-unet: '{entry}' added to the training set.")

        self.start_job(job, added, "napari-unet: adding to the training set", job_name="Adding to the training set")
        if link is not None:
            self.autosave.link_when_done(link, self._worker)
        self.status.value = f"adding '{name}' to {folder}…"
        return self._worker

    def open_training_set(self):
        """Add every entry of the training-set folder as image, corrections and reviewed layers
        (the layers the training-set reader makes when the folder is dropped on napari); the files
        are read as the dock's job. Returns the worker (None while another job runs)."""
        if self._busy():
            return None
        folder = Path(self.folder.value)

        def job():
            from .._reader import training_set_layer_data

            return folder.expanduser(), training_set_layer_data(folder)  # ValueError: not one, or empty

        def read(result):
            folder, layer_data = result
            added = layers.open_training_set(self._viewer, folder, layer_data)
            corrections = [layer for layer in added if _meta(layer).get("kind") == "corrections"]
            self._viewer.layers.selection.active = corrections[-1]
            self.status.value = f"Opened {len(added) // 3} image(s) from {folder}; edits are saved as you go."

        self.start_job(job, read, "napari-unet: opening the training set", job_name="Opening the training set")
        self.status.value = f"reading {folder}…"
        return self._worker
