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
module imports it, and PyTorch, only inside its functions.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

INSTALL_HINT = 'BioImage.IO packages need bioimageio.core: pip install "napari-unet[bioimageio]"'
#: the names a package's description file has (a zip holds it at its top level)
DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: ``config["architecture"]`` of a model that runs a package's own weights (not in the registry)
PACKAGE_ARCHITECTURE = "bioimageio"
LICENSE = "BSD-3-Clause"  # napari-unet's licence (pyproject.toml), under which its weights are shared
#: ``scale_range``'s epsilon: ``(x - low) / (high - low + eps)``
SCALE_RANGE_EPS = 1e-6
#: side of the synthetic test image (rounded up to the network's size divisor)
TEST_SIZE = 256
ARCHITECTURE_FILE = "napari_unet_architecture.py"
ARCHITECTURE_CALLABLE = "napari_unet_network"

UNET_PAPER = ("Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
              "MICCAI 2015.", "10.1007/978-3-319-24574-4_28", None)
#: the paper each variant comes from (text, doi, url), beside the U-Net paper
VARIANT_PAPERS = {
    "unet++": [("Zhou Z, Rahman Siddiquee MM, Tajbakhsh N, Liang J. UNet++: A Nested U-Net Architecture for Medical "
                "Image Segmentation. DLMIA 2018.", "10.1007/978-3-030-00889-5_1", None)],
    "unet3+": [("Huang H, Lin L, Tong R, et al. UNet 3+: A Full-Scale Connected UNet for Medical Image Segmentation. "
                "ICASSP 2020.", "10.1109/ICASSP40776.2020.9053405", None)],
    "resunet": [("Zhang Z, Liu Q, Wang Y. Road Extraction by Deep Residual U-Net. IEEE Geoscience and Remote Sensing "
                 "Letters 15(5), 2018.", "10.1109/LGRS.2018.2802944", None)],
    "mobile-unet": [("Sandler M, Howard A, Zhu M, Zhmoginov A, Chen LC. MobileNetV2: Inverted Residuals and Linear "
                     "Bottlenecks. CVPR 2018.", "10.1109/CVPR.2018.00474", None)],
    "eff-unet": [("Baheti B, Innani S, Gajre S, Talbar S. Eff-UNet: A Novel Architecture for Semantic Segmentation in "
                  "Unstructured Environment. CVPR Workshops 2020.", "10.1109/CVPRW50498.2020.00187", None),
                 ("Tan M, Le QV. EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks. ICML 2019.",
                  None, "https://arxiv.org/abs/1905.11946")],
    "unet-3d": [("Çiçek Ö, Abdulkadir A, Lienkamp SS, Brox T, Ronneberger O. 3D U-Net: Learning Dense Volumetric "
                 "Segmentation from Sparse Annotation. MICCAI 2016.", "10.1007/978-3-319-46723-8_49", None)],
    "unet-2.5d": [("Angermann C, Haltmeier M, Steiger R, Pereverzyev S Jr, Gizewski E. Projection-Based 2.5D U-net "
                   "Architecture for Fast Volumetric Segmentation. 2019.", None, "https://arxiv.org/abs/1902.00347")],
}


# -- light helpers (no bioimageio, no torch) --------------------------------------------------
def available() -> bool:
    """Whether ``bioimageio.core`` is installed (checked without importing it)."""
    try:
        return importlib.util.find_spec("bioimageio.core") is not None
    except (ImportError, ValueError):
        return False


def _require():
    if not available():
        raise ImportError(INSTALL_HINT)


def is_package(path) -> bool:
    """True for an ``rdf.yaml`` / ``bioimageio.yaml`` file, or a zip holding one at its top level."""
    path = Path(path)
    if path.name in DESCRIPTION_NAMES or path.name.endswith(".bioimageio.yaml"):
        return path.is_file()
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"PK":
                return False
        with zipfile.ZipFile(path) as archive:
            return any(_is_description_name(n) for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _is_description_name(name: str) -> bool:
    return name in DESCRIPTION_NAMES or ("/" not in name and name.endswith(".bioimageio.yaml"))


def _read_rdf(path: Path) -> dict:
    """The package's description as plain YAML data (no validation)."""
    import yaml

    if path.name.endswith(".yaml"):
        text = path.read_text(encoding="utf-8")
    else:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if _is_description_name(n))
            text = archive.read(name).decode("utf-8")
    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else {}


def peek_package(path) -> dict | None:
    """The napari-unet config a package written by :func:`export_model` carries (its
    post-processing, object size...), read from its YAML without bioimageio or PyTorch; None for
    other packages or unreadable files. For showing a model's settings before it is loaded."""
    try:
        config = (_read_rdf(Path(path)).get("config") or {}).get("napari_unet")
    except Exception:  # a damaged package: import_model says what is wrong
        return None
    return dict(config) if isinstance(config, dict) else None


