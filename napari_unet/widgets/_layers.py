"""Putting results into the viewer without ever overwriting the user's work.

A layer the plugin made carries ``metadata["napari_unet"]`` with a checksum of the data it
wrote. A re-run updates such a layer in place only while that checksum still matches; once
the user has painted in it (or renamed a layer of their own to the same name), the result
goes into a new layer instead.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
import weakref
from types import SimpleNamespace

import numpy as np

KEY = "napari_unet"
_MAX_HASH_BYTES = 256 * 2**20


def checksum(data) -> str | None:
    """A content hash of an in-memory array (None for lazy or very large arrays)."""
    if not isinstance(data, np.ndarray) or data.nbytes > _MAX_HASH_BYTES:
        return None
    return hashlib.blake2b(np.ascontiguousarray(data).view(np.uint8), digest_size=16).hexdigest()


def layer_meta(layer) -> dict:
    """The plugin's metadata of a layer (``{}`` for layers the plugin did not make)."""
    meta = layer.metadata.get(KEY)
    return meta if isinstance(meta, dict) else {}


#: the keys of the plugin's metadata that name another layer of the viewer
LINK_KEYS = ("source", "from", "reviewed", "corrections")
_following: weakref.WeakSet = weakref.WeakSet()  # the (real) layer lists whose renames are followed


def real_viewer(viewer):
    """The viewer behind napari's proxy of it: each plugin dock gets its own ``PublicOnlyProxy``,
    whose ``layers[name]`` is a new wrapper at every call (so ``is`` and ``id()`` mislead)."""
    return getattr(viewer, "__wrapped__", viewer)


def follow_renames(viewer) -> None:
    """Keep the plugin's links between layers (layer names, :data:`LINK_KEYS`) when the user
    renames a layer: a renamed corrected layer keeps its reviewed region (and its autosave), a
    renamed image keeps its results and corrections. Once per viewer, whichever dock asks first."""
    layers = real_viewer(viewer).layers
    if layers in _following:
        return
    _following.add(layers)
    names: dict[int, str] = {}  # id(layer) -> its name before a rename

    def renamed(event):
        layer = event.source
        old, names[id(layer)] = names.get(id(layer)), layer.name
        if old is None or old == layer.name:
            return
        for other in layers:
            meta = layer_meta(other)
            for key in LINK_KEYS:
                if meta.get(key) == old:
                    meta[key] = layer.name

    def watch(layer):
        names[id(layer)] = layer.name
        layer.events.name.connect(renamed)

    def removed(event):
        names.pop(id(event.value), None)
        event.value.events.name.disconnect(renamed)

    for layer in layers:
        watch(layer)
    layers.events.inserted.connect(lambda event: watch(event.value))
    layers.events.removed.connect(removed)


def layer_kind(layer) -> str:
    """'image', 'labels', 'points'... (works through napari's plugin proxies)."""
    import napari.layers

    for kind in ("Image", "Labels", "Points", "Shapes", "Surface", "Tracks", "Vectors"):
        if isinstance(layer, getattr(napari.layers, kind)):
            return kind.lower()
    return "unknown"


def is_untouched_plugin_layer(layer) -> bool:
    meta = layer.metadata.get(KEY)
    if not isinstance(meta, dict):
        return False
    saved = meta.get("checksum")
    return saved is not None and saved == checksum(layer.data)


def spatial_transform(image_layer, channel_axis: int | None) -> dict:
    """``scale``/``translate`` of an image layer for a result without the channel axis."""
    scale, translate = list(image_layer.scale), list(image_layer.translate)
    if channel_axis is not None and not image_layer.rgb:
        axis = channel_axis % image_layer.ndim
        del scale[axis], translate[axis]
    return {"scale": scale, "translate": translate}


def build_layer(data, layer_type: str, name: str, metadata: dict, data_checksum: str | None = None, **kwargs):
    """Make a napari layer object; safe in a worker thread, so its cost stays off the Qt thread."""
    import napari.layers

    meta = {KEY: {**metadata, "checksum": data_checksum if data_checksum is not None else checksum(data)}}
    cls = {"labels": napari.layers.Labels, "image": napari.layers.Image}[layer_type]
    return cls(data, name=name, metadata=meta, **kwargs)


