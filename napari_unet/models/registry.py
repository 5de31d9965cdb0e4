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


_register_builtin()
