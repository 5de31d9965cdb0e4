"""Putting results into the viewer without ever overwriting the user's work.

A layer the plugin made carries ``metadata["napari_unet"]`` with a checksum of the data it
wrote. A re-run updates such a layer in place only while that checksum still matches; once
the user has painted in it (or renamed a layer of their own to the same name), the result
goes into a new layer instead.
"""

from __future__ import annotations

import hashlib

import numpy as np

KEY = "napari_unet"
_MAX_HASH_BYTES = 256 * 2**20


def checksum(data) -> str | None:
    """A content hash of an in-memory array (None for lazy or very large arrays)."""
    if not isinstance(data, np.ndarray) or data.nbytes > _MAX_HASH_BYTES:
        return None
    return hashlib.blake2b(np.ascontiguousarray(data).view(np.uint8), digest_size=16).hexdigest()


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


def put_layer(viewer, name: str, data, layer_type: str, metadata: dict, **kwargs):
    """Update the plugin's untouched layer ``name`` (or ``name (2)``...), else add a new one.

    Returns the layer. Layers the user made or edited are never written to.
    """
    meta = {**metadata, "checksum": checksum(data)}
    candidates = [name] + [f"{name} ({i})" for i in range(2, len(viewer.layers) + 2)]
    for candidate in candidates:
        if candidate not in viewer.layers:
            continue
        layer = viewer.layers[candidate]
        if layer_kind(layer) == layer_type and is_untouched_plugin_layer(layer) \
                and layer.data.shape == np.shape(data):
            layer.data = data
            layer.metadata[KEY] = meta
            for key in ("scale", "translate"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            return layer
    free = next(c for c in candidates if c not in viewer.layers)
    return getattr(viewer, f"add_{layer_type}")(data, name=free, metadata={KEY: meta}, **kwargs)
