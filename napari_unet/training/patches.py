"""Training samples: targets from instance labels, random patches and their augmentation.

2D images ``(H, W)`` / ``(C, H, W)`` with labels ``(H, W)`` and 3D volumes ``(D, H, W)`` /
``(C, D, H, W)`` with labels ``(D, H, W)`` alike: the labels' number of axes says which.

Images are normalised once, whole, with the same :func:`~napari_unet.inference.inputs.fit_normalizer`
the predictor uses, so a network sees the same intensities in training and in prediction. A
:class:`PatchSampler` then cuts patches ``(C, *P)`` (square / cubic for an int patch size, or one
size per axis such as ``(16, 64, 64)`` for thick-slice stacks) with a seeded
``numpy.random.Generator``: most patches are placed to contain a random object pixel (so sparse
images still teach objects), the rest anywhere. Images smaller than a patch are reflect-padded
and the padding is marked -1 (ignored) in the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from ..inference.inputs import fit_normalizer
# the one module's rules for labels, channels and colour (importable from here as before)
from ..inputs import (TRAINING_IMAGE_LABELS, TRAINING_LABELS, as_channels_first, becomes_grey, check_instance_labels,
                      colour_last, colour_to_grey, image_channels_first)
from .augment import Augmenter
from .losses import IGNORE

__all__ = ["touching_boundaries", "check_training_labels", "binary_target", "boundary_target", "TARGET_MAKERS",
           "loss_weight_map", "TrainingImage", "as_channels_first", "colour_last", "colour_to_grey",
           "image_channels_first", "prepare_image", "PatchSampler"]


def touching_boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels on an object's inner boundary that touch a *different* object (4-connected in 2D,
    6-connected in 3D).

    Both objects lose their side of the contact line, which leaves a 2-pixel background gap.
    """
    # int64 throughout: with int32 labels np.where(labels > 0, labels, int64 max) stayed int32 and
    # wrapped the sentinel to -1, so every object pixel next to the background counted as touching
    labels = np.asarray(labels).astype(np.int64, copy=False)
    inner = find_boundaries(labels, connectivity=1, mode="inner")
    cross = ndi.generate_binary_structure(labels.ndim, 1)
    biggest = ndi.maximum_filter(labels, footprint=cross, mode="nearest")
    # background above every label, so the minimum finds the smallest neighbouring *object*
    sentinel = int(labels.max(initial=0)) + 1
    background_high = np.where(labels > 0, labels, sentinel)
    smallest = ndi.minimum_filter(background_high, footprint=cross, mode="nearest")
    other = ((biggest > 0) & (biggest != labels)) | ((smallest < sentinel) & (smallest != labels))
    return inner & other & (labels > 0)


def check_training_labels(labels, name: str = "") -> np.ndarray:
    """Instance labels ``(H, W)`` / ``(D, H, W)`` as an integer array a target can be made of.

    Booleans become 0/1, floats holding whole numbers (as labels saved by some tools do) become
    integers; fractional, non-finite, negative or non-numeric labels raise a ``ValueError`` that
    says what to do. Ids beyond int64 (uint64 above 2**63) are renumbered 1..N, keeping every
    object apart. The caller's array is never modified. (The rules:
    :func:`napari_unet.inputs.check_instance_labels` with :data:`~napari_unet.inputs.TRAINING_LABELS`.)
    """
    return check_instance_labels(labels, TRAINING_LABELS, where=f" of training image {name}" if name else "")


def binary_target(labels: np.ndarray) -> np.ndarray:
    """Binary target (int8: 0 background, 1 foreground) from instance labels ``(H, W)`` or ``(D, H, W)``.

    Foreground is ``labels > 0``, except pixels on the boundary between two different objects
    (:func:`touching_boundaries`), which are background: the thin gap teaches the network to
    separate touching nuclei, so connected components (and the watershed split in
    post-processing) see them apart.
    """
    labels = check_training_labels(labels)
    target = (labels > 0).astype(np.int8)
    target[touching_boundaries(labels.astype(np.int64))] = 0
    return target


def boundary_target(labels: np.ndarray) -> np.ndarray:
    """Three-class target (int8: 0 background, 1 interior, 2 boundary) from instance labels.

    The boundary class is every object's inner boundary (4- / 6-connected), so touching objects are
    always separated by boundary pixels and the interior seeds of the post-processing's watershed
    (``probabilities_to_labels(target="boundary")``) stay apart.
    """
    labels = check_training_labels(labels)
    target = (labels > 0).astype(np.int8)
    target[find_boundaries(labels, connectivity=1, mode="inner") & (labels > 0)] = 2
    return target


