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
  or micrometres from the layer's scale), computed in a worker.
- "Add to training set" stores image + corrections + reviewed region in a training-set folder;
  from then on every edit is saved again (atomically) a second after the user stops editing,
  and once more, at once, when the viewer window closes. A failed save (full disk, a killed
  worker) leaves the previous files whole and the edits in the layer; they are saved again
  with the next edit.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import napari.viewer
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject, QTimer

from .. import editing
from .._reader import reviewed_colormap, training_set_layer_data
from . import _workers
from ._dock import TRAINING_FOLDER, DockContainer, wrap
from ._layers import KEY, corrections_full_shape, image_for_corrections

log = logging.getLogger(__name__)

TOOLS = ("paint (napari)", "delete object (click)", "merge objects (click two)", "split object (click two ends)")
AUTOSAVE_MS = 1000


def _meta(layer) -> dict:
    meta = layer.metadata.get(KEY)
    return meta if isinstance(meta, dict) else {}


class CorrectWidget(DockContainer):
    """Dock widget for correcting masks and collecting them into a training set."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._clicks: list = []  # pending click positions of a two-click tool
        self._hooked: dict[int, tuple] = {}  # id of a watched layer -> (layer, its event callbacks)
        self._dirty: set[int] = set()  # ids of corrected layers with unsaved edits
        self._save_timer = QTimer()
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(AUTOSAVE_MS)
        self._save_timer.timeout.connect(self._autosave)
        self._saving = None  # the running autosave worker
        self._write_lock = threading.Lock()  # one save at a time, in snapshot order
        self._snapshots = 0  # number of the latest snapshot taken
        self._written = 0  # number of the latest snapshot written
        self.lifetime = _workers.Lifetime()  # its workers' callbacks are dropped once the dock is gone
        self.lifetime.attach(self.native)
        # the last second of edits is saved when the window closes: once docked, the watch follows
        # the dock's top-level window (QWidget.window(), no private napari attribute)
        self._close_watch = _CloseWatch(self.flush_now, self.native)

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
        self.open_button = PushButton(text="Open training set")
        self.status = Label(label="")
        wrap(self.status)
        self.extend([self.source, self.correct_button, self.draw_button, self.tool, self.review_whole, self.review_plane,
                     self.review_view, self.review_clear, self.folder, self.add_button])
        self.add_section("Clean-up, weight map, training set", [
            self.min_size, self.remove_small_button, self.relabel_button, self.w0, self.sigma, self.sigma_unit,
            self.weight_button, self.plane_only, self.open_button])
        self.add_qt(self.status.native)
        self.finish_layout()

        self.correct_button.changed.connect(lambda *_: self._guard(self.start_correcting))
        self.tool.changed.connect(self._on_tool_changed)
        self.draw_button.changed.connect(lambda *_: self._guard(self.draw_missing))
        self.remove_small_button.changed.connect(lambda *_: self._guard(self.remove_small))
        self.relabel_button.changed.connect(lambda *_: self._guard(self.relabel))
        self.review_whole.changed.connect(lambda *_: self._guard(self.mark_reviewed, "image"))
        self.review_plane.changed.connect(lambda *_: self._guard(self.mark_reviewed, "plane"))
        self.review_view.changed.connect(lambda *_: self._guard(self.mark_reviewed, "view"))
        self.review_clear.changed.connect(lambda *_: self._guard(self.mark_reviewed, "clear"))
        self.weight_button.changed.connect(lambda *_: self._guard(self.show_weight_map))
        self.add_button.changed.connect(lambda *_: self._guard(self.add_to_training_set))
        self.open_button.changed.connect(lambda *_: self._guard(self.open_training_set))
        events = viewer.layers.events
        for event in (events.inserted, events.removed):
            event.connect(lambda *_: self.source.reset_choices())
        events.inserted.connect(self._on_inserted)
        events.removing.connect(self._on_removing)
        for layer in viewer.layers:
            self._watch(layer)

    # -- helpers ---------------------------------------------------------------------------
    def _guard(self, fn, *args):
        """Run a button's action; a ValueError becomes a notification, nothing else changes."""
        try:
            return fn(*args)
        except (ValueError, KeyError) as exc:
            self._report_error(str(exc.args[0]) if exc.args else str(exc))
        return None

    def _report_error(self, message: str):
        self.status.value = message
        show_error(message)

    def _labels_choices(self, _widget=None):
        return [(layer.name, layer) for layer in self._viewer.layers
                if isinstance(layer, Labels) and _meta(layer).get("kind") != "reviewed"]

    def corrected_layer(self):
        """The corrected layer to work on: the selected one, else the one made from ``Labels``."""
        active = self._viewer.layers.selection.active
        if isinstance(active, Labels) and _meta(active).get("kind") == "corrections":
            return active
        if isinstance(active, Labels) and _meta(active).get("kind") == "reviewed":
            owner = _meta(active).get("corrections")
            if owner in self._viewer.layers:
                return self._viewer.layers[owner]
        for layer in self._viewer.layers:
            if _meta(layer).get("kind") == "corrections" and self.source.value is not None \
                    and _meta(layer).get("from") == self.source.value.name:
                return layer
        source = self.source.value
        if source is not None and _meta(source).get("kind") == "corrections":
            return source
        raise ValueError("Click 'Correct' first: it makes an editable copy of the labels to work on.")

    def reviewed_layer(self, corrected):
        name = _meta(corrected).get("reviewed")
        if name in self._viewer.layers:
            return self._viewer.layers[name]
        layer = Labels(np.zeros(corrected.data.shape, np.uint8), name=f"{corrected.name} reviewed",
                       scale=corrected.scale, translate=corrected.translate, opacity=0.3,
                       colormap=reviewed_colormap(),
                       metadata={KEY: {"kind": "reviewed", "corrections": corrected.name}})
        self._viewer.layers.append(layer)  # napari may rename it: link the name it got
        corrected.metadata[KEY] = {**_meta(corrected), "reviewed": layer.name}
        self._viewer.layers.selection.active = corrected
        return layer

    def source_image(self, corrected):
        """The image the corrections belong to (by the prediction's metadata), or None."""
        name = _meta(corrected).get("source")
        if name in self._viewer.layers and isinstance(self._viewer.layers[name], Image):
            return self._viewer.layers[name]
        images = [layer for layer in self._viewer.layers if isinstance(layer, Image) and KEY not in layer.metadata
                  and tuple((layer.data[0] if layer.multiscale else layer.data).shape[: corrected.ndim])
                  == corrections_full_shape(corrected)]
        return images[0] if len(images) == 1 else None

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
            full = source.data[0] if source.multiscale else source.data  # full resolution
            if not np.issubdtype(full.dtype, np.integer):
                raise ValueError(f"'{source.name}' holds {full.dtype} values, not object ids.")
            translate = np.asarray(source.translate, float)
            meta = {"kind": "corrections", "from": source.name, "source": _meta(source).get("source")}
            if editing.needs_region(full.shape, source.multiscale, not isinstance(full, np.ndarray)):
                # a large layer: only the visible part (bounded) is copied, never the whole
                region = editing.correction_region(full.shape, self._visible_box(source),
                                                   self._current_lead(source, full.shape))
                translate = translate + np.asarray([s.start for s in region]) * np.asarray(source.scale, float)
                meta.update(region=[[s.start, s.stop] for s in region], full_shape=list(full.shape))
                full = full[region]
            data = np.asarray(full)
            dtype = np.uint32 if data.max(initial=0) > np.iinfo(np.uint16).max else np.uint16
            name = f"{source.name} corrected"
            i = 2
            while name in self._viewer.layers:
                name, i = f"{source.name} corrected ({i})", i + 1
            layer = Labels(data.astype(dtype, copy=True), name=name, scale=source.scale, translate=translate,
                           metadata={KEY: meta})
            self._viewer.layers.append(layer)
            source.visible = False  # the prediction stays as it was, out of the way
        self.reviewed_layer(layer)
        self._viewer.layers.selection.active = layer
        layer.selected_label = editing.next_label(np.asarray(layer.data))
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

    def _current_lead(self, layer, shape) -> tuple:
        """The data index of the plane shown, along the leading axes of ``shape``."""
        point = np.round(layer.world_to_data(self._viewer.dims.point)).astype(int)
        return tuple(int(np.clip(p, 0, n - 1)) for p, n in zip(point[: len(shape) - 2], shape[:-2]))

    def draw_missing(self):
        """napari's polygon tool on the corrected layer with a fresh id: each outline closed by a
        double click is filled as a new object, and the next id is ready for the next one."""
        layer = self.corrected_layer()
        self._viewer.layers.selection.active = layer
        self.tool.value = TOOLS[0]
        layer.selected_label = editing.next_label(np.asarray(layer.data))
        layer.mode = "polygon"
        self.status.value = (f"Click around the missing object's outline; a double click (or Enter) closes and fills "
                             f"it as object {layer.selected_label}. Escape drops the outline; Ctrl+Z undoes.")
        return layer

    def _on_labels_update(self, event):
        """After a polygon filled the selected id, the next outline gets a new one."""
        layer = event.source
        if layer.mode == "polygon" and np.any(np.asarray(layer.data) == layer.selected_label):
            layer.selected_label = editing.next_label(np.asarray(layer.data))

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
            self._mark_dirty(layer)
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
        if id(layer) not in self._hooked:
            return
        if self._dirty:
            self.flush_now()
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
        pixel = tuple(int(np.clip(round(float(p)), 0, n - 1)) for p, n in zip(position, data.shape))
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
                self.apply(layer, editing.split_object(data, points))
            else:
                self.status.value = "Now click where the cut ends."

    def apply(self, layer, edit: editing.Edit):
        """Apply an edit through napari's history (Ctrl+Z undoes it)."""
        if edit.size:
            layer.data_setitem(edit.indices, edit.values)
            self._mark_dirty(layer)
        self.status.value = edit.message

    def remove_small(self):
        layer = self.corrected_layer()
        self.apply(layer, editing.remove_small(np.asarray(layer.data), int(self.min_size.value)))

    def relabel(self):
        layer = self.corrected_layer()
        self.apply(layer, editing.relabel_sequential(np.asarray(layer.data)))

    # -- reviewed region -------------------------------------------------------------------
    def mark_reviewed(self, what: str):
        """Mark the whole image, the current plane or the visible area as reviewed (or clear)."""
        corrected = self.corrected_layer()
        reviewed = self.reviewed_layer(corrected)
        shape = reviewed.data.shape
        region = np.zeros(shape, bool)
        if what in ("image", "clear"):
            region[...] = True
        elif what == "plane":
            if reviewed.ndim < 3:
                region[...] = True
            else:
                region[self._current_lead(reviewed, shape)] = True
        elif what == "view":
            corners = self._visible_box(reviewed)
            region[self._current_lead(reviewed, shape) + corners] = True
        value = 0 if what == "clear" else 1
        indices = np.nonzero(region & (np.asarray(reviewed.data) != value))
        if indices[0].size:
            reviewed.data_setitem(indices, value)
        self._mark_dirty(reviewed)
        fraction = float(np.asarray(reviewed.data).mean())
        self.status.value = f"{fraction:.0%} of '{corrected.name}' is marked as reviewed."

    def _visible_box(self, layer) -> tuple:
        """The data-space box of the canvas' visible area (the last two axes)."""
        camera = self._viewer.camera
        # napari >= 0.6: the canvas size (height, width) is public on the viewer model
        canvas = getattr(getattr(self._viewer, "canvas", None), "size", None) or (512, 512)
        height, width = canvas[0] / camera.zoom, canvas[1] / camera.zoom
        centre = np.asarray(camera.center[-2:])
        lo = layer.world_to_data(list(self._viewer.dims.point[:-2]) + list(centre - [height / 2, width / 2]))[-2:]
        hi = layer.world_to_data(list(self._viewer.dims.point[:-2]) + list(centre + [height / 2, width / 2]))[-2:]
        shape = layer.data.shape[-2:]
        box = []
        for a, b, n in zip(lo, hi, shape):
            a, b = sorted((a, b))
            box.append(slice(int(np.clip(np.floor(a), 0, n)), int(np.clip(np.ceil(b), 0, n))))
        return tuple(box)

    # -- weight map ------------------------------------------------------------------------
    def show_weight_map(self):
        """Compute the U-Net paper's weight map of the corrections in a worker and show it."""
        corrected = self.corrected_layer()
        labels = np.asarray(corrected.data).copy()
        w0, sigma = float(self.w0.value), float(self.sigma.value)
        class_weights = self._loss_class_weights()
        micrometres = self.sigma_unit.value != "pixels"
        spacing = tuple(float(s) for s in corrected.scale) if micrometres else None
        name = f"{corrected.name} weight map"

        def job():
            from ..training.patches import loss_weight_map

            if labels.ndim > 2 and spacing is None:  # pixels: plane by plane, like the 2D loss sees them
                planes = labels.reshape((-1,) + labels.shape[-2:])
                return np.stack([loss_weight_map(p, w0=w0, sigma=sigma, class_weights=class_weights)
                                 for p in planes]).reshape(labels.shape)
            return loss_weight_map(labels, w0=w0, sigma=sigma, spacing=spacing, class_weights=class_weights)

        self.status.value = "computing the weight map…"
        worker = _workers.start(job, lifetime=self.lifetime, returned=lambda w: self._show_weights(w, name, corrected),
                                errored=lambda exc: self._report_error(f"Weight map failed: {exc}"))
        self._weight_worker = worker
        return worker

    def _loss_class_weights(self):
        """The map the fine-tuning loss uses: the Fine-tune dock's chosen loss in this viewer, or
        the default loss (the border term alone, w_c = 1)."""
        from ..training.finetune import FinetuneSettings
        from .finetune import FinetuneWidget

        docks = [w for w in list(FinetuneWidget.instances) if w._viewer is self._viewer]
        settings = docks[-1].settings() if docks else FinetuneSettings()
        params = settings.weight_map() or FinetuneSettings().weight_map()
        return params["class_weights"]

    def _show_weights(self, weights, name, corrected):
        if name in self._viewer.layers and _meta(self._viewer.layers[name]).get("kind") == "weight map":
            layer = self._viewer.layers[name]
            layer.data = weights
        else:
            layer = self._viewer.add_image(weights, name=name, colormap="inferno", blending="additive",
                                           scale=corrected.scale, translate=corrected.translate,
                                           metadata={KEY: {"kind": "weight map"}})
        layer.contrast_limits = (float(weights.min()), float(max(weights.max(), weights.min() + 1e-3)))
        self._viewer.layers.selection.active = corrected
        self.status.value = (f"weight map: {weights.min():.2f} .. {weights.max():.2f} (w0 {self.w0.value:g}, "
                             f"sigma {self.sigma.value:g} {'µm' if self.sigma_unit.value != 'pixels' else 'px'})")

    # -- training set ----------------------------------------------------------------------
    def training_set(self, create: bool = True):
        from ..trainingset import TrainingSet

        return TrainingSet(Path(self.folder.value), create=create)

    def add_to_training_set(self):
        """Store image + corrections + reviewed region; edits are saved again from then on."""
        corrected = self.corrected_layer()
        image_layer = self.source_image(corrected)
        if image_layer is None:
            raise ValueError(f"Which image do '{corrected.name}' correct? Keep the image layer it was predicted "
                             "from in the viewer (one image of the same shape also works).")
        reviewed = self.reviewed_layer(corrected)
        labels = np.asarray(corrected.data)
        region = np.asarray(reviewed.data) > 0
        if not region.any():
            raise ValueError("Nothing is marked as reviewed: mark the whole image, a plane, the visible area, or "
                             "paint the reviewed layer first. Unreviewed pixels are ignored by training.")
        image = image_for_corrections(image_layer, _meta(corrected))
        channel_axis = image.ndim - 1 if image_layer.rgb else None
        name = corrected.name
        if self.plane_only.value and labels.ndim > 2:
            lead = self._current_lead(corrected, labels.shape)
            labels, region = labels[lead], region[lead]
            image = image[lead]
            name = f"{name} plane {'-'.join(map(str, lead))}"
            if not region.any():
                raise ValueError("Nothing of the current plane is marked as reviewed.")
        ts = self.training_set()
        entry = ts.add(image, labels, region, name=name, source=f"layer {image_layer.name}",
                       channel_axis=channel_axis)
        if not (self.plane_only.value and corrected.ndim > 2):  # whole layers stay linked for autosave
            link = {"training_set": str(ts.folder), "entry": entry.name}
            corrected.metadata[KEY] = {**_meta(corrected), **link}
        self.status.value = (f"Added '{entry.name}' to {ts.folder} ({len(ts)} image(s)); "
                             f"{'edits are saved as you go' if 'entry' in _meta(corrected) else 'plane stored'}.")
        show_info(f"napari-unet: '{entry.name}' added to the training set.")
        return entry

    def open_training_set(self):
        """Add every entry of the training-set folder as image, corrections and reviewed layers
        (the layers the training-set reader makes when the folder is dropped on napari)."""
        from napari.layers import Layer

        ts = self.training_set(create=False)
        added = {}
        for data, kwargs, kind in training_set_layer_data(ts.folder):
            layer = self._viewer.add_layer(Layer.create(data, kwargs, kind))
            added[kwargs["name"]] = layer
        for layer in added.values():  # napari renames a layer whose name is taken: keep the links
            meta = _meta(layer)
            for key in ("source", "reviewed", "corrections"):
                if meta.get(key) in added:
                    meta[key] = added[meta[key]].name
        corrections = [layer for layer in added.values() if _meta(layer).get("kind") == "corrections"]
        self._viewer.layers.selection.active = corrections[-1]
        self.status.value = f"Opened {len(added) // 3} image(s) from {ts.folder}; edits are saved as you go."
        return ts

    def _mark_dirty(self, layer):
        meta = _meta(layer)
        if meta.get("kind") == "reviewed":
            owner = meta.get("corrections")
            if owner not in self._viewer.layers:
                return
            layer = self._viewer.layers[owner]
            meta = _meta(layer)
        if "entry" not in meta:
            return
        self._dirty.add(id(layer))
        self._save_timer.start()  # restarts: saves a second after the last edit

    def _snapshot(self):
        """Copies of the edited layers (on the Qt thread) and a function that writes them."""
        jobs, ids = [], []
        for layer in list(self._viewer.layers):
            if id(layer) not in self._dirty:
                continue
            meta = _meta(layer)
            reviewed = self._viewer.layers[meta["reviewed"]] if meta.get("reviewed") in self._viewer.layers else None
            jobs.append((meta["training_set"], meta["entry"], np.array(layer.data, copy=True),
                         None if reviewed is None else np.asarray(reviewed.data) > 0))
            ids.append(id(layer))
        self._dirty.clear()
        self._snapshots += 1
        number = self._snapshots

        def write():
            from ..trainingset import TrainingSet

            with self._write_lock:
                if number < self._written:  # a newer snapshot is on disk already (saved at close)
                    return 0
                for folder, entry, labels, reviewed in jobs:
                    TrainingSet(folder, create=False).update(entry, labels=labels, reviewed=reviewed)
                self._written = number
            return len(jobs)

        return jobs, ids, write

    def _autosave_failed(self, exc, ids):
        self._dirty.update(ids)  # not saved: the next edit (or closing the window) tries again
        self._report_error(f"Autosave failed; your edits are still in the layer, the previous files are intact, "
                           f"and saving is tried again at your next edit: {exc}")

    def _autosave(self):
        """Snapshot the edited layers (Qt thread, a copy) and write them in a worker."""
        if self._saving is not None:
            self._save_timer.start()  # a save is still running: try again shortly
            return
        jobs, ids, write = self._snapshot()
        if not jobs:
            return
        # (no stop event: a save in progress is finished, also when napari quits)
        self._saving = _workers.start(write, lifetime=self.lifetime,
                                      returned=lambda n: setattr(self.status, "value", f"saved {n} correction(s)"),
                                      errored=lambda exc: self._autosave_failed(exc, ids),
                                      finished=lambda: setattr(self, "_saving", None))

    def flush(self):
        """Save pending edits now, in a worker (used by tests)."""
        if self._dirty:
            self._save_timer.stop()
            self._autosave()

    def flush_now(self):
        """Save pending edits on this thread, after any save in progress (when the window closes)."""
        self._save_timer.stop()
        if not self._dirty:
            return
        jobs, ids, write = self._snapshot()
        try:
            write()
        except (OSError, ValueError) as exc:
            self._dirty.update(ids)
            log.error("saving corrections on close failed: %s", exc)


class _CloseWatch(QObject):
    """Calls ``callback`` when the top-level window of ``widget`` is about to close (the window is
    looked up whenever the widget is shown or moved to another parent, e.g. docked)."""

    def __init__(self, callback, widget):
        import weakref

        super().__init__()
        self._callback = weakref.WeakMethod(callback)  # the window must not keep a closed widget alive
        self._widget = widget
        self._window = lambda: None  # a weak reference: the dock must not keep napari's window alive
        widget.installEventFilter(self)

    def _follow_window(self):
        import weakref

        window, previous = self._widget.window(), self._window()
        if window is self._widget or window is previous:
            return
        if previous is not None:
            previous.removeEventFilter(self)
        window.installEventFilter(self)
        self._window = weakref.ref(window)

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        # napari docks the widget into a dock widget first, then the dock into its window: a
        # reparenting of either (or a show) looks for the top-level window again
        if event.type() in (QEvent.Type.Show, QEvent.Type.ParentChange):
            self._follow_window()
        if obj is self._widget:
            return False
        callback = self._callback()
        if callback is not None and event.type() == QEvent.Type.Close:
            try:
                callback()
            except Exception:  # never block closing the window
                log.exception("saving corrections on close failed")
        return False
