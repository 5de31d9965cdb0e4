"""Training: targets and patches, losses and the training loop (no Qt).

``train_iter`` is a generator of :class:`TrainingEvent`; drain it with
``napari_unet.jobs.run_to_end`` or loop over it in a thread worker.
"""

from .losses import (IGNORE, DeepSupervisionLoss, SegmentationLoss, cross_entropy, focal, ms_ssim_loss, soft_dice,
                     soft_iou, unet3p_hybrid)
from .patches import PatchSampler, TrainingImage, binary_target, prepare_image, touching_boundaries
from .trainer import TrainingEvent, TrainingResult, train_iter, validate
from .weightmap import weight_map

__all__ = ["IGNORE", "SegmentationLoss", "DeepSupervisionLoss", "cross_entropy", "soft_dice", "focal", "soft_iou",
           "ms_ssim_loss", "unet3p_hybrid", "PatchSampler", "TrainingImage",
           "binary_target", "prepare_image", "touching_boundaries", "TrainingEvent", "TrainingResult",
           "train_iter", "validate", "weight_map"]