def model_label(model) -> str:
    """The name a result layer shows for ``model``: a bundled or user model's full name
    (``unet-2.5d-stack``, never a stem cut at its last dot), a model file's name without
    ``.safetensors``, a BioImage.IO package's name without ``.zip`` (its folder's name for an
    ``rdf.yaml``)."""
    text = str(getattr(model, "name", None) or model)
    parts = text.replace("\\", "/").rsplit("/", 2)
    name = parts[-1]
    if name in ("rdf.yaml", "bioimageio.yaml") and len(parts) > 1:
        return parts[-2]
    for suffix in (".safetensors", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def preload_layers() -> None:
    """A worker's warm-up: napari's first Labels layer of a session imports pandas (~0.5 s, with
    Python's GIL held), so build a tiny one before a run builds its result layers."""
    build_layer(np.zeros((2, 2), np.int32), "labels", "warm-up", {})


def put_layer(viewer, layer):
    """Put a :func:`build_layer` layer into the viewer (Qt thread); returns the layer shown.

    An untouched plugin layer of the same name (or ``name (2)``...) and shape is updated in
    place; otherwise (and always for a lazy result, which has no checksum) ``layer`` is added under
    a free name. Layers the user made or edited are never written to.
    """
    name, kind = layer.name, layer_kind(layer)
    candidates = [name] + [f"{name} ({i})" for i in range(2, len(viewer.layers) + 2)]
    for candidate in candidates:
        if candidate not in viewer.layers:
            continue
        target = viewer.layers[candidate]
        if layer.metadata[KEY].get("checksum") is None:
            break  # a lazy (zarr-backed) result always gets a layer of its own
        same_model = target.metadata.get(KEY, {}).get("model") == layer.metadata[KEY].get("model")
        if layer_kind(target) == kind and is_untouched_plugin_layer(target) and same_model \
                and target.data.shape == layer.data.shape:
            target.data = layer.data
            target.metadata[KEY] = layer.metadata[KEY]
            target.scale, target.translate = layer.scale, layer.translate
            return target
    layer.name = next(c for c in candidates if c not in viewer.layers)
    viewer.layers.append(layer)
    return layer


def input_images(viewer) -> list:
    """``(name, layer)`` of the viewer's Image layers a model may run on: not the plugin's own
    outputs (probability maps, depths)."""
    from napari.layers import Image

    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image) and KEY not in layer.metadata]


def current_plane(viewer, layer, shape) -> tuple[int, ...]:
    """The data index of the plane ``viewer`` shows in ``layer``, along the leading axes of
    ``shape`` (all but the last two; ``()`` for 2D), rounded and clipped to ``shape``."""
    point = np.round(layer.world_to_data(viewer.dims.point)).astype(int)
    return tuple(int(np.clip(p, 0, n - 1)) for p, n in zip(point[: len(shape) - 2], shape[:-2]))


def move_below(viewer, layer, anchor) -> None:
    """Move ``layer`` just below ``anchor`` in the layer list (so a probability map never hides the
    labels drawn from it); nothing happens when either is gone or it is already below."""
    layers = viewer.layers
    if layer not in layers or anchor not in layers:
        return
    index, target = layers.index(layer), layers.index(anchor)
    if index > target:
        layers.move(index, target)


# -- results on disk ---------------------------------------------------------------------------
#: Temporary folders behind zarr-backed result layers; removed with their last layer, or at exit.
_TEMPORARY: set[str] = set()


def temporary_folder() -> str:
    """A new temporary folder for a result layer's zarr stores (see :func:`release_temporary`)."""
    folder = tempfile.mkdtemp(prefix="napari-unet-")
    keep_temporary(folder)
    return folder


def keep_temporary(folder) -> None:
    """Remove ``folder`` when napari exits, unless :func:`release_temporary` did it before."""
    _TEMPORARY.add(str(folder))


def release_temporary(folder, viewer=None) -> bool:
    """Remove a temporary folder unless a layer of ``viewer`` still shows it; True if removed."""
    folder = str(folder)
    if viewer is not None and any(layer_meta(layer).get("temporary") == folder for layer in viewer.layers):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    _TEMPORARY.discard(folder)
    return True


@atexit.register
def _remove_temporary():
    for folder in list(_TEMPORARY):
        shutil.rmtree(folder, ignore_errors=True)
    _TEMPORARY.clear()


# -- corrections of a region of a large layer -------------------------------------------------
def correction_slices(meta: dict) -> tuple | None:
    """The region (one slice per labels axis) a corrections layer holds of its full-resolution
    labels, or None when it holds them whole."""
    region = meta.get("region")
    return None if not region else tuple(slice(int(a), int(b)) for a, b in region)


def corrections_full_shape(layer) -> tuple:
    """The shape of the full labels that a corrections layer belongs to (its own shape unless it
    holds a region of a large layer)."""
    full = layer_meta(layer).get("full_shape")
    return tuple(int(n) for n in full) if full else tuple(layer.data.shape)


def pixels_source(image_layer) -> SimpleNamespace:
    """What :func:`image_for_corrections` reads an image layer's pixels from, taken on the Qt
    thread as the layer is now, so that a worker can read them (a lazy image is read from disk)."""
    return SimpleNamespace(data=image_layer.data, multiscale=image_layer.multiscale, rgb=image_layer.rgb)


def image_for_corrections(image_layer, meta: dict) -> np.ndarray:
    """The full-resolution pixels of ``image_layer`` under a corrections layer (with ``meta``):
    only the corrected region is read from a multiscale or lazy image, never the whole."""
    data = image_layer.data[0] if image_layer.multiscale else image_layer.data
    region = correction_slices(meta)
    if region is None:
        return np.asarray(data)
    lead = (slice(None),) * (data.ndim - len(region) - (1 if image_layer.rgb else 0))  # channel axes first
    return np.asarray(data[lead + region])
