"""Open a napari-unet training set in napari: drop its ``index.json`` on the viewer (or File >
Open it).

A training-set folder (see :mod:`napari_unet.trainingset`) opens as three layers per entry: the
image, its corrected labels and the ``<name> reviewed`` region, linked as the Correct dock links
them, so that with the Correct dock open every edit is saved back to the folder as you paint.

The manifest claims files named ``index.json``, not folders: napari asks the user to choose a
reader for any folder that two plugins claim (napari's own reader claims every folder), so a
folder reader would put that question in front of every OME-Zarr drop. :func:`get_reader` also
takes the folder itself, for ``viewer.open(folder, plugin="napari-unet")`` and the Correct dock.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .trainingset import FORMAT, TrainingSet
from .widgets._layers import KEY  # the layers' metadata key (no Qt: numpy and hashlib only)
REVIEWED_COLORS = {None: "transparent", 0: "transparent", 1: [0.2, 0.9, 0.4, 1.0]}


def _index_of(path) -> Path | None:
    """The ``index.json`` of a training set at ``path`` (the folder or the index itself), or None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        p = Path(path)
        index = p / "index.json" if p.is_dir() else p
        if index.name != "index.json" or not index.is_file():
            return None
        with open(index, encoding="utf-8") as f:
            head = json.load(f)
    except (OSError, ValueError, TypeError):
        return None
    return index if isinstance(head, dict) and head.get("format") == FORMAT else None


def get_reader(path):
    """napari's reader hook: a function that opens ``path`` when it is a training set, else None."""
    return read_training_set if _index_of(path) is not None else None


def reviewed_colormap():
    """The reviewed region's colours: green where checked, transparent elsewhere."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=REVIEWED_COLORS)


def training_set_layer_data(folder) -> list[tuple]:
    """napari layer data ``(data, kwargs, kind)`` for every entry of the training set in ``folder``:
    image, corrections (linked to the folder for the Correct dock's autosave) and reviewed region."""
    ts = TrainingSet.open_existing(folder)
    out = []
    for entry in ts.entries:
        image, labels, reviewed = ts.load(entry.name)
        image, rgb = _image_over_labels(image, entry.extra.get("channel_axis"))
        image_name, reviewed_name = f"{entry.name} image", f"{entry.name} reviewed"
        out.append((image, {"name": image_name, "rgb": rgb}, "image"))
        out.append((labels, {"name": entry.name, "metadata": {KEY: {
            "kind": "corrections", "source": image_name, "training_set": str(ts.folder),
            "entry": entry.name, "from": "", "reviewed": reviewed_name}}}, "labels"))
        out.append((reviewed.astype("uint8"), {
            "name": reviewed_name, "opacity": 0.3, "colormap": reviewed_colormap(),
            "metadata": {KEY: {"kind": "reviewed", "corrections": entry.name}}}, "labels"))
    return out


def _image_over_labels(image, channel_axis) -> tuple:
    """``(image, rgb)``: an entry's image as a layer over its labels: colour last (3 or 4 values)
    as an RGB layer, any other channel axis moved first (the channels become planes in front of
    the labels' axes, which napari lines up from the last), no channel axis as it is."""
    if channel_axis is None:
        return image, False
    axis = int(channel_axis) % image.ndim
    if axis == image.ndim - 1 and image.shape[-1] in (3, 4):
        return image, True
    return np.moveaxis(image, axis, 0), False


def read_training_set(path) -> list[tuple]:
    """The reader napari calls (after :func:`get_reader` accepted ``path``)."""
    index = _index_of(path)
    if index is None:  # changed on disk since get_reader looked
        raise ValueError(f"{path} is not a napari-unet training set (no readable index.json).")
    return training_set_layer_data(index.parent)
