"""Instance labels checked with one set of rules: whole non-negative ids of the right shape.

:func:`check_instance_labels` runs every check in one order (data type, number of axes,
negative ids, shape, id range) for every caller; a :class:`LabelRules` says what that caller
takes (booleans, floats holding whole numbers, which numbers of axes, how large ids are kept)
and in which words it refuses the rest, so each front end keeps its own voice (the training
set's "labels", the command line's "masks" with the file name, the weight map's terse
``labels must be ...``). The rules of every caller are side by side at the end of this module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

#: Floats hold every whole number up to this exactly; beyond it, two ids may round to one.
FLOAT_EXACT = 2.0 ** 53


@dataclass(frozen=True)
class LabelRules:
    """What one caller takes as instance labels and how it says what is wrong.

    Messages are ``str.format`` templates over ``what`` and ``where`` (the caller's words for the
    labels), ``dtype``, ``shape`` (the labels'), ``expected`` (the shape they must have) and
    ``smallest`` (the most negative id). An empty template says ``dtype``'s message instead.
    """

    dtype: str  #: not numbers that can be ids (text, objects, complex; floats and booleans where refused)
    nan: str = ""  #: floats with NaN or infinite values
    fractional: str = ""  #: floats with fractions
    float_range: str = ""  #: whole floats beyond ``FLOAT_EXACT``, where accepted
    whole_floats: str = ""  #: whole floats, where refused
    negative: str | None = ""  #: negative ids; None: negative ids are kept
    ndim: str = ""  #: labels with a number of axes not in ``ndims``
    shape: str = ""  #: labels of another shape than the one given
    too_large: str = ""  #: ids above 2**32, where ``ids == "uint32"``
    bools: bool = True  #: booleans are labels 0 and 1 (as uint8); False: refused
    floats: bool = True  #: floats holding whole numbers become int64; False: refused
    ndims: tuple[int, ...] = ()  #: the numbers of axes allowed (empty: any)
    #: "keep" the integer type; "renumber" uint64 ids beyond int64 as 1..N; "uint32": refuse ids
    #: above 2**32 and store the rest as uint16 / uint32
    ids: str = "keep"

    def say(self, key: str, **fields) -> str:
        template = getattr(self, key) or self.dtype
        return template.format(**fields)


def check_instance_labels(labels, rules: LabelRules, *, what: str = "labels", where: str = "",
                          shape: Sequence[int] | None = None) -> np.ndarray:
    """``labels`` as an integer array of object ids (0 = background), or a ``ValueError`` in the
    words of ``rules``. ``shape``: the shape the labels must have (the image's, without channels).
    The caller's array is never modified; the result may be it or a converted copy."""
    labels = np.asarray(labels)
    fields = {"what": what, "where": where, "dtype": labels.dtype, "shape": tuple(labels.shape),
              "expected": None if shape is None else tuple(shape), "smallest": None}
    labels = _integer_ids(labels, rules, fields)
    if rules.ndims and labels.ndim not in rules.ndims:
        raise ValueError(rules.say("ndim", **fields))
    if rules.negative is not None and labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError(rules.say("negative", **{**fields, "smallest": int(labels.min())}))
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise ValueError(rules.say("shape", **fields))
    return _id_range(labels, rules, fields)


def _integer_ids(labels: np.ndarray, rules: LabelRules, fields: dict) -> np.ndarray:
    """Booleans and floats holding whole numbers as integers, where ``rules`` take them."""
    if labels.dtype == bool:
        if not rules.bools:
            raise ValueError(rules.say("dtype", **fields))
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise ValueError(rules.say("nan", **fields))
        if not np.array_equal(labels, np.round(labels)):
            raise ValueError(rules.say("fractional", **fields))
        if not rules.floats:
            raise ValueError(rules.say("whole_floats", **fields))
        if labels.size and max(abs(float(labels.min())), float(labels.max())) > FLOAT_EXACT:
            raise ValueError(rules.say("float_range", **fields))
        return labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise ValueError(rules.say("dtype", **fields))
    return labels


def _id_range(labels: np.ndarray, rules: LabelRules, fields: dict) -> np.ndarray:
    if rules.ids == "renumber" and labels.size and labels.dtype == np.uint64 \
            and labels.max() > np.iinfo(np.int64).max:
        ids, inverse = np.unique(labels, return_inverse=True)  # every object stays apart
        return (inverse.reshape(labels.shape) + (0 if ids[0] == 0 else 1)).astype(np.int64)
    if rules.ids == "uint32":
        if labels.size and labels.max() > np.iinfo(np.uint32).max:
            raise ValueError(rules.say("too_large", **fields))
        return labels.astype(np.uint16 if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32)
    return labels


def spatial_shape(image, channel_axis: int | None = None) -> tuple:
    """The shape of the labels that belong to ``image`` (its channel axis removed)."""
    shape = list(np.shape(image))
    if channel_axis is not None:
        shape.pop(channel_axis)
    return tuple(shape)


# -- every caller's rules ------------------------------------------------------------------------
_WHOLE_IDS = "use a Labels layer of whole object ids (0 = background)"

#: A training set's corrections (and what is fine-tuned on): stored as uint16 / uint32.
STORED_LABELS = LabelRules(
    dtype="The {what} must be integer object ids, got {dtype}.",
    nan="The {what} hold fractional or non-finite values ({dtype}): " + _WHOLE_IDS + ".",
    fractional="The {what} hold fractional or non-finite values ({dtype}): " + _WHOLE_IDS + ".",
    float_range="The {what} hold ids above 2^32: relabel them 1..N first.",
    negative="The {what} hold negative ids: use 0 for background and 1, 2, ... for objects.",
    shape="The {what} {shape} do not match the image {expected}: correct a labels layer made from this image.",
    too_large="The {what} hold ids above 2^32: relabel them 1..N first.",
    ids="uint32")

#: What the trainer makes targets of (``where``: " of training image <name>").
TRAINING_LABELS = LabelRules(
    dtype="The labels{where} must be integer object ids (0 = background), got data type {dtype}: convert them "
          "to integers first.",
    nan="The labels{where} hold NaN or infinite values: labels must be whole object ids (0 = background, 1, 2, "
        "... one per object); fill the gaps with 0 first.",
    fractional="The labels{where} hold fractional values ({dtype}), like probabilities: labels must be whole "
               "object ids (0 = background, 1, 2, ...); threshold and label them first (e.g. "
               "skimage.measure.label(p > 0.5)).",
    float_range="The labels{where} hold ids too large for a float ({dtype}) to tell apart: save them as integers "
                "(uint32), numbered 1..N.",
    negative="The labels{where} hold negative ids (smallest {smallest}): use 0 for background and 1, 2, ... for "
             "objects.",
    ndim="Labels must be 2D (H, W) or 3D (D, H, W), got shape {shape}{where}: give one label image per image "
         "(one plane, or one volume for a 3D model).",
    ids="renumber")
#: ... and a label image per training image: 2D or 3D.
TRAINING_IMAGE_LABELS = replace(TRAINING_LABELS, ndims=(2, 3))

#: The U-Net weight map's input: an integer mask, 2D or 3D.
WEIGHT_MAP_LABELS = LabelRules(
    dtype="labels must be an integer instance mask (0 = background, 1..N = objects), got dtype {dtype}. Label a "
          "binary mask first, e.g. skimage.measure.label(mask).",
    negative="labels must be >= 0 (0 = background); got negative values.",
    ndim="labels must be 2D (Y, X) or 3D (Z, Y, X), got shape {shape}.",
    bools=False, floats=False, ndims=(2, 3))

#: A labels layer edited in place (napari's own ids, negative ones included).
EDITED_LABELS = LabelRules(dtype="Labels must hold integers, got {dtype}.", negative=None, bools=False,
                           floats=False)
EDITED_LABELS_NON_NEGATIVE = replace(EDITED_LABELS, negative="Labels must not be negative.")

#: Mask and label files of the command line (``what``: the file).
LABEL_FILES = LabelRules(
    dtype="{what}: masks must be integer instance labels (0 = background), not {dtype}",
    float_range="{what}: mask ids too large for a float ({dtype}) to tell apart: save them as integers",
    negative="{what}: masks must not hold negative labels",
    shape="{what}: mask shape {shape} differs from its image's {expected}")

_NOT_INTEGERS = "Label images must hold integers, got {dtype}: "
#: What is scored (:func:`napari_unet.metrics.evaluate`): integers only, so nothing is guessed.
SCORED_LABELS = LabelRules(
    dtype=_NOT_INTEGERS + "convert them to integer object ids (0 = background, 1, 2, ...).",
    fractional=_NOT_INTEGERS + "they hold fractions or NaN, like probabilities: threshold and label them first "
                               "(e.g. skimage.measure.label(p > 0.5)).",
    nan=_NOT_INTEGERS + "they hold fractions or NaN, like probabilities: threshold and label them first "
                        "(e.g. skimage.measure.label(p > 0.5)).",
    whole_floats=_NOT_INTEGERS + "they hold whole numbers, so convert them with labels.astype(int).",
    negative="Label images cannot hold negative values (found {smallest}; 0 is the background): number the "
             "objects 1, 2, ... (e.g. skimage.segmentation.relabel_sequential).",
    floats=False)
