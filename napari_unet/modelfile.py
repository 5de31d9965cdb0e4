"""Model files: safetensors weights with a JSON config in the file's metadata. Never pickle.

One file holds everything needed to rebuild and use a network::

    {"format": "napari-unet", "format_version": 1,
     "architecture": "unet", "arguments": {...constructor arguments...},
     "input": {"channels": 1, "normalization": {"kind": "percentile", "low": 1.0, "high": 99.8},
               "object_diameter": 30.0, "image_object_diameter": 69.0},   # both optional
     "output": {"target": "binary", "classes": ["background", "foreground"]},
     "provenance": {...}, "card": "markdown text"}

The config is stored under the safetensors metadata key ``napari_unet`` (so weights and config
can never drift apart) and is validated before any weight is read. Writes are atomic: a
temporary file in the same folder, fsync, then rename, so a crash mid-write leaves the
previous file intact; and checked first: a config that does not describe the network, or weights
that are not finite, are refused before anything is written. Pickled checkpoints (``torch.save``)
are refused with a message that explains how to convert them.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .catalog import (BUNDLED_DIR, SUFFIX, ModelFileError, bundled_models, known_models,  # noqa: F401
                      postprocess_defaults, resolve_model_path, user_model_dir, user_models)
from .io import atomic_write
from .models.base import SegmentationNet
from .models.registry import build_model, get_spec

FORMAT = "napari-unet"
FORMAT_VERSION = 1
METADATA_KEY = "napari_unet"
TARGETS = {"binary": ["background", "foreground"], "boundary": ["background", "interior", "boundary"]}
DEFAULT_NORMALIZATION = {"kind": "percentile", "low": 1.0, "high": 99.8}




@dataclass
class LoadedModel:
    """A network ready to predict, with what its file says about inputs and outputs."""

    net: SegmentationNet
    config: dict
    path: Path | None = None
    name: str = ""

    @property
    def target(self) -> str:
        return self.config["output"]["target"]

    @property
    def classes(self) -> list[str]:
        return list(self.config["output"]["classes"])

    @property
    def normalization(self) -> dict:
        return dict(self.config["input"]["normalization"])

    @property
    def in_channels(self) -> int:
        return int(self.config["input"]["channels"])

    @property
    def spatial_dims(self) -> int:
        return self.net.spatial_dims

    @property
    def postprocess(self) -> dict:
        return postprocess_defaults(self.config)

    @property
    def object_diameter(self) -> float | None:
        """The object diameter (pixels) the network works at, or None: images are not resized
        (see :mod:`napari_unet.scaling`)."""
        return self.config["input"].get("object_diameter")

    @property
    def image_object_diameter(self) -> float | None:
        """The objects' diameter (image pixels) in the images the model was made for: prediction
        resizes by ``object_diameter / image_object_diameter`` unless told another diameter."""
        return self.config["input"].get("image_object_diameter", self.object_diameter)

    @property
    def estimates_size(self) -> bool:
        """True for a model that declares the object size it works at but not the size of the
        objects it is for (a general model): segmenting estimates the objects' size in each
        image first (:mod:`napari_unet.inference.estimate`) unless told one."""
        return bool(self.object_diameter) and "image_object_diameter" not in self.config["input"]

    def scale(self, diameter: float | None = None) -> float:
        """The factor images are resized by for objects of ``diameter`` px (None: the model's own)."""
        from .scaling import check_diameter, scale_for

        return scale_for(self.object_diameter, check_diameter(diameter) or self.image_object_diameter)



def make_config(net: SegmentationNet, architecture: str | None = None, target: str = "binary",
                normalization: dict | None = None, provenance: dict | None = None, card: str = "",
                object_diameter: float | None = None, image_object_diameter: float | None = None) -> dict:
    """The JSON config that describes ``net`` (see the module docstring); ``architecture``
    defaults to the registry name the network was built under. ``object_diameter``: the object
    diameter (px) the network works at; ``image_object_diameter``: the objects' diameter in the
    images the model is for (both optional, see :mod:`napari_unet.scaling`)."""
    architecture = architecture or net.architecture
    if not architecture:
        raise ValueError("Name the architecture: this network was not built by build_model().")
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}: choose one of {', '.join(TARGETS)}.")
    classes = TARGETS[target]
    if net.out_channels != len(classes):
        raise ValueError(f"A {target} target has {len(classes)} classes ({', '.join(classes)}) but this network has "
                         f"{net.out_channels} output channels: build it with out_channels={len(classes)} "
                         "(or net.set_out_channels).")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "arguments": dict(net.config),
        "input": {"channels": net.in_channels, "normalization": dict(normalization or DEFAULT_NORMALIZATION),
                  **({"object_diameter": round(float(object_diameter), 2)} if object_diameter else {}),
                  **({"image_object_diameter": round(float(image_object_diameter), 2)}
                     if object_diameter and image_object_diameter else {})},
        "output": {"target": target, "classes": TARGETS[target]},
        "provenance": dict(provenance or {}),
        "card": card,
    }
    validate_config(config)
    return config


