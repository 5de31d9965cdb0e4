"""Corrections made ready to train on: checked, fit for the base model, cut into planes, split by
region, resized.

A few corrected images are split into training and validation *by region* (whole images when
there are enough, else a held-out strip of every image, never overlapping patches), and resized so
that their objects reach the size the network trains at (:func:`training_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..trainingset import check_labels

#: the object diameter (px) a 2D network is fine-tuned at when its base model declares none
DEFAULT_OBJECT_DIAMETER = 30.0


def check_corrections(triples: Sequence, spatial_dims: int) -> "Corrections":
    """``(image, labels, reviewed)`` triples checked (instance labels, a reviewed region of their
    shape; None = all reviewed), without the unreviewed ones, and cut into planes for 2D models."""
    from ..inputs import image_channels_first

    if not triples:
        raise ValueError("The training set is empty: correct an image and add it first.")
    checked = []
    for image, labels, reviewed in triples:
        image = np.asarray(image)
        labels = check_labels(labels)
        reviewed = np.ones(labels.shape, bool) if reviewed is None else np.asarray(reviewed, bool)
        if reviewed.shape != labels.shape:
            raise ValueError(f"The reviewed region {reviewed.shape} does not match the labels {labels.shape}.")
        checked.append((image, labels, reviewed))
    if not any(r.any() for _, _, r in checked):
        raise ValueError("Nothing is marked as reviewed: mark the regions you corrected (or the whole image).")
    checked = _planes([t for t in checked if t[2].any()], spatial_dims)
    for i, (image, labels, _) in enumerate(checked):  # a mismatch is said before anything else
        image_channels_first(image, labels, str(i))
    return checked


def fit_corrections(triples: Sequence, in_channels: int, spatial_dims: int,
                    names: Sequence[tuple[str, str]] | None = None) -> tuple[list[tuple], list[str]]:
    """``(image, labels, reviewed)`` triples made fit for a base model of ``in_channels`` and
    ``spatial_dims``, and what was changed (lines for the user).

    ``names`` (one ``(labels name, image name)`` per triple, e.g. the layers') go into the
    messages. Labels are checked as :func:`~napari_unet.trainingset.check_labels` does; an image
    with its colour last is taken channels first and a colour image (3 or 4 channels) becomes grey
    for a one-channel model, with :mod:`napari_unet.inputs`' rules, as in prediction. Everything
    else that does not fit raises a ``ValueError`` naming the layers: unusable labels, labels and
    image of different sizes, channel counts and dimensions the model cannot take.
    """
    if names is None or len(names) != len(triples):
        names = [(f"corrections {i}", f"image {i}") for i in range(len(triples))]
    checked, notes = [], []
    for (image, labels, reviewed), (labels_name, image_name) in zip(triples, names):
        labels = _fit_labels(labels, labels_name)
        image, note = _fit_image(image, labels, in_channels, labels_name, image_name)
        if note:
            notes.append(note)
        if labels.ndim == 2 and spatial_dims == 3:
            raise ValueError(f"The base model is 3D (it trains on volumes) but '{labels_name}' is a 2D image: "
                             "choose a 2D base model such as 'unet', or correct a stack.")
        checked.append((image, labels, reviewed))
    return checked, notes


def _fit_labels(labels, name: str) -> np.ndarray:
    """Labels checked (:func:`~napari_unet.trainingset.check_labels`) as a 2D image or a stack."""
    try:
        labels = check_labels(labels)
    except ValueError as exc:
        raise ValueError(f"'{name}': {exc.args[0]}") from None
    if labels.ndim not in (2, 3):
        raise ValueError(f"'{name}' has {labels.ndim} dimensions {labels.shape}: the models train on "
                         "2D images, stacks of them and volumes.")
    return labels


def _fit_image(image, labels: np.ndarray, in_channels: int, labels_name: str, image_name: str):
    """``(image, note)``: ``image`` of the labels' size, channels first when it has channels, grey
    (with a note saying so) when a colour image meets a one-channel model."""
    from ..inputs import becomes_grey, check_image_dtype, colour_last, colour_to_grey

    image = np.asarray(image)
    check_image_dtype(image.dtype, f"image '{image_name}'")
    if colour_last(image.shape, labels.shape):
        image = np.moveaxis(image, -1, 0)
    if image.shape[-labels.ndim:] != labels.shape or image.ndim - labels.ndim not in (0, 1):
        raise ValueError(f"The corrections '{labels_name}' {labels.shape} do not fit the image "
                         f"'{image_name}' {image.shape}: correct a labels layer made from this image "
                         "(Segment it, then Correct), or open the image the corrections were drawn on.")
    channels = image.shape[0] if image.ndim == labels.ndim + 1 else 1
    if channels == in_channels:
        return image, ""
    if becomes_grey(channels, in_channels):
        return (colour_to_grey(image, keepdims=False),
                f"The colour image '{image_name}' was converted to grey for this one-channel model.")
    raise ValueError(f"The base model takes {in_channels} channel(s) but the image '{image_name}' has "
                     f"{channels}: choose a base model made for {channels}-channel images.")


class Corrections(list):
    """Checked ``(image, labels, reviewed)`` triples; ``groups[i]``: the corrected image (or stack)
    triple ``i`` comes from. The planes of one stack are one group: neighbouring planes hold
    nearly the same objects, so validation holds out whole groups, never one plane of a stack
    whose neighbours train."""

    def __init__(self, triples=(), groups=None):
        super().__init__(triples)
        self.groups = list(range(len(self))) if groups is None else list(groups)


def _planes(triples: Sequence, spatial_dims: int) -> Corrections:
    """2D models train on the planes of stacks: every plane with reviewed pixels."""
    out, groups = [], []
    for group, (image, labels, reviewed) in enumerate(triples):
        labels = np.asarray(labels)
        if labels.ndim == spatial_dims:
            out.append((image, labels, reviewed))
            groups.append(group)
            continue
        if spatial_dims == 2 and labels.ndim == 3:
            image = np.asarray(image)
            chw = image.ndim == 4  # (C, Z, H, W)
            for z in range(labels.shape[0]):
                if reviewed[z].any():
                    out.append((image[:, z] if chw else image[z], labels[z], reviewed[z]))
                    groups.append(group)
            continue
        raise ValueError(f"Labels of {labels.ndim} dimensions do not fit a {spatial_dims}D model: "
                         + ("choose a 2D base model (e.g. unet), or correct a stack (Z, Y, X)." if spatial_dims == 3
                            else "choose a 3D base model (e.g. unet-3d) for volumes, or correct single planes."))
    return Corrections(out, groups)


def _crop(triple, region):
    image, labels, reviewed = triple
    image = np.asarray(image)
    lead = (slice(None),) * (image.ndim - labels.ndim)
    return image[lead + region], labels[region], reviewed[region]


def _region(triple, box: tuple | None = None) -> tuple:
    """``(image, labels)`` of a triple's reviewed region: its box (or ``box``), labels 0 where not reviewed."""
    image, labels, reviewed = _crop(triple, _reviewed_box(triple[2]) if box is None else box)
    return image, np.where(reviewed, labels, 0)


def _reviewed_box(reviewed) -> tuple:
    """The bounding box (slices) of the reviewed pixels."""
    idx = np.nonzero(np.asarray(reviewed))
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def _strip(triple, fraction: float, min_side: int):
    """``(training part, validation (image, labels))`` cut from the far end of the reviewed
    region's box along its longer in-plane axis, or None when no fully reviewed strip of at least
    ``min_side`` pixels fits with ``min_side`` pixels left to train on."""
    labels, reviewed = np.asarray(triple[1]), np.asarray(triple[2], bool)
    box = _reviewed_box(reviewed)
    lengths = [box[a].stop - box[a].start for a in range(labels.ndim)]
    axis = int(np.argmax(lengths[-2:])) + labels.ndim - 2
    n = lengths[axis]
    side = max(min_side, int(round(n * fraction)))
    if n - side < min_side:
        return None
    cut = box[axis].stop - side
    tail = tuple(slice(cut, box[a].stop) if a == axis else box[a] for a in range(labels.ndim))
    if not reviewed[tail].all():
        return None
    # training keeps everything before the cut (context included): the strip is never seen
    head = tuple(slice(0, cut) if a == axis else slice(None) for a in range(labels.ndim))
    image, lab, _ = _crop(triple, tail)
    return _crop(triple, head), (image, lab)


def split_by_region(triples: Sequence, fraction: float = 0.25, min_side: int = 64, whole_from: int = 4):
    """``(train, val)``: with ``whole_from`` or more images every 4th image (at least one) is held
    out whole, cut to its reviewed region's box (an image is a :class:`Corrections` group where
    ``triples`` has them: every plane of a held-out stack goes); with fewer, a strip at the far
    end of every image's reviewed region (the last ``fraction`` of it along its longer axis, at
    least ``min_side`` pixels, fully reviewed) becomes validation and is cut off the training
    image, so no training patch ever overlaps a validation pixel. When no image allows a strip
    (small or sparsely reviewed images) and there are two or more, the first is held out whole.
    Validation items are ``(image, labels)`` (labels 0 where not reviewed); an empty ``val``
    means nothing could be held out."""
    groups = list(getattr(triples, "groups", range(len(triples))))
    triples = list(triples)

    def whole(held):
        train = [t for i, t in enumerate(triples) if i not in held]
        # cut to the reviewed region's box: objects found outside it are no errors
        val = [_region(triples[i]) for i in sorted(held) if np.asarray(triples[i][2]).any()]
        return train, val

    order = list(dict.fromkeys(groups))  # the images, in the order given
    if len(order) >= max(2, whole_from):
        held = set(order[::4])
        return whole({i for i, g in enumerate(groups) if g in held})
    train, val = [], []
    for t in triples:
        cut = _strip(t, fraction, min_side) if np.asarray(t[2]).any() else None
        if cut is None:
            train.append(t)
        else:
            train.append(cut[0])
            val.append(cut[1])
    if not val and len(triples) >= 2:  # the first image (all its planes, when another image is left)
        return whole({i for i, g in enumerate(groups) if g == groups[0]} if len(order) >= 2 else {0})
    return train, val


def training_scale(settings, loaded, triples) -> tuple[float, float | None, float | None]:
    """``(scale, network diameter, the corrections' diameter)``: the factor the corrected images
    are resized by so that their objects (the median of each image's median reviewed object) reach
    the diameter the network is trained at. ``(1, None, None)`` for 3D models, with
    ``settings.resize`` off, or without objects of 16 px or more."""
    from ..scaling import check_diameter, median_diameter, scale_for

    if not settings.resize or loaded.spatial_dims != 2:
        return 1.0, None, None
    # objects cut by the edge of a reviewed region (or of the image) are measured only where none is whole
    per_image = [d for d in (median_diameter(lab, r, whole=True) for _, lab, r in triples) if d is not None]
    if not per_image:
        return 1.0, None, None
    diameter = float(np.median(per_image))
    # a base that declares its diameter is trained at it; one that does not, on objects no larger than
    # DEFAULT_OBJECT_DIAMETER (shrinking large objects was measured to help; enlarging small ones was not)
    network = check_diameter(settings.object_diameter, "fine-tuning object diameter") or loaded.object_diameter \
        or min(diameter, DEFAULT_OBJECT_DIAMETER)
    try:
        return scale_for(network, diameter), network, diameter
    except ValueError as exc:
        raise ValueError(f"{exc} (measured on your corrections: objects of {diameter:.0f} px; set the fine-tuning "
                         "object diameter, or turn resizing off).") from None


def _resized(item, scale: float):
    """A training triple ``(image, labels, reviewed)`` or validation pair ``(image, labels)`` with
    its in-plane axes resized by ``scale`` (images linear, labels and masks nearest)."""
    from ..scaling import resize_image, resize_labels, scaled_shape

    if scale == 1:
        return item
    from ..inputs import image_channels_first

    labels, image = np.asarray(item[1]), np.asarray(item[0])
    shape = scaled_shape(labels.shape, scale)
    resized = resize_image(image_channels_first(image, labels), shape)  # (C, *shape)
    if image.ndim == labels.ndim:  # the layout it came in: grey stays grey, colour last stays last
        resized = resized[0]
    elif image.shape[:labels.ndim] == labels.shape:
        resized = np.moveaxis(resized, 0, -1)
    out = (resized, resize_labels(labels, shape))
    return out + (resize_labels(np.asarray(item[2]), shape),) if len(item) == 3 else out


@dataclass
class PreparedCorrections:
    """The corrections split and resized for a run: what trains, what validates, at which scale."""

    train: list
    val: list
    base_val: list  # the validation regions at the base model's own scale
    base_scale: float  # the factor the base model resizes the corrections by
    scale: float
    net_diameter: float | None
    diameter: float | None

    @classmethod
    def split(cls, settings, loaded, checked) -> "PreparedCorrections":
        """Split checked corrections as ``settings`` (a FinetuneSettings) say, and resize them for ``loaded``."""
        if settings.validate:
            train, val = split_by_region(checked, settings.val_fraction, min_side=64,
                                         whole_from=settings.whole_images_from)
            if not val:
                raise ValueError("Nothing can be held out to check the model: mark more as reviewed (a fully "
                                 "reviewed strip of at least 64 px at the end of a region of 128 px or more), add "
                                 "another image, or turn validation off to keep the model unchecked.")
        else:
            train, val = checked, []
        # objects are resized to the diameter the network trains at; the base is scored at its own scale
        scale, net_diameter, diameter = training_scale(settings, loaded, checked)
        base_scale = loaded.scale(diameter) if net_diameter else 1.0
        resized_val = [_resized(v, scale) for v in val]
        base_val = resized_val if base_scale == scale else [_resized(v, base_scale) for v in val]
        return cls([_resized(t, scale) for t in train], resized_val, base_val, base_scale, scale, net_diameter,
                   diameter)

    def base_regions(self, checked) -> list:
        """The reviewed regions of ``checked`` (the corrections this was split from) that the base
        model is scored on to choose its post-processing (:func:`reviewed_regions`), at its scale."""
        return [_resized(r, self.base_scale) for r in reviewed_regions(checked, self.base_scale)]


#: pixels (at the base model's scale) of the corrections the base is scored on to choose its
#: post-processing when it beats its fine-tuned weights: 2 megapixels, about 22 s of prediction and
#: grid on two CPU cores (3 Usiigaci frames at the bundled unet's scale: 0.7 megapixels, 6 s)
REGIONS_BUDGET = 2_000_000


def reviewed_regions(triples: Sequence, scale: float = 1.0, budget: float = REGIONS_BUDGET,
                     min_side: int = 64) -> list:
    """``(image, labels)`` of the corrections' reviewed regions, for scoring a model that trained on
    none of them (the base): four times the objects of the held-out strips when there are three
    images (3 Usiigaci frames: 213 objects against 56).

    Each image's reviewed box where it is fully reviewed (in an unreviewed hole, the objects a model
    finds would count as false ones), the images in turn (the planes of stacks one after another,
    so that one stack does not take all the budget), each cut along its longer in-plane axis to what
    is left of ``budget`` pixels at ``scale`` (a cut under ``min_side`` pixels is left out)."""
    groups = list(getattr(triples, "groups", range(len(triples))))
    seen: dict = {}
    order = []
    for i, group in enumerate(groups):  # the first plane of every image, then the second, ...
        order.append((seen.get(group, 0), i))
        seen[group] = seen.get(group, 0) + 1
    regions, left = [], float(budget)
    for _, i in sorted(order):
        triple = triples[i]
        reviewed = np.asarray(triple[2], bool)
        box = _reviewed_box(reviewed)
        if not reviewed[box].all():
            continue
        sides = [b.stop - b.start for b in box]
        pixels = float(np.prod(sides)) * scale ** 2  # only the in-plane axes are resized
        if pixels > left:
            axis = int(np.argmax(sides[-2:])) + len(sides) - 2
            keep = int(sides[axis] * left / pixels)
            if keep < min_side:
                continue
            box = tuple(slice(b.start, b.start + keep) if a == axis else b for a, b in enumerate(box))
            pixels = left
        regions.append(_region(triple, box))
        left -= pixels
    return regions
