"""The U-Net family: shared blocks, the variants and the registry (torch only, no Qt)."""

from .base import SegmentationNet
from .registry import ModelSpec, available_models, build_model, get_spec, register
from .unet import UNet

__all__ = ["SegmentationNet", "UNet", "ModelSpec", "available_models", "build_model", "get_spec", "register"]
