"""One registry of the family: a name maps to a builder and its metadata.

Adding a variant is one module: its network class and, next to it, its :func:`register` call
(``napari_unet.models`` imports every variant module, so importing it registers them all).
What a variant can do (deep supervision, pruning, a classification head) is declared on its
network class and read here without building weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .base import SegmentationNet


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture; ``builder`` is the network class (or a callable with its
    capability attributes)."""

    name: str
    builder: Callable[..., SegmentationNet]
    title: str
    spatial_dims: int
    defaults: dict = field(default_factory=dict)
    reference: str = ""
    #: arguments a model file written before they existed was built with (a new default must
    #: not change what an old file loads into)
    legacy: dict = field(default_factory=dict)

    def _declares(self, capability: str) -> bool:
        return bool(getattr(self.builder, capability, False))

    @property
    def deep_supervision(self) -> bool:
        """The network returns one output per depth (``SegmentationNet.deep_supervision``)."""
        return self._declares("deep_supervision")

    @property
    def prunable(self) -> bool:
        """The network can run a shallower sub-network (``SegmentationNet.prunable``)."""
        return self._declares("prunable")

    @property
    def has_classifier(self) -> bool:
        """The network has an object-present classification head (``SegmentationNet.has_classifier``)."""
        return self._declares("has_classifier")


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"A model named {spec.name!r} is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def _unregister(name: str) -> None:
    """Remove a registered architecture (for tests that register an example variant)."""
    _REGISTRY.pop(name, None)


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