def validate_config(config: dict) -> dict:
    """Check a config against the schema; ``ModelFileError`` names the first problem."""
    def need(cond: bool, what: str):
        if not cond:
            raise ModelFileError(f"Invalid napari-unet model config: {what}.")

    need(isinstance(config, dict), "it is not a JSON object")
    need(config.get("format") == FORMAT, f"'format' must be {FORMAT!r}")
    need(config.get("format_version") == FORMAT_VERSION,
         f"'format_version' {config.get('format_version')!r} is not supported (this version reads {FORMAT_VERSION})")
    need(isinstance(config.get("architecture"), str), "'architecture' must be a name")
    try:
        get_spec(config["architecture"])
    except KeyError as exc:
        raise ModelFileError(str(exc.args[0])) from None
    need(isinstance(config.get("arguments"), dict), "'arguments' must be an object")
    inp, out = config.get("input"), config.get("output")
    need(isinstance(inp, dict) and isinstance(inp.get("channels"), int) and inp["channels"] >= 1,
         "'input.channels' must be a positive integer")
    norm = inp.get("normalization")
    need(isinstance(norm, dict) and norm.get("kind") in ("percentile", "mean_std", "none"),
         "'input.normalization.kind' must be 'percentile', 'mean_std' or 'none'")
    need(isinstance(norm.get("eps", 0.0), (int, float)) and 0 <= norm.get("eps", 0.0) <= 0.1,
         "'input.normalization.eps' must be a number from 0 to 0.1")
    if norm["kind"] == "percentile":
        need(all(isinstance(norm.get(k), (int, float)) for k in ("low", "high")) and 0 <= norm["low"] < norm["high"] <= 100,
             "'input.normalization' needs 0 <= low < high <= 100")
    for key in ("object_diameter", "image_object_diameter"):
        value = inp.get(key)
        need(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e5),
             f"'input.{key}' must be a positive number of pixels")
    need(inp.get("image_object_diameter") is None or inp.get("object_diameter") is not None,
         "'input.image_object_diameter' needs 'input.object_diameter'")
    need(isinstance(out, dict) and out.get("target") in TARGETS, f"'output.target' must be one of {list(TARGETS)}")
    need(out.get("classes") == TARGETS[out["target"]], "'output.classes' does not match the target")
    need(isinstance(config.get("provenance", {}), dict), "'provenance' must be an object")
    return config


