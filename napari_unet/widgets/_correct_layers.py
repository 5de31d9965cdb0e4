"""The layers of a correction in a viewer, found and made for the Correct dock (no Qt, no maths).

A corrected layer (``kind: "corrections"``) is an editable copy of a labels layer; its reviewed
layer (``kind: "reviewed"``, 1 = checked) and the image it belongs to are found through the
plugin's metadata. The arithmetic (which region of a large layer, which pixels a mark covers, the
visible box) is in :mod:`napari_unet.editing`.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels

from .. import editing
from .._reader import reviewed_colormap, training_set_layer_data
from ..writeback import check_writable, region_checksum
from ._layers import KEY, corrections_full_shape, current_plane, layer_meta


def correctable_labels(viewer) -> list:
    """``(name, layer)`` of the labels layers that can be corrected (not reviewed regions)."""
    return [(layer.name, layer) for layer in viewer.layers
            if isinstance(layer, Labels) and layer_meta(layer).get("kind") != "reviewed"]


def find_corrected(viewer, source):
    """The corrected layer to work on: the selected one (or the one whose reviewed layer is
    selected), else the one made from ``source``, else ``source`` itself if it is one."""
    active = viewer.layers.selection.active
    if isinstance(active, Labels) and layer_meta(active).get("kind") == "corrections":
        return active
    if isinstance(active, Labels) and layer_meta(active).get("kind") == "reviewed":
        owner = layer_meta(active).get("corrections")
        if owner in viewer.layers:
            return viewer.layers[owner]
    for layer in viewer.layers:
        if layer_meta(layer).get("kind") == "corrections" and source is not None \
                and layer_meta(layer).get("from") == source.name:
            return layer
    if source is not None and layer_meta(source).get("kind") == "corrections":
        return source
    raise ValueError("Click 'Correct' first: it makes an editable copy of the labels to work on.")


def reviewed_layer(viewer, corrected):
    """The reviewed layer of ``corrected``; an empty one is added (and linked) if it has none."""
    name = layer_meta(corrected).get("reviewed")
    if name in viewer.layers:
        return viewer.layers[name]
    layer = Labels(np.zeros(corrected.data.shape, np.uint8), name=f"{corrected.name} reviewed",
                   scale=corrected.scale, translate=corrected.translate, opacity=0.3,
                   colormap=reviewed_colormap(),
                   metadata={KEY: {"kind": "reviewed", "corrections": corrected.name}})
    viewer.layers.append(layer)  # napari may rename it: link the name it got
    corrected.metadata[KEY] = {**layer_meta(corrected), "reviewed": layer.name}
    viewer.layers.selection.active = corrected
    return layer


def source_image(viewer, corrected):
    """The image the corrections belong to (by the prediction's metadata), else the only image
    of their shape, else None."""
    name = layer_meta(corrected).get("source")
    if name in viewer.layers and isinstance(viewer.layers[name], Image):
        return viewer.layers[name]
    images = [layer for layer in viewer.layers if isinstance(layer, Image) and KEY not in layer.metadata
              and tuple((layer.data[0] if layer.multiscale else layer.data).shape[: corrected.ndim])
              == corrections_full_shape(corrected)]
    return images[0] if len(images) == 1 else None


def visible_box(viewer, layer) -> tuple:
    """The data-space box (slices of the last two axes) of what the canvas shows of ``layer``."""
    camera = viewer.camera
    # napari >= 0.6: the canvas size (height, width) is public on the viewer model
    canvas = getattr(getattr(viewer, "canvas", None), "size", None) or (512, 512)
    lo, hi = editing.visible_corners(camera.center, canvas, camera.zoom)
    lead = list(viewer.dims.point[:-2])
    lo, hi = layer.world_to_data(lead + list(lo))[-2:], layer.world_to_data(lead + list(hi))[-2:]
    return editing.box_between(lo, hi, layer.data.shape[-2:])


def editable_copy(viewer, source) -> tuple:
    """``(layer, region)``: a new Labels layer holding a copy of ``source``'s full-resolution
    labels, added on top of it (``source`` is hidden). A multiscale or large lazy ``source`` is
    copied region by region (:func:`~napari_unet.editing.correction_region`: the visible part of
    the plane shown); ``region`` is then its slices, else None."""
    full = source.data[0] if source.multiscale else source.data  # full resolution
    if not np.issubdtype(full.dtype, np.integer):
        raise ValueError(f"'{source.name}' holds {full.dtype} values, not object ids.")
    translate = np.asarray(source.translate, float)
    meta = {"kind": "corrections", "from": source.name, "source": layer_meta(source).get("source")}
    region = None
    if editing.needs_region(full.shape, source.multiscale, not isinstance(full, np.ndarray)):
        # a large layer: only the visible part (bounded) is copied, never the whole
        region = editing.correction_region(full.shape, visible_box(viewer, source),
                                           current_plane(viewer, source, full.shape))
        translate = translate + np.asarray([s.start for s in region]) * np.asarray(source.scale, float)
        full = np.asarray(full[region])
        # what the region held: writing the corrections back checks that nothing else changed it meanwhile
        # and its largest id: new objects get ids above it (:func:`fresh_label`)
        meta.update(region=[[s.start, s.stop] for s in region], full_shape=list(source_shape(source)),
                    region_checksum=region_checksum(full), region_max=int(full.max(initial=0)))
    name = f"{source.name} corrected"
    i = 2
    while name in viewer.layers:
        name, i = f"{source.name} corrected ({i})", i + 1
    layer = Labels(editing.editable_labels(full), name=name, scale=source.scale, translate=translate,
                   metadata={KEY: meta})
    viewer.layers.append(layer)
    source.visible = False  # the prediction stays as it was, out of the way
    return layer, region


def fresh_label(layer) -> int:
    """A new object id for the corrected layer ``layer``: above every id it holds and, for a region
    of large labels, above every id the region held (:func:`~napari_unet.editing.next_label`)."""
    return editing.next_label(np.asarray(layer.data), layer_meta(layer).get("region_max", 0))


def apply_edit(layer, edit: editing.Edit) -> None:
    """Apply ``edit`` to the labels layer ``layer`` through napari's history (Ctrl+Z undoes it);
    labels whose type cannot hold its new ids are widened first (napari would wrap them)."""
    if not edit.size:
        return
    dtype = edit.dtype_for(layer.data.dtype)
    if dtype != layer.data.dtype:
        layer.data = np.asarray(layer.data).astype(dtype)
        layer.set_view_slice()  # (napari casts the values to its slice's type, re-sliced only when visible)
    layer.data_setitem(edit.indices, edit.values)


def source_shape(layer) -> tuple:
    """The full-resolution shape of a (possibly multiscale) layer."""
    return tuple((layer.data[0] if layer.multiscale else layer.data).shape)


def labels_of_region(viewer, corrected):
    """``(labels layer, its levels, region)``: what a region's corrections go back into; raises
    ``ValueError`` when ``corrected`` is not a region of a large layer, that layer is gone or
    changed shape, or its labels cannot be written."""
    meta = layer_meta(corrected)
    region = meta.get("region")
    if not region:
        raise ValueError(f"'{corrected.name}' holds the whole labels, not a region of a large layer: it is the "
                         "corrected result itself (save it with File > Save Selected Layers).")
    name = meta.get("from")
    if name not in viewer.layers or not isinstance(viewer.layers[name], Labels):
        raise ValueError(f"The labels '{name}' that '{corrected.name}' came from are no longer in the viewer "
                         "(removed or renamed?): nothing to write into (the corrections stay in their layer).")
    source = viewer.layers[name]
    if list(source_shape(source)) != list(meta.get("full_shape", [])):
        raise ValueError(f"'{name}' is not the shape it had when '{corrected.name}' was copied from it.")
    levels = list(source.data) if source.multiscale else [source.data]
    check_writable(levels)  # said at once, before any job starts
    return source, levels, tuple(slice(int(a), int(b)) for a, b in region)


def show_weights(viewer, weights: np.ndarray, name: str, corrected):
    """Show a weight map of ``corrected`` in the image layer ``name`` (updated if it is the plugin's
    weight map already, else added) and keep ``corrected`` selected; returns the layer."""
    if name in viewer.layers and layer_meta(viewer.layers[name]).get("kind") == "weight map":
        layer = viewer.layers[name]
        layer.data = weights
    else:
        layer = viewer.add_image(weights, name=name, colormap="inferno", blending="additive",
                                 scale=corrected.scale, translate=corrected.translate,
                                 metadata={KEY: {"kind": "weight map"}})
    layer.contrast_limits = (float(weights.min()), float(max(weights.max(), weights.min() + 1e-3)))
    viewer.layers.selection.active = corrected
    return layer


def open_training_set(viewer, folder, layer_data: list | None = None) -> list:
    """Add every entry of a training-set folder as image, corrections and reviewed layers (the
    layers the training-set reader makes when the folder is dropped on napari), keeping their
    links when napari renames a layer; returns the layers added. ``layer_data``: the folder's
    :func:`~napari_unet._reader.training_set_layer_data`, read beforehand (in a worker)."""
    from napari.layers import Layer

    added = {}
    for data, kwargs, kind in training_set_layer_data(folder) if layer_data is None else layer_data:
        layer = viewer.add_layer(Layer.create(data, kwargs, kind))
        added[kwargs["name"]] = layer
    for layer in added.values():  # napari renames a layer whose name is taken: keep the links
        meta = layer_meta(layer)
        for key in ("source", "reviewed", "corrections"):
            if meta.get(key) in added:
                meta[key] = added[meta[key]].name
    return list(added.values())
