"""napari-unet: the U-Net family for napari.

Importing this package is cheap on purpose (napari imports it at start-up): torch and the
models load only when a widget, the CLI or the Python API needs them. The public API is
available lazily::

    from napari_unet import load_model, predict, save_model
"""

__version__ = "0.1.0"

_LAZY = {
    "load_model": "napari_unet.modelfile",
    "save_model": "napari_unet.modelfile",
    "build_model": "napari_unet.models.registry",
    "available_models": "napari_unet.models.registry",
    "predict": "napari_unet.inference.predictor",
    "Predictor": "napari_unet.inference.predictor",
    "probabilities_to_labels": "napari_unet.inference.postprocess",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")