def save_model(path: str | os.PathLike, net: SegmentationNet, config: dict, half: bool = False) -> Path:
    """Save ``net`` with ``config`` atomically to ``path`` (``.safetensors`` is appended if missing).

    The file is checked before anything is written, so that a good file is never replaced by one
    :func:`load_model` refuses: ``ValueError`` when the config does not describe ``net`` (its
    architecture builds another class or other weights, its target has another number of classes
    than the network's outputs, other input channels) or when the weights hold NaN or infinite values.

    ``half=True`` stores floating-point weights as float16 (half the size; they are loaded
    back as float32), which is how the bundled models ship. A tensor with a value float16 cannot
    hold (beyond +-65504) stays float32, so that no weight is saved as infinity.
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    config = validate_config(dict(config, arguments=dict(net.config)))
    state = {key: value.detach().to("cpu") for key, value in net.state_dict().items()}
    _check_saveable(net, config, state)
    tensors = {}
    for key, value in state.items():
        if half and value.is_floating_point():
            small = value.half()
            value = small if torch.isfinite(small).all() else value  # beyond float16's range: kept float32
        tensors[key] = value.contiguous()
    metadata = {METADATA_KEY: json.dumps(config)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def _check_saveable(net: SegmentationNet, config: dict, state: dict) -> None:
    """``ValueError`` unless :func:`load_model` would load ``state`` with ``config``: the network the
    config builds is of ``net``'s class, with its channels and its weights' names and shapes, all finite."""
    fix = "make the config for this network with make_config(net, target=...)"
    builder = get_spec(config["architecture"]).builder
    if isinstance(builder, type) and type(net) is not builder:
        raise ValueError(f"Cannot save the model: architecture {config['architecture']!r} builds a "
                         f"{builder.__name__}, but this network is a {type(net).__name__}; {fix}.")
    try:
        fresh = build_network(config)
    except ValueError as exc:
        raise ValueError(f"Cannot save the model: {exc}; {fix}.") from None
    expected = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    if expected != {k: tuple(v.shape) for k, v in state.items()}:
        raise ValueError(f"Cannot save the model: the network's weights are not those its config builds "
                         f"(architecture {config['architecture']!r} with its arguments); {fix}.")
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ValueError(f"Cannot save the model: its weights hold NaN or infinite values ({broken[0]}"
                         f"{f' and {len(broken) - 1} more' if len(broken) > 1 else ''}): its training diverged.")


def is_package(path: Path) -> bool:
    """A BioImage.IO package (see :func:`napari_unet.bioimageio.is_package`)."""
    from .bioimageio import is_package as check

    return check(path)


def _package_call(function, path: Path, **kwargs):
    """``function(path)`` for a BioImage.IO package; without bioimageio.core, a ModelFileError that says
    how to install it."""
    try:
        return function(path, **kwargs)
    except ImportError as exc:
        from .bioimageio import INSTALL_HINT

        if INSTALL_HINT in str(exc):
            raise ModelFileError(f"{path.name} is a BioImage.IO package. {INSTALL_HINT}.") from None
        raise


def _sniff(path: Path) -> None:
    """Refuse files that are not safetensors before parsing them, saying what they look like."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise ModelFileError(f"Model file {path} does not exist.") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a folder: choose a {SUFFIX} model file inside it.") from None
    except OSError as exc:
        raise ModelFileError(f"Cannot read model file {path}: {exc.strerror}.") from None
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] + 8 <= size:
        return  # laid out as safetensors (an 8-byte header length, then JSON): never mistaken for a pickle below,
        # although a header of 640, 896, 1152 or 1408 bytes starts with the bytes of a pickle's opcode
    convert = (" napari-unet never unpickles files, because unpickling can run arbitrary code. If you trust it, "
               "convert it once in Python: build the network with napari_unet.build_model(...), load the state "
               "dict with torch.load(path, weights_only=True), then napari_unet.save_model(...).")
    if head[:2] == b"PK":
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if any(n.endswith(".h5") or n in ("config.json", "metadata.json") for n in names) and \
                not any(n.endswith("data.pkl") for n in names):
            raise ModelFileError(f"{path.name} is a Keras model (.keras zip archive); napari-unet reads {SUFFIX} "
                                 "model files: choose a napari-unet model, or train one with the Fine-tune widget.")
        if names and not any(n.endswith("data.pkl") for n in names):
            raise ModelFileError(f"{path.name} is a zip archive, not a napari-unet model: unpack it and choose the "
                                 f"{SUFFIX} file inside (a BioImage.IO model package would hold an rdf.yaml).")
        raise ModelFileError(f"{path.name} is a PyTorch checkpoint (torch.save zip archive), not a napari-unet model."
                             + convert)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ModelFileError(f"{path.name} is a Python pickle, not a napari-unet model." + convert)
    if head[:4] == b"\x89HDF":
        raise ModelFileError(f"{path.name} is an HDF5 (e.g. Keras) model; napari-unet reads {SUFFIX} model files.")
    if head[:6] == b"\x93NUMPY":
        raise ModelFileError(f"{path.name} is a NumPy array file, not a model: choose a {SUFFIX} model file.")
    if head.lstrip()[:1] in (b"{", b"["):  # (safetensors files returned above)
        raise ModelFileError(f"{path.name} is a JSON (text) file, not a model: choose the {SUFFIX} file, which "
                             "holds the config and the weights together.")
    if len(head) < 9:
        raise ModelFileError(f"{path.name} is empty or truncated: it is not a napari-unet model file.")
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or header_len + 8 > size:
        raise ModelFileError(f"{path.name} is not a safetensors file (or it is truncated): "
                             f"napari-unet reads {SUFFIX} model files it wrote itself.")