def check_package_quickly(path) -> dict:
    """A first check of a package from its YAML (no bioimageio, no PyTorch: fast enough for the Qt
    thread): bioimageio.core is installed, it describes a model, and it has weights napari-unet runs.
    Returns the YAML data; :func:`import_model` checks the rest. ``ModelFileError`` says what is wrong."""
    from .catalog import ModelFileError

    path = Path(path)
    if not available():
        raise ModelFileError(f"{path.name} is a BioImage.IO package. {INSTALL_HINT}.")
    try:
        rdf = _read_rdf(path)
    except Exception as exc:
        raise ModelFileError(f"{path.name}: its description cannot be read ({type(exc).__name__}: {exc}).") from None
    kind = rdf.get("type")
    if kind != "model":
        raise ModelFileError(f"{path.name}: a BioImage.IO {kind or 'untyped'} package, not a model: choose a model "
                             "package.")
    weights = [w for w, entry in (rdf.get("weights") or {}).items() if entry]
    if not {"pytorch_state_dict", "torchscript"} & set(weights):
        raise ModelFileError(f"{path.name}: it has only {', '.join(weights) or 'no'} weights; napari-unet runs "
                             "pytorch_state_dict or torchscript weights.")
    return rdf


def package_summary(path) -> tuple[str, dict | None]:
    """``(one line for the Segment dock, the napari-unet config it carries or None)`` from the YAML."""
    rdf = _read_rdf(Path(path))
    config = (rdf.get("config") or {}).get("napari_unet")
    text = f"BioImage.IO package: {rdf.get('name', Path(path).name)}"
    if isinstance(config, dict):
        text += f" (napari-unet {config.get('architecture', '?')}, {config.get('output', {}).get('target', '?')} target)"
    return text, config if isinstance(config, dict) else None


# -- export --------------------------------------------------------------------------------------
def _safe_name(text: str) -> str:
    """A BioImage.IO name: letters, digits, spaces, ``_ - ( )`` only."""
    return re.sub(r"[^\w\-() ]", "", text.replace("+", "plus")).strip() or "napari-unet model"


def _card(lm) -> str:
    card = lm.config.get("card") or ""
    if not card and lm.path is not None:
        md = Path(lm.path).with_suffix(".md")
        if md.is_file():
            card = md.read_text(encoding="utf-8")
    return card


def _documentation(lm, name: str, card: str, divisor, diameter) -> str:
    """README.md: the model card, how the package runs, and a Validation section (the spec asks for one)."""
    provenance = lm.config.get("provenance") or {}
    lines = [card.strip() or f"# {name}\n\nA {lm.config['architecture']} network exported by napari-unet.", "",
             "## This BioImage.IO package", "",
             f"Exported by napari-unet from `{lm.name or lm.config['architecture']}` "
             f"(architecture `{lm.config['architecture']}`).",
             "",
             f"- Input: {lm.in_channels} channel(s), {lm.spatial_dims}D, each spatial size a multiple of "
             f"{' x '.join(map(str, divisor))} px; normalised per image and channel "
             + (f"to the {lm.normalization['low']:g} .. {lm.normalization['high']:g} percentiles (`scale_range`)."
                if lm.normalization["kind"] == "percentile" else "not at all (raw values)."),
             f"- Output: the probabilities of the classes {', '.join(lm.classes)} (softmax over the channels). "
             "napari-unet turns them into instance labels with its post-processing"
             + (f" (threshold {lm.postprocess['threshold']:g}, minimum size {lm.postprocess['min_size']} px, "
                f"{'touching objects split by a watershed' if lm.postprocess['split_touching'] else 'no splitting'})."
                if lm.postprocess else "."),
             ]
    if diameter:
        lines.append(f"- Object size: the network works at objects about {diameter:g} px across. napari-unet resizes "
                     "each image so that its objects reach that size; in other tools, resize images first.")
    lines += ["- Weights: `torchscript` runs anywhere PyTorch runs; `pytorch_state_dict` rebuilds the network "
              f"with `{ARCHITECTURE_FILE}`, which needs `pip install napari-unet`.",
              "- In napari: `napari-unet predict THIS.zip image.tif -o out/`, or **Load model file…** in the "
              "Segment dock.", ""]
    if not re.search(r"#.*[vV]alidation", card):
        lines += ["## Validation", ""]
        scores = {k: v for k, v in provenance.items() if k.startswith("val_") and isinstance(v, (int, float))}
        if scores:
            lines.append("Scores on held-out data recorded when the model was made: "
                         + ", ".join(f"{k[4:]} {v:.3f}" for k, v in scores.items()) + ".")
        else:
            lines.append("No held-out validation was recorded for this model. The package's test tensors only check "
                         "that the weights reproduce napari-unet's output.")
        lines.append("")
    return "\n".join(lines)


