"""One registry of the family: a name maps to a builder and its metadata.

Adding a variant is one module plus one :func:`register` call below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .base import SegmentationNet


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture."""

    name: str
    builder: Callable[..., SegmentationNet]
    title: str
    spatial_dims: int
    deep_supervision: bool
    defaults: dict = field(default_factory=dict)
    reference: str = ""
    #: arguments a model file written before they existed was built with (a new default must
    #: not change what an old file loads into)
    legacy: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"A model named {spec.name!r} is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def available_models() -> list[str]:
    """Names of the registered architectures."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"Unknown model {name!r}: available models are {', '.join(available_models())}.") from None


def build_model(name: str, **arguments) -> SegmentationNet:
    """Build the architecture ``name`` with its defaults overridden by ``arguments``."""
    spec = get_spec(name)
    kwargs = {**spec.defaults, **arguments}
    try:
        net = spec.builder(**kwargs)
    except TypeError as exc:
        raise ValueError(f"Bad arguments for model {name!r}: {exc}") from None
    net.architecture = name
    return net


def _register_builtin() -> None:
    from .unet import UNet

    register(ModelSpec(
        name="unet", builder=UNet, title="U-Net", spatial_dims=2, deep_supervision=False,
        defaults=dict(spatial_dims=2, features=(16, 32, 64, 128, 256), padding="same"),
        reference="Ronneberger, Fischer & Brox, MICCAI 2015",
    ))
    register(ModelSpec(
        name="unet-valid", builder=UNet, title="U-Net (valid padding, overlap-tile)", spatial_dims=2,
        deep_supervision=False,
        defaults=dict(spatial_dims=2, features=(16, 32, 64, 128, 256), padding="valid"),
        reference="Ronneberger, Fischer & Brox, MICCAI 2015",
    ))
    from .unet3p import UNet3Plus
    from .unet_pp import UNetPlusPlus

    register(ModelSpec(
        name="unet++", builder=UNetPlusPlus, title="U-Net++ (nested U-Net)", spatial_dims=2, deep_supervision=True,
        defaults=dict(spatial_dims=2, features=(8, 16, 32, 64, 128), mode="final", upsample="resize"),
        reference="Zhou, Rahman Siddiquee, Tajbakhsh & Liang, DLMIA 2018", legacy=dict(upsample="transpose"),
    ))
    register(ModelSpec(
        name="unet3+", builder=UNet3Plus, title="U-Net 3+ (full-scale skips)", spatial_dims=2, deep_supervision=True,
        defaults=dict(spatial_dims=2, features=(16, 32, 64, 128, 256), cat_channels=8, upsample_first=False,
                      classification_guided=False),
        reference="Huang, Lin, Tong et al., ICASSP 2020",
    ))
    from .eff_unet import EffUNet
    from .mobile_unet import MobileUNet
    from .resunet import ResUNet

    register(ModelSpec(
        name="resunet", builder=ResUNet, title="Residual U-Net", spatial_dims=2, deep_supervision=False,
        defaults=dict(spatial_dims=2, features=(12, 24, 48, 96, 192), upsample="nearest"),
        reference="Zhang, Liu & Wang, IEEE GRSL 2018",
    ))
    register(ModelSpec(
        name="mobile-unet", builder=MobileUNet, title="Mobile U-Net (MobileNetV2 encoder)", spatial_dims=2,
        deep_supervision=False,
        defaults=dict(spatial_dims=2, features=(8, 16, 24, 32, 64, 128), width_multiplier=0.5),
        reference="Sandler et al., CVPR 2018 (MobileNetV2); Ronneberger et al., MICCAI 2015",
    ))
    register(ModelSpec(
        name="eff-unet", builder=EffUNet, title="Eff-UNet (EfficientNet encoder)", spatial_dims=2,
        deep_supervision=False,
        defaults=dict(spatial_dims=2, features=(16, 24, 32, 48, 96, 128), width_coefficient=1.0,
                      depth_coefficient=1.0),
        reference="Baheti et al., CVPR Workshops 2020; Tan & Le, ICML 2019 (EfficientNet)",
    ))

    from .unet25d import UNet25DProjection, UNet25DStack

    # thick-slice stacks (z voxels ~2x the xy pixel, as in the sample nuclei3d): the first
    # pooling halves only y and x, making voxels isotropic before z is pooled. Widths 12..96 cost
    # 44 kMAC per voxel, what the bundled 2D U-Net costs per pixel (46 kMAC)
    register(ModelSpec(
        name="unet-3d", builder=UNet, title="3D U-Net", spatial_dims=3, deep_supervision=False,
        defaults=dict(spatial_dims=3, features=(12, 24, 48, 96), padding="same",
                      strides=[(1, 2, 2), (2, 2, 2), (2, 2, 2)]),
        reference="Çiçek, Abdulkadir, Lienkamp, Brox & Ronneberger, MICCAI 2016",
    ))
    register(ModelSpec(
        name="unet-2.5d-stack", builder=UNet25DStack, title="2.5D U-Net (slice stack)", spatial_dims=3,
        deep_supervision=False, defaults=dict(spatial_dims=3, features=(16, 32, 64, 128), slices=5),
        reference="2D U-Net on neighbouring slices as channels; Ronneberger, Fischer & Brox, MICCAI 2015",
    ))
    register(ModelSpec(
        name="unet-2.5d", builder=UNet25DProjection, title="2.5D U-Net (projections)", spatial_dims=3,
        deep_supervision=False,
        defaults=dict(spatial_dims=3, features=(16, 32, 64, 128), directions=5, train_directions=0.6),
        reference="Angermann, Haltmeier, Steiger, Pereverzyev Jr & Gizewski, arXiv:1902.00347 (2019); "
                  "Angermann & Haltmeier, MLMIR 2019",
    ))


_register_builtin()
