"""Fine-tuning on the user's corrections: the engine lives in :mod:`napari_unet.training.finetune`
(with :mod:`~napari_unet.training.corrections`, :mod:`~napari_unet.training.basescore`,
:mod:`~napari_unet.training.resume` and :mod:`~napari_unet.training.card`); this module keeps its public names importable from here."""

from .training.corrections import DEFAULT_OBJECT_DIAMETER, split_by_region, training_scale
from .training.finetune import (DEFAULT_LOSS, LOSS_PRESETS, FinetuneResult, FinetuneSettings, finetune_iter,
                                unique_model_name, weight_map_params)
from .training.resume import RESUME_MAX_AGE_DAYS, Resumable, resumable, run_key

__all__ = ["DEFAULT_LOSS", "DEFAULT_OBJECT_DIAMETER", "LOSS_PRESETS", "RESUME_MAX_AGE_DAYS", "FinetuneResult",
           "FinetuneSettings", "Resumable", "finetune_iter", "resumable", "run_key", "split_by_region",
           "training_scale", "unique_model_name", "weight_map_params"]
