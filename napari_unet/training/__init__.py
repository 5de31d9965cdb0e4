"""Training: targets and patches, losses and the training loop (no Qt).

``train_iter`` is a generator of :class:`TrainingEvent`; drain it with
``napari_unet.inference.predictor.run_to_end`` or loop over it in a thread worker.
"""

from .losses import IGNORE, SegmentationLoss, cross_entropy, soft_dice
from .patches import PatchSampler, TrainingImage, binary_target, prepare_image, touching_boundaries
from .trainer import TrainingEvent, TrainingResult, train_iter, validate
from .weightmap import weight_map

__all__ = ["IGNORE", "SegmentationLoss", "cross_entropy", "soft_dice", "PatchSampler", "TrainingImage",
           "binary_target", "prepare_image", "touching_boundaries", "TrainingEvent", "TrainingResult",
           "train_iter", "validate", "weight_map"]
