"""The one place that reads images and checks labels, for every front end (no Qt, no torch).

* :mod:`.files`: reading image files (zarr, TIFF, NPY, PNG...), lazily or whole, and whether a
  file says it holds colour (:func:`marks_rgb`).
* :mod:`.arrange`: data types a network can read, channels first for prediction
  (:func:`prepare_image`) and training (:func:`image_channels_first`), and the one colour rule:
  a colour image (3 or 4 channels) becomes grey, the mean of R, G and B, for a one-channel
  network (:func:`becomes_grey`, :func:`colour_to_grey`).
* :mod:`.labels`: instance labels (whole, non-negative ids of the image's shape) checked with
  one set of rules, each caller's words in a :class:`LabelRules`.

The widgets, the command line, training, prediction, the training set, the label edits and the
metrics all call these; none keeps a copy of a rule.
"""

from .arrange import (CHANNEL_AXIS_HINT, PreparedImage, as_channels_first, becomes_grey, check_image_dtype,
                      colour_last, colour_to_grey, image_channels_first, looks_rgb, prepare_image)
from .files import COLOUR_FORMATS, is_image_input, marks_rgb, open_image_file, read_image, read_whole
from .labels import (EDITED_LABELS, EDITED_LABELS_NON_NEGATIVE, LABEL_FILES, SCORED_LABELS, STORED_LABELS,
                     TRAINING_IMAGE_LABELS, TRAINING_LABELS, WEIGHT_MAP_LABELS, LabelRules, check_instance_labels,
                     spatial_shape)

__all__ = ["CHANNEL_AXIS_HINT", "PreparedImage", "as_channels_first", "becomes_grey", "check_image_dtype",
           "colour_last", "colour_to_grey", "image_channels_first", "looks_rgb", "prepare_image",
           "COLOUR_FORMATS", "is_image_input", "marks_rgb", "open_image_file", "read_image", "read_whole",
           "EDITED_LABELS", "EDITED_LABELS_NON_NEGATIVE", "LABEL_FILES", "SCORED_LABELS", "STORED_LABELS",
           "TRAINING_IMAGE_LABELS", "TRAINING_LABELS", "WEIGHT_MAP_LABELS", "LabelRules", "check_instance_labels",
           "spatial_shape"]