TARGET_MAKERS = {"binary": binary_target, "boundary": boundary_target}


def loss_weight_map(labels: np.ndarray, target: np.ndarray | None = None, **params) -> np.ndarray:
    """The U-Net paper's weight map as the loss sees it: computed on the objects as ``target``
    draws them (default :func:`binary_target`: gaps between touching objects cut), so the
    separating pixels count as background and get the largest weights. ``params`` go to
    :func:`~napari_unet.training.weightmap.weight_map` (``w0``, ``sigma``, ``spacing``)."""
    from .weightmap import weight_map

    target = binary_target(labels) if target is None else target
    return weight_map(np.where(target == 1, labels, 0).astype(np.int64), **params)


def loss_weight_map_planes(labels: np.ndarray, spacing=None, **params) -> np.ndarray:
    """:func:`loss_weight_map` of ``labels`` as fine-tuning's loss sees them, of their shape: a
    stack ``(..., H, W)`` without ``spacing`` plane by plane in pixels (as a 2D model's loss sees
    each plane); 2D labels, or any labels with ``spacing`` (one per axis, e.g. micrometres), whole.
    ``params`` as for :func:`loss_weight_map` (``w0``, ``sigma``, ``class_weights``)."""
    labels = np.asarray(labels)
    if labels.ndim > 2 and spacing is None:
        planes = labels.reshape((-1,) + labels.shape[-2:])
        return np.stack([loss_weight_map(p, **params) for p in planes]).reshape(labels.shape)
    return loss_weight_map(labels, spacing=spacing, **params)


@dataclass
class TrainingImage:
    """One normalised image (2D) or volume (3D) ready for patch sampling.

    ``image`` ``(C, *spatial)`` float32; ``target`` ``(*spatial)`` int8 (-1 = ignore: not
    reviewed, or padding); ``weights`` ``(*spatial)`` float32 per-pixel loss weights or None;
    ``labels`` the instance labels. ``spatial`` is ``(H, W)`` or ``(D, H, W)``.
    """

    image: np.ndarray
    target: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None = None
    name: str = ""
    focus: np.ndarray | None = None  # flat indices of pixels to place patches on first (see set_focus)

    def set_focus(self, mask: np.ndarray | None) -> None:
        """Pixels (a boolean map of the unpadded image) that a share of the patches is placed on,
        e.g. where the base model was wrong (:func:`~napari_unet.training.focus.error_map`)."""
        if mask is None:
            self.focus = None
            return
        mask = np.asarray(mask, bool)
        mask = np.pad(mask, [(0, t - n) for t, n in zip(self.target.shape, mask.shape)])
        self.focus = np.flatnonzero(mask & (self.target != IGNORE))

    def __post_init__(self):
        flat = self.target.ravel()
        self.foreground = np.flatnonzero(flat > 0)
        ignored = flat == IGNORE
        # where patches may be anchored: the counted pixels when part of the image is ignored
        self.counted = np.flatnonzero(~ignored) if ignored.any() else None
        if self.counted is not None and not self.counted.size:
            raise ValueError(f"Nothing of image {self.name or ''} is reviewed: mark the region you checked.")


def _per_axis(size, spatial_dims: int, what: str) -> tuple[int, ...]:
    """An int (the same on every axis) or one int per axis, as a tuple of ``spatial_dims`` ints."""
    if np.ndim(size) == 0:
        return (int(size),) * spatial_dims
    size = tuple(int(s) for s in size)
    if len(size) != spatial_dims:
        raise ValueError(f"{what} needs one size per axis ({spatial_dims}) or a single int, got {size}.")
    return size


