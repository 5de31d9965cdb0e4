"""BioImage.IO model packages (spec 0.5): export napari-unet models, import packages to run them.

**Export** (:func:`export_model`) writes one zip that deepImageJ (Fiji), QuPath, ilastik and
``bioimageio.core`` read: ``rdf.yaml`` plus

* ``pytorch_state_dict`` weights (float32) with a small generated ``napari_unet_architecture.py``
  that rebuilds the network through napari-unet's registry (running those weights needs
  ``pip install napari-unet``), and ``torchscript`` weights (traced; they run without napari-unet);
* one input ``(batch, channel, y, x)`` (``z, y, x`` for 3D networks) whose spatial sizes are
  ``min + n * step`` with both the network's size divisor, and one output of class probabilities
  (background first) of the input's size;
* the model's normalisation as pre-processing (percentiles ``low .. high`` per image and channel:
  ``scale_range``, as :func:`napari_unet.inference.inputs.fit_normalizer` does) and ``softmax``
  over the channels as post-processing (the network returns logits, as in napari-unet);
* test input and output tensors computed here by the network on a synthetic image, a cover (the
  test input beside its foreground probability), the model card as documentation, authors,
  citations (the U-Net paper and the variant's), the licence, and the napari-unet config with its
  training provenance under ``config.napari_unet``.

Networks with valid padding (a ``margin``) are refused: their output is smaller than their input,
which this export does not describe.

**Import** (:func:`import_model`, also through :func:`napari_unet.modelfile.load_model` for a
``.zip`` package or an ``rdf.yaml`` / ``bioimageio.yaml``) returns a
:class:`~napari_unet.modelfile.LoadedModel` that the tiled predictor runs. Packages written by
napari-unet are rebuilt from its registry with their state dict (no code from the package runs);
other packages run their ``torchscript`` weights, else their ``pytorch_state_dict`` weights with
the package's architecture code (as ``bioimageio.core`` does). The package's pre-processing is
kept: a first ``scale_range`` (percentiles per image) or ``zero_mean_unit_variance`` becomes the
predictor's per-image normalisation; element-wise steps after it (``scale_linear``, ``clip``,
``fixed_zero_mean_unit_variance``, ``sigmoid``, ``binarize``) run inside the wrapped network on
each tile. Outputs are read as segmentation probabilities: one channel is the foreground (raw
values when the package's post-processing is ``sigmoid``, else probabilities), 2 or 3 channels are
the classes background, foreground (or background, interior, boundary) after a ``softmax``, or
already probabilities without one. Anything else (not a model, several inputs, an output of
another size, Keras/ONNX/TensorFlow weights only) is refused with one line saying why.

Needs ``bioimageio.core`` (an optional extra): ``pip install "napari-unet[bioimageio]"``. This
package imports it, and PyTorch, only inside its functions.

Modules: :mod:`._common` (names, ``available``, one-line errors), :mod:`.peek` (a package read from
its YAML, no bioimageio or PyTorch), :mod:`.describe` (``rdf.yaml``, README.md, citations, the
architecture file), :mod:`.export`, :mod:`.plan` (how a package runs), :mod:`.load` (the import) and
:mod:`.package_net` (a package's own network as a member of the family).
"""

from ._common import (ARCHITECTURE_CALLABLE, ARCHITECTURE_FILE, DESCRIPTION_NAMES, INSTALL_HINT, LICENSE,
                      PACKAGE_ARCHITECTURE, SCALE_RANGE_EPS, TEST_SIZE, available)
from .describe import UNET_PAPER, VARIANT_PAPERS
from .export import FILES, ExportCancelled, export_model, package_path, test_package
from .load import import_model, read_package_config
from .peek import check_package_quickly, is_package, package_summary, peek_package

__all__ = ["ARCHITECTURE_CALLABLE", "ARCHITECTURE_FILE", "DESCRIPTION_NAMES", "FILES", "INSTALL_HINT", "LICENSE",
           "PACKAGE_ARCHITECTURE", "SCALE_RANGE_EPS", "TEST_SIZE", "UNET_PAPER", "VARIANT_PAPERS", "ExportCancelled",
           "PackageNet", "available", "check_package_quickly", "export_model", "import_model", "is_package",
           "package_path", "package_summary", "peek_package", "read_package_config", "test_package"]


def __getattr__(name: str):
    # PackageNet needs torch: imported on first use, so that importing this package stays light
    if name == "PackageNet":
        from .package_net import PackageNet

        return PackageNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
