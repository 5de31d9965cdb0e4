"""The export: a napari-unet model as one BioImage.IO package zip (spec 0.5), tested by
bioimageio.core before it is written atomically. What the package holds: see
:mod:`napari_unet.bioimageio`."""

from __future__ import annotations

import copy
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ._common import ARCHITECTURE_FILE, PACKAGE_ARCHITECTURE, TEST_SIZE, _eps, _failures, _require
from .describe import _architecture_source, _card, _describe, _documentation


class ExportCancelled(Exception):
    """The ``stop`` event of :func:`export_model` was set: nothing was written."""


def export_model(model, out_zip, *, authors=None, name: str | None = None, description: str | None = None,
                 check: bool = True, stop=None) -> Path:
    """Write ``model`` as a BioImage.IO model package (spec 0.5) to ``out_zip``; returns its path.

    ``model``: a bundled model's name, a model file, or a :class:`~napari_unet.modelfile.LoadedModel`.
    ``authors``: names (str) or dicts (``name``, ``affiliation``, ``email``, ``github_user``,
    ``orcid``); default ``napari-unet contributors``. ``check``: run ``bioimageio.core``'s model
    test on the package before it replaces ``out_zip`` (a failure raises ``ValueError`` and
    writes nothing). The zip is written atomically and replaces a file already at ``out_zip``
    (:func:`package_path`: ``.zip`` is appended when missing; the command line refuses an existing
    one unless ``--overwrite``). Setting ``stop`` (a ``threading.Event``) ends the
    export at its next stage with :class:`ExportCancelled`, writing nothing. See the
    :mod:`napari_unet.bioimageio` docstring for what the package holds. ``ValueError`` for models this
    export cannot describe (valid padding, a TorchScript trace that only runs at one size),
    ``ImportError`` when bioimageio.core is missing.
    """
    _require()
    import torch

    from ..io import atomic_write
    from ..modelfile import LoadedModel, load_model

    lm = model if isinstance(model, LoadedModel) else load_model(model)
    label = lm.name or lm.config["architecture"]
    _refuse_unexportable(lm, label)
    out_zip = package_path(out_zip)
    divisor = tuple(int(d) for d in lm.net.size_divisor)
    diameter = lm.object_diameter
    net = copy.deepcopy(lm.net).to("cpu").eval().float()  # the caller's network keeps its device and mode
    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as tmp:
        folder = Path(tmp)
        normalised = _write_test_tensors(lm, net, folder)
        (folder / "README.md").write_text(_documentation(lm, label, _card(lm), divisor, diameter), encoding="utf-8")
        (folder / ARCHITECTURE_FILE).write_text(_architecture_source(), encoding="utf-8")
        torch.save({k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
                    for k, v in net.state_dict().items()}, folder / "weights.pt")
        _check_stop(stop)
        traced = _trace(net, normalised, label)
        minimum = _smallest_size(net, traced, lm.in_channels, divisor, label)
        traced.save(str(folder / "weights_torchscript.pt"))
        rdf = _describe(lm, label, divisor, minimum, diameter, authors, name, description, torch.__version__)
        package = folder / "package.zip"
        _check_stop(stop)
        _save_package(rdf, folder, package)
        if check:
            _check_stop(stop)
            summary = test_package(package)
            if summary.status != "passed":
                raise ValueError(f"The package of '{label}' fails bioimageio.core's model test: {_failures(summary)}")
        _check_stop(stop)
        atomic_write(out_zip, lambda target: shutil.copyfile(package, target))
    return out_zip


def package_path(out_zip) -> Path:
    """The file :func:`export_model` writes for ``out_zip``: ``.zip`` appended when it has another suffix."""
    out_zip = Path(out_zip)
    return out_zip if out_zip.suffix.lower() == ".zip" else out_zip.with_name(out_zip.name + ".zip")


def _refuse_unexportable(lm, label: str) -> None:
    """``ValueError`` for a model this export cannot describe."""
    if lm.config["architecture"] == PACKAGE_ARCHITECTURE:
        raise ValueError(f"'{label}' runs a BioImage.IO package's own weights: share that package instead.")
    if lm.net.margin:
        raise ValueError(f"'{label}' has valid padding (its output is {lm.net.margin} px smaller on each side than "
                         "its input), which this export does not describe: export a model with same padding.")


def _write_test_tensors(lm, net, folder: Path):
    """The test input (a synthetic image), the network's probabilities for it and the cover, written to
    ``folder``; returns the normalised test input ``(1, C, *spatial)`` (a tensor, for tracing)."""
    import torch

    shape = lm.net.valid_input_shape((TEST_SIZE,) * 2 if lm.net.spatial_dims == 2 else (32, 128, 128))
    x = _test_image(lm, shape)
    normalised = torch.from_numpy(_normalise_as_package(x, lm.normalization))
    with torch.inference_mode():
        logits = net(normalised)
        probabilities = torch.softmax(logits.float(), dim=1).numpy()
    np.save(folder / "test_input.npy", x)
    np.save(folder / "test_output.npy", probabilities)
    _cover(x[0, 0], probabilities[0, 1:].sum(axis=0), folder / "cover.png")
    return normalised