def _test_image(lm, shape) -> np.ndarray:
    """A synthetic image ``(1, C, *shape)`` float32 for the test tensors (a nuclei image or stack)."""
    from .synthetic import fluorescent_nuclei, nuclei_3d

    if len(shape) == 2:
        image = fluorescent_nuclei(shape=shape, n_nuclei=max(8, int(np.prod(shape)) // 2500), seed=0)[0]
    else:
        image = nuclei_3d(shape=shape, seed=0)[0]
    image = image.astype(np.float32)
    channels = [image] + [np.roll(image, 3 * c, axis=-1) for c in range(1, lm.in_channels)]
    return np.stack(channels)[None]


def _eps(normalization: dict) -> float:
    """The package's epsilon for a normalisation (BioImage.IO needs one above 0)."""
    return float(normalization.get("eps") or SCALE_RANGE_EPS)


def _normalise_as_package(x: np.ndarray, normalization: dict) -> np.ndarray:
    """``x`` ``(B, C, *spatial)`` normalised as the package's pre-processing does (per sample and channel)."""
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


def _architecture_source() -> str:
    return f'''"""Rebuilds a napari-unet network for BioImage.IO's pytorch_state_dict weights.

Needs napari-unet: pip install napari-unet  (the torchscript weights of this package do not).
"""


def {ARCHITECTURE_CALLABLE}(architecture: str, arguments: dict):
    """The napari-unet network ``architecture`` built with ``arguments`` (its saved constructor
    arguments), in eval mode; ``forward`` takes (B, C, *spatial) and returns class logits."""
    from napari_unet.models.registry import build_model

    return build_model(architecture, **arguments).eval()
'''


def _jsonable(value):
    return json.loads(json.dumps(value))


class ExportCancelled(Exception):
    """The ``stop`` event of :func:`export_model` was set: nothing was written."""


def export_model(model, out_zip, *, authors=None, name: str | None = None, description: str | None = None,
                 check: bool = True, stop=None) -> Path:
    """Write ``model`` as a BioImage.IO model package (spec 0.5) to ``out_zip``; returns its path.

    ``model``: a bundled model's name, a model file, or a :class:`~napari_unet.modelfile.LoadedModel`.
    ``authors``: names (str) or dicts (``name``, ``affiliation``, ``email``, ``github_user``,
    ``orcid``); default ``napari-unet contributors``. ``check``: run ``bioimageio.core``'s model
    test on the package before it replaces ``out_zip`` (a failure raises ``ValueError`` and
    writes nothing). The zip is written atomically. Setting ``stop`` (a ``threading.Event``) ends the
    export at its next stage with :class:`ExportCancelled`, writing nothing. See the module
    docstring for what the package holds. ``ValueError`` for models this export cannot describe
    (valid padding, a TorchScript trace that only runs at one size), ``ImportError`` when
    bioimageio.core is missing.
    """
    _require()
    import torch

    from .io import atomic_write
    from .modelfile import LoadedModel, load_model

    lm = model if isinstance(model, LoadedModel) else load_model(model)
    net = lm.net
    label = lm.name or lm.config["architecture"]
    if lm.config["architecture"] == PACKAGE_ARCHITECTURE:
        raise ValueError(f"'{label}' runs a BioImage.IO package's own weights: share that package instead.")
    if net.margin:
        raise ValueError(f"'{label}' has valid padding (its output is {net.margin} px smaller on each side than its "
                         "input), which this export does not describe: export a model with same padding.")
    out_zip = Path(out_zip)
    if out_zip.suffix.lower() != ".zip":
        out_zip = out_zip.with_name(out_zip.name + ".zip")
    divisor = tuple(int(d) for d in net.size_divisor)
    shape = net.valid_input_shape((TEST_SIZE,) * 2 if net.spatial_dims == 2 else (32, 128, 128))
    diameter = lm.object_diameter
    net = copy.deepcopy(net).to("cpu").eval().float()  # the caller's network keeps its device and mode
    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as tmp:
        folder = Path(tmp)
        x = _test_image(lm, shape)
        normalised = torch.from_numpy(_normalise_as_package(x, lm.normalization))
        with torch.inference_mode():
            logits = net(normalised)
            probabilities = torch.softmax(logits.float(), dim=1).numpy()
        np.save(folder / "test_input.npy", x)
        np.save(folder / "test_output.npy", probabilities)
        _cover(x[0, 0], probabilities[0, 1:].sum(axis=0), folder / "cover.png")
        card = _card(lm)
        (folder / "README.md").write_text(_documentation(lm, label, card, divisor, diameter), encoding="utf-8")
        (folder / ARCHITECTURE_FILE).write_text(_architecture_source(), encoding="utf-8")
        torch.save({k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
                    for k, v in net.state_dict().items()}, folder / "weights.pt")
        _check_stop(stop)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # shape checks become constants: right for every size the package allows (multiples of the divisor),
                # which _smallest_size checks; TorchScript is deprecated in PyTorch but what QuPath and deepImageJ run
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                traced = torch.jit.trace(net, normalised, check_trace=False, strict=False)
        except Exception as exc:
            raise ValueError(f"'{label}' cannot be traced to TorchScript ({type(exc).__name__}: {exc}); "
                             "it cannot be exported.") from None
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


def _describe(lm, label, divisor, minimum, diameter, authors, name, description, torch_version) -> dict:
    """The spec-0.5 description (``rdf.yaml`` content) of an export; its files sit beside it."""
    spatial = ["z", "y", "x"][-lm.spatial_dims:]
    channel_names = [f"channel{c}" for c in range(lm.in_channels)] if lm.in_channels > 1 else ["raw"]
    in_axes = [{"type": "batch"}, {"type": "channel", "channel_names": channel_names}]
    in_axes += [{"type": "space", "id": a, "size": {"min": m, "step": d}} for a, m, d in zip(spatial, minimum, divisor)]
    out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": list(lm.classes)}]
    out_axes += [{"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}} for a in spatial]
    preprocessing = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    norm = lm.normalization
    if norm["kind"] == "percentile":
        preprocessing.append({"id": "scale_range", "kwargs": {
            "axes": spatial, "min_percentile": float(norm["low"]), "max_percentile": float(norm["high"]),
            "eps": _eps(norm)}})
    elif norm["kind"] == "mean_std":
        preprocessing.append({"id": "zero_mean_unit_variance", "kwargs": {"axes": spatial, "eps": _eps(norm)}})
    version = torch_version.split("+")[0]
    papers = [UNET_PAPER] + VARIANT_PAPERS.get(lm.config["architecture"], [])
    cite = [{"text": text, **({"doi": doi} if doi else {}), **({"url": url} if url else {})}
            for text, doi, url in papers]
    people = [dict(a) if isinstance(a, dict) else {"name": str(a)} for a in (authors or ["napari-unet contributors"])]
    from .models.registry import get_spec

    title = get_spec(lm.config["architecture"]).title
    size = (f" It works at objects about {diameter:g} px across: napari-unet resizes images so that their objects "
            "reach that size (resize them first in other tools)." if diameter else "")
    text = description or (f"{title} from napari-unet ({label}): {lm.spatial_dims}D segmentation into "
                           f"{', '.join(lm.classes)} probabilities.{size}")
    config = {k: v for k, v in lm.config.items() if k != "card"}  # the card is the documentation
    return _jsonable({
        "format_version": "0.5.4", "type": "model", "name": _safe_name(name or f"napari-unet {label}"),
        "description": text, "authors": people, "cite": cite, "license": LICENSE,
        "documentation": "README.md", "covers": ["cover.png"],
        "tags": ["napari-unet", "unet", "segmentation", f"{lm.spatial_dims}d", "pytorch", "microscopy"],
        "inputs": [{"id": "raw", "axes": in_axes, "test_tensor": {"source": "test_input.npy"},
                    "description": "the image (any intensity range: normalised per image by the pre-processing)",
                    "data": {"type": "float32"}, "preprocessing": preprocessing}],
        "outputs": [{"id": "probabilities", "axes": out_axes, "test_tensor": {"source": "test_output.npy"},
                     "description": f"class probabilities ({', '.join(lm.classes)})",
                     "data": {"type": "float32", "range": [0.0, 1.0]},
                     "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}}]}],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt", "pytorch_version": version,
                "architecture": {"source": ARCHITECTURE_FILE, "callable": ARCHITECTURE_CALLABLE,
                                 "kwargs": {"architecture": lm.config["architecture"], "arguments": lm.net.config}},
                "comment": "float32 state dict; the architecture file needs `pip install napari-unet`"},
            "torchscript": {"source": "weights_torchscript.pt", "pytorch_version": version,
                            "parent": "pytorch_state_dict",
                            "comment": "traced with torch.jit.trace; runs without napari-unet"}},
        "config": {"bioimageio": {"architecture_type": title if len(title) <= 32 else lm.config["architecture"],
                                  "model_parameter_count": int(sum(p.numel() for p in lm.net.parameters())),
                                  "task": "segmentation"},
                   "napari_unet": config},
    })


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


def _failures(summary) -> str:
    errors = [f"{d.name}: {'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
    return "; ".join(errors[:3]) or str(summary.status)


# -- import --------------------------------------------------------------------------------------
def _fail(path: Path, why: str):
    from .catalog import ModelFileError

    raise ModelFileError(f"{path.name}: {why}")


def _load_description(path: Path):
    """The package's validated description (0.4 packages converted to 0.5), or a ModelFileError."""
    _require()
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_5

    if not path.exists():
        _fail(path, "no such file")
    try:
        descr = load_description(str(path), format_version="latest", perform_io_checks=False)
    except Exception as exc:
        _fail(path, f"not a readable BioImage.IO package ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    if isinstance(descr, InvalidDescr):
        errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in descr.validation_summary.details for e in d.errors]
        _fail(path, "not a valid BioImage.IO package (" + ("; ".join(errors[:2]) or "invalid description") + ")")
    kind = getattr(descr, "type", "?")
    if kind != "model":
        _fail(path, f"a BioImage.IO {kind} package, not a model: choose a model package.")
    if not isinstance(descr, v0_5.ModelDescr):
        _fail(path, f"format {getattr(descr, 'format_version', '?')} cannot be converted to spec 0.5")
    return descr


class _Plan:
    """How napari-unet runs a package: axes, sizes, pre-processing, output reading."""

    def __init__(self, path: Path, descr):
        from bioimageio.spec.model import v0_5 as spec

        self.path = path
        if len(descr.inputs) != 1 or len(descr.outputs) != 1:
            _fail(path, f"the model takes {len(descr.inputs)} input(s) and gives {len(descr.outputs)} output(s); "
                        "napari-unet runs models with one image in and one segmentation out.")
        ipt, out = descr.inputs[0], descr.outputs[0]
        self.input_id = ipt.id
        self.in_axes = [self._kind(a, "input") for a in ipt.axes]
        self.spatial = [a.id for a in ipt.axes if a.type == "space"]
        if len(self.spatial) not in (2, 3) or (len(self.spatial) == 3 and "z" not in self.spatial):
            _fail(path, f"its input has the spatial axes {', '.join(map(str, self.spatial)) or 'none'}; napari-unet "
                        "runs 2D (y, x) and 3D (z, y, x) models.")
        self.mins, self.steps = [], []
        for a in ipt.axes:
            if a.type != "space":
                continue
            if isinstance(a.size, spec.ParameterizedSize):
                self.mins.append(a.size.min)
                self.steps.append(a.size.step)
            else:
                _fail(path, f"its input axis {a.id} has a fixed or referenced size ({a.size}); napari-unet tiles "
                            "images and needs sizes of the form min + n * step.")
        channel = next((a for a in ipt.axes if a.type == "channel"), None)
        self.in_channels = channel.size if channel is not None else 1
        out_spatial = [a for a in out.axes if a.type == "space"]
        if sorted(a.id for a in out_spatial) != sorted(self.spatial):
            _fail(path, "it is not a segmentation model: its output's spatial axes "
                        f"({', '.join(str(a.id) for a in out_spatial) or 'none'}) are not its input's.")
        for a in out_spatial:
            ref = a.size
            same = isinstance(ref, spec.SizeReference) and ref.tensor_id == ipt.id and ref.axis_id == a.id \
                and ref.offset == 0 and a.scale == next(b.scale for b in ipt.axes if b.id == a.id)
            if not same:
                _fail(path, f"it is not a segmentation model: its output axis {a.id} does not have the input's size.")
        self.out_axes = [self._kind(a, "output") for a in out.axes]
        out_channel = next((a for a in out.axes if a.type == "channel"), None)
        self.out_channels = out_channel.size if out_channel is not None else 1
        self.normalization, self.pre_ops = self._preprocessing(ipt)
        self.activation = self._postprocessing(out)
        if self.out_channels == 1:
            self.target = "binary"
        elif self.out_channels in (2, 3):
            if self.activation == "sigmoid":
                _fail(path, f"its {self.out_channels} output channels are independent sigmoid maps (e.g. foreground "
                            "and boundaries), which napari-unet cannot read as classes.")
            self.target = "binary" if self.out_channels == 2 else "boundary"
        else:
            _fail(path, f"it is not a segmentation model napari-unet reads: its output has {self.out_channels} "
                        "channels (napari-unet reads 1 foreground channel, or 2-3 classes with background first).")

    def _kind(self, axis, where: str) -> str:
        if axis.type in ("batch", "channel", "space"):
            return "space:" + str(axis.id) if axis.type == "space" else axis.type
        _fail(self.path, f"its {where} has a {axis.type} axis ({axis.id}); napari-unet runs models on batch, "
                         "channel and spatial axes only.")

    def _joint_ok(self, axes, what: str) -> None:
        """Statistics must be per image over all spatial axes, per channel unless there is one channel."""
        names = None if axes is None else {str(a) for a in axes}
        if names is not None and not {str(a) for a in self.spatial} <= names:
            _fail(self.path, f"its {what} normalises along some spatial axes only ({', '.join(sorted(names))}), "
                             "which napari-unet does not do.")
        if self.in_channels > 1 and (names is None or "channel" in names):
            _fail(self.path, f"its {what} computes statistics over all channels together, which napari-unet does not do.")

    def _preprocessing(self, ipt):
        """``(normalization, element-wise ops)``: the first statistics step becomes the predictor's
        normalisation; element-wise steps after it run on each tile inside the network."""
        normalization, ops = {"kind": "none"}, []
        for step in ipt.preprocessing:
            kind, kw = step.id, step.kwargs
            if kind == "ensure_dtype":
                if kw.dtype not in ("float32", "float64"):
                    _fail(self.path, f"its pre-processing casts the input to {kw.dtype}, which napari-unet does not do.")
            elif kind in ("scale_range", "zero_mean_unit_variance"):
                if normalization["kind"] != "none" or ops:
                    _fail(self.path, f"its pre-processing has {kind} after another step; napari-unet normalises "
                                     "each image first.")
                if kind == "scale_range":
                    if kw.reference_tensor not in (None, ipt.id):
                        _fail(self.path, "its scale_range uses another tensor's statistics.")
                    self._joint_ok(kw.axes, kind)
                    normalization = {"kind": "percentile", "low": float(kw.min_percentile),
                                     "high": float(kw.max_percentile), "eps": float(kw.eps)}
                else:
                    self._joint_ok(kw.axes, kind)
                    normalization = {"kind": "mean_std", "eps": float(kw.eps)}
            elif kind == "scale_linear":
                axis = getattr(kw, "axis", None)
                ops.append(("affine", self._per_channel(kw.gain, axis), self._per_channel(kw.offset, axis)))
            elif kind == "fixed_zero_mean_unit_variance":
                mean, std = self._per_channel(kw.mean, getattr(kw, "axis", None)), \
                    self._per_channel(kw.std, getattr(kw, "axis", None))
                ops.append(("affine", [1.0 / s for s in std], [-m / s for m, s in zip(mean, std)]))
            elif kind == "clip":
                if getattr(kw, "min_percentile", None) is not None or getattr(kw, "max_percentile", None) is not None:
                    _fail(self.path, "its pre-processing clips at percentiles after normalising, which napari-unet "
                                     "does not do.")
                ops.append(("clip", kw.min, kw.max))
            elif kind == "sigmoid":
                ops.append(("sigmoid",))
            elif kind == "binarize":
                ops.append(("binarize", self._per_channel(kw.threshold, getattr(kw, "axis", None))))
            else:
                _fail(self.path, f"its pre-processing step {kind} is not supported by napari-unet.")
        return normalization, ops

    def _per_channel(self, value, axis) -> list[float]:
        """A scalar or a per-channel list as one value per input channel."""
        values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
        if len(values) == 1:
            return values * self.in_channels
        if axis is not None and str(axis) != "channel" or len(values) != self.in_channels:
            _fail(self.path, f"its pre-processing has values along axis {axis}, which napari-unet does not do.")
        return values

    def _postprocessing(self, out) -> str:
        activation = "none"
        for step in out.postprocessing:
            if step.id == "ensure_dtype":
                continue
            if step.id in ("sigmoid", "softmax") and activation == "none":
                if step.id == "softmax" and str(step.kwargs.axis) != "channel":
                    _fail(self.path, f"its softmax runs along {step.kwargs.axis}, not the channels.")
                activation = step.id
                continue
            _fail(self.path, f"its post-processing step {step.id} is not supported by napari-unet (it reads "
                             "probabilities, or logits followed by sigmoid or softmax).")
        return activation


def _package_config(path: Path, descr, plan: _Plan, weights: str) -> dict:
    """The napari-unet config of an imported package (the exported one, when napari-unet wrote it)."""
    from .modelfile import FORMAT, FORMAT_VERSION, TARGETS

    documentation = ""
    if descr.documentation is not None:
        try:
            from bioimageio.spec.utils import download

            documentation = download(descr.documentation).read().decode("utf-8")
        except Exception:
            documentation = ""
    ours = (descr.config.model_extra or {}).get("napari_unet") if descr.config is not None else None
    base = dict(ours) if isinstance(ours, dict) else {}
    provenance = dict(base.get("provenance") or {})
    provenance["bioimageio"] = {"name": descr.name, "id": str(descr.id) if descr.id else None,
                                "package": str(path), "weights": weights}
    inp = dict(base.get("input") or {})
    inp.update(channels=plan.in_channels, normalization=plan.normalization)
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "architecture": base.get("architecture", PACKAGE_ARCHITECTURE),
            "arguments": dict(base.get("arguments") or {}),
            "input": inp, "output": {"target": plan.target, "classes": TARGETS[plan.target]},
            "provenance": provenance, "card": documentation or descr.description,
            "bioimageio": {"name": descr.name, "weights": weights}}


def _weights_choice(path: Path, descr, ours: bool, weight_format: str) -> str:
    present = [w for w, entry in descr.weights if entry is not None]
    usable = [w for w in ("pytorch_state_dict", "torchscript") if w in present]
    if weight_format != "auto":
        if weight_format not in present:
            _fail(path, f"it has no {weight_format} weights (it has {', '.join(present)}).")
        if weight_format not in usable:
            _fail(path, f"napari-unet cannot run {weight_format} weights: it runs pytorch_state_dict or torchscript.")
        return weight_format
    if not usable:
        _fail(path, f"it has only {', '.join(present)} weights; napari-unet runs pytorch_state_dict or torchscript "
                    "weights (convert them with bioimageio.core's weight converters, or choose another package).")
    # napari-unet's own packages: rebuilt from the registry, no code from the package runs
    if ours and "pytorch_state_dict" in usable:
        return "pytorch_state_dict"
    return "torchscript" if "torchscript" in usable else "pytorch_state_dict"


def read_package_config(path) -> dict:
    """The napari-unet config of a BioImage.IO package (validated, weights not loaded)."""
    path = Path(path)
    descr = _load_description(path)
    plan = _Plan(path, descr)
    ours = _is_ours(descr)
    return _package_config(path, descr, plan, _weights_choice(path, descr, ours, "auto"))


def _is_ours(descr) -> bool:
    """A package napari-unet exported: its config names a registered architecture and its state dict
    comes with napari-unet's architecture file."""
    from .models.registry import available_models

    config = (descr.config.model_extra or {}).get("napari_unet") if descr.config is not None else None
    sd = descr.weights.pytorch_state_dict
    return isinstance(config, dict) and config.get("architecture") in available_models() and sd is not None \
        and str(sd.architecture.callable) == ARCHITECTURE_CALLABLE


def import_model(path, device: str = "cpu", weight_format: str = "auto"):
    """Load a BioImage.IO model package (``.zip``, ``rdf.yaml`` or ``bioimageio.yaml``) as a
    :class:`~napari_unet.modelfile.LoadedModel` for the tiled predictor.

    ``weight_format``: ``"auto"`` (napari-unet's own packages: the state dict, rebuilt from the
    registry; others: torchscript, else the state dict), ``"torchscript"`` or
    ``"pytorch_state_dict"``. A package napari-unet cannot run raises
    :class:`~napari_unet.catalog.ModelFileError` (a ``ValueError``) saying why in one line.
    """
    import torch

    from .modelfile import LoadedModel, ModelFileError, validate_config
    from .models.registry import build_model

    path = Path(path)
    descr = _load_description(path)
    plan = _Plan(path, descr)
    ours = _is_ours(descr)
    weights = _weights_choice(path, descr, ours, weight_format)
    config = _package_config(path, descr, plan, weights)
    entry = getattr(descr.weights, weights)
    try:
        if weights == "pytorch_state_dict" and ours:
            net = build_model(config["architecture"], **config["arguments"])
            raw = io.BytesIO(entry.get_reader().read())  # the spec's torch zip: tensors only, never code
            state = torch.load(raw, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
            try:
                validate_config({k: v for k, v in config.items() if k != "bioimageio"})
            except ModelFileError as exc:
                _fail(path, f"its napari-unet config is damaged ({exc}).")
            if net.out_channels != plan.out_channels or net.in_channels != plan.in_channels:
                _fail(path, "its napari-unet config does not match its inputs and outputs.")
        else:
            if weights == "torchscript":
                with warnings.catch_warnings():  # deprecated in PyTorch, still the format other tools run
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.load(io.BytesIO(entry.get_reader().read()), map_location="cpu")
            else:  # a foreign state dict: the package's architecture code builds the network
                from bioimageio.core.backends.pytorch_backend import load_torch_model

                module = load_torch_model(entry, devices=["cpu"])
            net = PackageNet(module.eval(), plan)
            config["architecture"], config["arguments"] = PACKAGE_ARCHITECTURE, {}
    except ModelFileError:
        raise
    except Exception as exc:
        _fail(path, f"its {weights} weights cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]}).")
    name = path.parent.name if path.name in DESCRIPTION_NAMES else path.stem
    return LoadedModel(net=net.eval().to(device), config=config, path=path, name=name)


def _package_net_class():
    """:class:`PackageNet`, defined on first use (it needs torch)."""
    import torch
    from torch import nn

    from .models.base import SegmentationNet

    class _PackageNet(SegmentationNet):
        """A package's network as a member of the family: ``forward`` takes ``(B, C, *spatial)``,
        runs the package's element-wise pre-processing, its network in its own axis order, and
        returns logits that the predictor's sigmoid / softmax turns into the package's probabilities."""

        def __init__(self, module, plan: _Plan):
            super().__init__()
            self.module = module
            self.spatial_dims = len(plan.spatial)
            self.in_channels, self.out_channels = int(plan.in_channels), int(plan.out_channels)
            self.config = {}
            self.size_divisor = tuple(int(s) for s in plan.steps)
            self.min_size = tuple(int(m) for m in plan.mins)
            self.architecture = PACKAGE_ARCHITECTURE
            self.activation = plan.activation
            ours = ["batch", "channel"] + [f"space:{a}" for a in plan.spatial]
            self.in_axes = list(plan.in_axes)  # the package's axis order: "batch", "channel", "space:y"...
            self.out_axes = list(plan.out_axes)
            self.spatial_names = [f"space:{a}" for a in plan.spatial]
            ops = []
            for op in plan.pre_ops:
                shape = (1, -1) + (1,) * self.spatial_dims
                if op[0] == "affine":
                    ops.append(_Affine(torch.tensor(op[1]).reshape(shape), torch.tensor(op[2]).reshape(shape)))
                elif op[0] == "clip":
                    ops.append(_Clip(op[1], op[2]))
                elif op[0] == "sigmoid":
                    ops.append(nn.Sigmoid())
                else:
                    ops.append(_Binarize(torch.tensor(op[1]).reshape(shape)))
            self.pre = nn.Sequential(*ops)
            for p in self.parameters():  # for prediction only (and TorchScript's copies warn about .grad otherwise)
                p.requires_grad_(False)

        def to(self, *args, **kwargs):
            """``Module.to`` without ``memory_format``: a package's weights keep their layout (a 3D model's
            weights may be 4D, which channels_last_3d refuses)."""
            kwargs.pop("memory_format", None)
            return super().to(*args, **kwargs) if args or kwargs else self

        def output_shape(self, input_shape):
            shape = tuple(int(n) for n in input_shape)
            for n, m, s in zip(shape, self.min_size, self.size_divisor):
                if n < m or (n - m) % s:
                    raise ValueError(f"size {n} is not {m} + a multiple of {s}")
            return shape

        def valid_input_shape(self, min_shape):
            return tuple(m + max(0, -(-(int(n) - m) // s)) * s
                         for n, m, s in zip(min_shape, self.min_size, self.size_divisor))

        def forward(self, x, side_outputs: bool = False):
            x = self.pre(x.float())
            if "batch" in self.in_axes:
                y = self._run(x)
            else:  # a package without a batch axis sees one image at a time
                y = torch.cat([self._run(x[i:i + 1]) for i in range(x.shape[0])])
            if self.activation == "none":  # probabilities: logits whose sigmoid / softmax gives them back
                p = y.clamp(1e-7, 1 - 1e-7)
                y = torch.logit(p) if y.shape[1] == 1 else torch.log(p)
            return [y] if side_outputs else y

        def _run(self, x):
            """``(B, C, *spatial)`` through the package's network in its own axis order, and back."""
            names = ["batch", "channel"] + self.spatial_names
            for axis in ("channel", "batch"):  # axes the package does not have (then of size 1)
                if axis not in self.in_axes:
                    x = x.select(names.index(axis), 0)
                    names.remove(axis)
            y = self.module(x.permute(*[names.index(a) for a in self.in_axes]))
            if isinstance(y, (list, tuple)):
                y = y[0]
            names = list(self.out_axes)
            for axis in ("channel", "batch"):
                if axis not in names:
                    y = y.unsqueeze(0)
                    names.insert(0, axis)
            return y.permute(*[names.index(a) for a in ["batch", "channel"] + self.spatial_names]).float()

    class _Affine(nn.Module):
        def __init__(self, scale, shift):
            super().__init__()
            self.register_buffer("scale", scale.float())
            self.register_buffer("shift", shift.float())

        def forward(self, x):
            return x * self.scale + self.shift

    class _Clip(nn.Module):
        def __init__(self, low, high):
            super().__init__()
            self.low, self.high = low, high

        def forward(self, x):
            return x.clamp(self.low, self.high)

    class _Binarize(nn.Module):
        def __init__(self, threshold):
            super().__init__()
            self.register_buffer("threshold", threshold.float())

        def forward(self, x):
            return (x > self.threshold).float()

    return _PackageNet


def PackageNet(module, plan: _Plan):
    """Wrap a package's ``torch.nn.Module`` (or TorchScript module) as a napari-unet network."""
    global _PACKAGE_NET
    if _PACKAGE_NET is None:
        _PACKAGE_NET = _package_net_class()
    return _PACKAGE_NET(module, plan)


_PACKAGE_NET = None