def read_config(path: str | os.PathLike) -> dict:
    """Read and validate the JSON config of a model file without loading its weights (a BioImage.IO
    package: the config :func:`napari_unet.bioimageio.import_model` gives it)."""
    path = Path(path)
    if is_package(path):
        from .bioimageio import read_package_config

        return _package_call(read_package_config, path)
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"{path.name} is a corrupt safetensors file: {exc}") from None
    if METADATA_KEY not in meta:
        raise ModelFileError(f"{path.name} is a safetensors file from another tool (it has no napari-unet config).")
    fix = "the file was damaged or edited by hand: use the original model file (or train the model again)"
    try:
        config = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path.name} has a corrupt config ({exc}): {fix}.") from None
    try:
        return validate_config(config)
    except ModelFileError as exc:
        raise ModelFileError(f"{path.name}: {str(exc).rstrip('.')}; {fix}.") from None


def build_network(config: dict) -> SegmentationNet:
    """The network a validated config describes, with fresh weights: its architecture built with its
    arguments, those the config predates taking the values they had then (``ModelSpec.legacy``), not
    today's defaults. ``ValueError`` when the arguments do not build a network, or build one with other
    input channels or another number of outputs than the config's input and classes."""
    architecture = config["architecture"]
    try:
        net = build_model(architecture, **{**get_spec(architecture).legacy, **config["arguments"]})
    except Exception as exc:  # any argument a builder chokes on (TypeError, ValueError, KeyError, IndexError...)
        raise ValueError(f"the config's arguments do not build a network ({str(exc).rstrip('.')})") from None
    out, inp = config["output"], config["input"]
    if net.out_channels != len(out["classes"]) or net.in_channels != inp["channels"]:
        raise ValueError(
            f"the config does not describe its network ({inp['channels']} input channel(s) and "
            f"{len(out['classes'])} classes for the {out['target']!r} target, but the network takes "
            f"{net.in_channels} and gives {net.out_channels})")
    return net


def load_model(path_or_name: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model file, or a bundled model by name (see :func:`bundled_models`), or a BioImage.IO
    model package (a ``.zip``, ``rdf.yaml`` or ``bioimageio.yaml``: see
    :func:`napari_unet.bioimageio.import_model`).

    The network is returned in eval mode on ``device``.
    """
    path = resolve_model_path(path_or_name)
    if is_package(path):
        from .bioimageio import import_model

        return _package_call(import_model, path, device=device)
    config = read_config(path)
    try:
        net = build_network(config)
    except ValueError as exc:
        raise ModelFileError(f"{path.name}: {exc}: the file was edited or written by another version; use the "
                             "original file.") from None
    config = dict(config, arguments=dict(net.config))  # complete: with the arguments the file predates
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
        net.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelFileError(f"{path.name}: the weights do not match the architecture: {exc}") from None
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ModelFileError(f"{path.name}: the weights hold NaN or infinite values ({broken[0]}"
                             f"{f' and {len(broken) - 1} more' if len(broken) > 1 else ''}): the file is damaged or "
                             "its training diverged; use another model or train it again.")
    net.eval().to(device)
    return LoadedModel(net=net, config=config, path=path, name=path.stem)