def _trace(net, example, label: str):
    """``net`` traced to TorchScript on ``example``; ``ValueError`` when it cannot be traced."""
    import torch

    try:
        with torch.no_grad(), warnings.catch_warnings():
            # shape checks become constants: right for every size the package allows (multiples of the divisor),
            # which _smallest_size checks; TorchScript is deprecated in PyTorch but what QuPath and deepImageJ run
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.trace(net, example, check_trace=False, strict=False)
    except Exception as exc:
        raise ValueError(f"'{label}' cannot be traced to TorchScript ({type(exc).__name__}: {exc}); "
                         "it cannot be exported.") from None


def _check_stop(stop) -> None:
    if stop is not None and stop.is_set():
        raise ExportCancelled()


def _smallest_size(net, traced, channels: int, divisor, label: str, tries: int = 8) -> tuple[int, ...]:
    """The smallest input ``k * divisor`` (k = 1, 2...) from which the network and its trace agree (to 1e-4 in
    probability) at ``k``, ``k + 1`` and ``k + 2`` times the divisor: the package's minimum size, since
    bioimageio.core tests those three sizes. ``ValueError`` when no such size is found (a trace that fixed
    a size inside the network)."""
    import torch

    def agree(k: int) -> bool:
        x = torch.rand((1, channels) + tuple(k * d for d in divisor), generator=torch.Generator().manual_seed(k))
        try:
            with torch.inference_mode():
                return bool((torch.softmax(net(x), 1) - torch.softmax(traced(x), 1)).abs().max() < 1e-4)
        except Exception:  # too small for the network, or a size the trace cannot take
            return False

    ok = [agree(k) for k in range(1, tries + 3)]
    for k in range(1, tries + 1):
        if ok[k - 1] and ok[k] and ok[k + 1]:
            return tuple(k * d for d in divisor)
    raise ValueError(f"'{label}' cannot be exported: its TorchScript trace does not reproduce the network at other "
                     "input sizes (a size is fixed inside the network), so other tools could not tile images with it.")


def _test_image(lm, shape) -> np.ndarray:
    """A synthetic image ``(1, C, *shape)`` float32 for the test tensors (a nuclei image or stack)."""
    from ..synthetic import fluorescent_nuclei, nuclei_3d

    if len(shape) == 2:
        image = fluorescent_nuclei(shape=shape, n_nuclei=max(8, int(np.prod(shape)) // 2500), seed=0)[0]
    else:
        image = nuclei_3d(shape=shape, seed=0)[0]
    image = image.astype(np.float32)
    channels = [image] + [np.roll(image, 3 * c, axis=-1) for c in range(1, lm.in_channels)]
    return np.stack(channels)[None]


def _normalise_as_package(x: np.ndarray, normalization: dict) -> np.ndarray:
    """``x`` ``(B, C, *spatial)`` normalised as the package's pre-processing does (per sample and channel).

    Not :func:`napari_unet.inference.inputs.fit_normalizer`: bioimageio.core's model test recomputes
    ``scale_range`` on the whole test input (no subsample, no fallback for constant channels), so the
    test output is computed with its exact formula."""
    axes = tuple(range(2, x.ndim))
    x = x.astype(np.float64)
    if normalization["kind"] == "percentile":
        low = np.percentile(x, normalization["low"], axis=axes, keepdims=True)
        high = np.percentile(x, normalization["high"], axis=axes, keepdims=True)
        x = (x - low) / (high - low + _eps(normalization))
    elif normalization["kind"] == "mean_std":
        x = (x - x.mean(axis=axes, keepdims=True)) / (x.std(axis=axes, keepdims=True) + _eps(normalization))
    return x.astype(np.float32)


def _cover(image: np.ndarray, probability: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the test input (1-99.8 percentiles, grey) beside its foreground probability."""
    import imageio.v3 as iio

    if image.ndim == 3:  # a volume: its middle plane
        image, probability = image[image.shape[0] // 2], probability[probability.shape[0] // 2]
    lo, hi = np.percentile(image, [1, 99.8])
    grey = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)
    p = np.clip(probability, 0, 1)
    # the probability in a warm map (black -> red -> yellow), the input in grey
    warm = np.stack([np.clip(2 * p, 0, 1), np.clip(2 * p - 1, 0, 1), np.zeros_like(p)], axis=-1)
    left = np.repeat(grey[..., None], 3, axis=-1)
    iio.imwrite(path, (np.concatenate([left, warm], axis=1) * 255).round().astype(np.uint8))


def _save_package(rdf: dict, folder: Path, path: Path) -> None:
    """Validate ``rdf`` (with the files in ``folder``) with bioimageio.spec, then zip both to ``path``."""
    import yaml
    from bioimageio.spec import InvalidDescr, load_description

    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True), encoding="utf-8")
    descr = load_description(str(folder / "rdf.yaml"), perform_io_checks=True)
    if isinstance(descr, InvalidDescr):
        raise ValueError(f"The BioImage.IO description is invalid: {_failures(descr.validation_summary)}")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.write(folder / "rdf.yaml", "rdf.yaml")
        for name in FILES:
            archive.write(folder / name, name)


#: the files of a package beside its rdf.yaml
FILES = ("README.md", "cover.png", "test_input.npy", "test_output.npy", "weights.pt", "weights_torchscript.pt",
         ARCHITECTURE_FILE)


def test_package(path, weight_format: str | None = None):
    """``bioimageio.core.test_model`` on a package: its ``ValidationSummary`` (``.status`` is
    ``"passed"`` when the description is valid and every weight format reproduces the test output)."""
    _require()
    from bioimageio.core import test_model

    return test_model(str(path), weight_format=weight_format, devices=["cpu"])


test_package.__test__ = False  # not a pytest test

