"""Training: targets and patches, losses and the training loop (no Qt).

``train_iter`` is a generator of :class:`TrainingEvent`; drain it with
``napari_unet.jobs.run_to_end`` or loop over it in a thread worker.
"""

import importlib

#: public name -> the submodule that holds it; imported on first use (PEP 562), so that
#: ``napari_unet.training.finetune``'s settings and presets load without torch (a dock's
#: controls read them on the Qt thread)
_NAMES = {
    **dict.fromkeys(["IGNORE", "SegmentationLoss", "DeepSupervisionLoss", "cross_entropy", "soft_dice", "focal",
                     "soft_iou", "ms_ssim_loss", "unet3p_hybrid"], "losses"),
    **dict.fromkeys(["PatchSampler", "TrainingImage", "binary_target", "prepare_image", "touching_boundaries"],
                    "patches"),
    **dict.fromkeys(["TrainingEvent", "TrainingResult", "train_iter", "validate"], "trainer"),
    "weight_map": "weightmap",
}
__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