def prepare_image(image: np.ndarray, labels: np.ndarray, normalization: dict,
                  min_size: int | Sequence[int] = 0, name: str = "", gap_weight: float = 1.0,
                  weight_map: dict | None = None, target: str = "binary",
                  reviewed: np.ndarray | None = None, in_channels: int | None = None) -> TrainingImage:
    """Normalise ``image``, build the target and reflect-pad both to at least ``min_size``.

    ``labels`` ``(H, W)`` (2D) or ``(D, H, W)`` (3D) decide the dimensionality; ``image`` is
    ``labels.shape`` or ``(C, *labels.shape)``. ``min_size``: an int for every axis or one per
    axis (e.g. the patch shape ``(16, 64, 64)``).
    ``target``: ``"binary"`` (:func:`binary_target`) or ``"boundary"`` (:func:`boundary_target`).
    ``reviewed``: a boolean mask of the labels' shape marking the pixels somebody checked; the
    target is -1 (ignored by every loss) elsewhere, so a half-corrected image teaches only what
    was checked.

    Per-pixel loss weights, at most one of:

    - ``weight_map={"w0": 10, "sigma": 5, "spacing": ...}``: the U-Net paper's weight map
      (:func:`~napari_unet.training.weightmap.weight_map`; ``spacing`` one per axis, e.g.
      ``(2, 1, 1)`` for a stack whose z step is twice the pixel), computed on the target's objects,
      i.e. after the gap between touching objects is cut, so that the gap pixels (d1 = d2 = 1)
      get the largest weights, as between the paper's touching cells;
    - ``gap_weight`` > 1: only the gap pixels get that weight (others 1), a cheaper stand-in.

    Input checks (``ValueError`` naming the problem and the fix): labels as in
    :func:`check_training_labels`; images of a numeric type; an image ``(*labels.shape, 3 or 4)``
    (colour last, as napari and image files hold it) is taken channels-first; with
    ``in_channels`` (the network's), a colour image for a one-channel network becomes grey (the
    mean of R, G, B, as the predictor does) and any other channel mismatch is refused.
    """
    if gap_weight <= 0:
        raise ValueError(f"gap_weight must be positive, got {gap_weight}.")
    if weight_map is not None and gap_weight != 1.0:
        raise ValueError("Choose the paper's weight map or gap_weight, not both.")
    where = f" of training image {name}" if name else ""
    labels = check_instance_labels(labels, TRAINING_IMAGE_LABELS, where=where)  # ... and 2D or 3D
    chw = image_channels_first(image, labels, name)
    given, which = np.shape(image), f"training image {name}" if name else "the training image"
    if in_channels is not None and chw.shape[0] != in_channels:
        if becomes_grey(chw.shape[0], in_channels):
            chw = colour_to_grey(chw)
        else:
            raise ValueError(f"The model takes {in_channels} channel(s) but {which} has {chw.shape[0]} (shape "
                             f"{given}): choose a base model for {chw.shape[0]}-channel "
                             "images, or give images with that many channels (channels first).")
    if target not in TARGET_MAKERS:
        raise ValueError(f"Unknown target {target!r}: choose one of {', '.join(TARGET_MAKERS)}.")
    x = fit_normalizer(chw, normalization)(chw)
    target = TARGET_MAKERS[target](labels)
    unreviewed = None
    if reviewed is not None:
        reviewed = np.asarray(reviewed)
        if reviewed.shape != labels.shape:
            raise ValueError(f"The reviewed mask {reviewed.shape} does not match the labels {labels.shape}"
                             f"{' (' + name + ')' if name else ''}.")
        if not reviewed.any():
            raise ValueError(f"Nothing of image {name or ''} is marked as reviewed: mark the region you checked.")
        unreviewed = ~reviewed.astype(bool)
    weights = None
    if weight_map is not None:
        # on every object (those just outside the reviewed region still separate their neighbours);
        # the unreviewed pixels are left out of the class balance
        weights = loss_weight_map(labels, target, **{**weight_map, "ignore_mask": unreviewed})
    elif gap_weight != 1.0:
        weights = np.where(touching_boundaries(labels.astype(np.int64)), np.float32(gap_weight), np.float32(1.0))
    if unreviewed is not None:
        target[unreviewed] = IGNORE
    pad = [(0, max(0, m - n)) for m, n in zip(_per_axis(min_size, labels.ndim, "min_size"), labels.shape)]
    if any(p[1] for p in pad):
        x = np.pad(x, [(0, 0)] + pad, mode="reflect")
        target = np.pad(target, pad, constant_values=IGNORE)
        labels = np.pad(labels, pad)
        weights = None if weights is None else np.pad(weights, pad, constant_values=1.0)
    return TrainingImage(np.ascontiguousarray(x, np.float32), target, labels, weights, name)


