"""The U-Net family: shared blocks, the variants and the registry (torch only, no Qt)."""

from .base import SegmentationNet
from .registry import ModelSpec, available_models, build_model, get_spec, register

# every variant module registers its architectures next to its class when imported
from . import eff_unet, mobile_unet, resunet, unet, unet25d, unet3p, unet_pp  # noqa: E402  isort: skip
from .unet import UNet  # noqa: E402

VARIANT_MODULES = (eff_unet, mobile_unet, resunet, unet, unet25d, unet3p, unet_pp)

__all__ = ["SegmentationNet", "UNet", "ModelSpec", "available_models", "build_model", "get_spec", "register"]