class PatchSampler:
    """Random patches from a list of :class:`TrainingImage` (all 2D or all 3D).

    Args:
        images: the training images (each at least ``patch_size`` per side: see
            :func:`prepare_image`).
        patch_size: side ``P`` in pixels (a square / cube), or one size per axis, e.g.
            ``(16, 64, 64)`` for a thick-slice stack.
        rng: the generator that drives everything (fixed seed = same patches).
        foreground_bias: probability that a patch is placed to contain a random object pixel.
        focus_bias: probability that a patch is placed on a random pixel of the image's
            ``focus`` (where the base model was wrong), before ``foreground_bias`` applies.
        augment: ``True`` for the default :class:`~napari_unet.training.augment.Augmenter` (flips and
            quarter turns, the U-Net paper's elastic deformation, scale, intensity, noise), an
            ``Augmenter`` of your own, or ``False`` for none.
        image_weights: relative probability of drawing each image (default: equal).
    """

    def __init__(self, images: list[TrainingImage], patch_size: int | Sequence[int], rng: np.random.Generator,
                 foreground_bias: float = 0.8, augment: "bool | Augmenter" = True, image_weights=None,
                 focus_bias: float = 0.0):
        if not images:
            raise ValueError("There are no training images.")
        dims = {im.target.ndim for im in images}
        if len(dims) != 1:
            raise ValueError("Mix of 2D and 3D training images: train a 2D network on images, a 3D one on volumes.")
        self.patch_shape = _per_axis(patch_size, dims.pop(), "patch_size")
        for im in images:
            if any(n < p for n, p in zip(im.target.shape, self.patch_shape)):
                raise ValueError(f"Image {im.name or ''} {im.target.shape} is smaller than the patch "
                                 f"{patch_size if np.ndim(patch_size) == 0 else self.patch_shape}.")
        self.images, self.rng = images, rng
        self.patch_size = int(patch_size) if np.ndim(patch_size) == 0 else self.patch_shape
        self.foreground_bias = float(foreground_bias)
        self.focus_bias = float(focus_bias)
        self.augment = Augmenter() if augment is True else (augment or None)
        w = np.ones(len(images)) if image_weights is None else np.asarray(image_weights, np.float64)
        if w.shape != (len(images),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("image_weights needs one non-negative weight per image, not all zero.")
        self.p = w / w.sum()

    def _around(self, flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A random patch corner such that the patch contains the pixel ``flat_index``."""
        centre = np.unravel_index(flat_index, shape)
        return tuple(int(np.clip(c - self.rng.integers(p), 0, n - p))
                     for c, p, n in zip(centre, self.patch_shape, shape))

    def _corner(self, im: TrainingImage) -> tuple[int, ...]:
        shape = im.target.shape
        if self.focus_bias and im.focus is not None and im.focus.size and self.rng.uniform() < self.focus_bias:
            return self._around(im.focus[self.rng.integers(im.focus.size)], shape)
        if im.foreground.size and self.rng.uniform() < self.foreground_bias:
            return self._around(im.foreground[self.rng.integers(im.foreground.size)], shape)
        if im.counted is not None:  # part of the image is ignored: put a reviewed pixel in the patch
            return self._around(im.counted[self.rng.integers(im.counted.size)], shape)
        return tuple(int(self.rng.integers(n - p + 1)) for n, p in zip(shape, self.patch_shape))

    def sample(self):
        """One ``(image (C, *P) float32, target (*P) int64, weights (*P) float32 or None)``."""
        im = self.images[self.rng.choice(len(self.images), p=self.p)]
        corner = self._corner(im)
        win = tuple(slice(c, c + p) for c, p in zip(corner, self.patch_shape))
        image, target = im.image[(slice(None),) + win], im.target[win]
        weights = None if im.weights is None else im.weights[win]
        if self.augment is not None:
            image, target, weights = self.augment(self.rng, image, target, weights)
        return (np.ascontiguousarray(image, np.float32), target.astype(np.int64),
                None if weights is None else weights.astype(np.float32))

    def batch(self, n: int):
        """``n`` samples stacked: images ``(n, C, *P)``, targets ``(n, *P)``, weights or None."""
        samples = [self.sample() for _ in range(n)]
        weights = None if any(s[2] is None for s in samples) else np.stack([s[2] for s in samples])
        return np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples]), weights
