"""The import: a BioImage.IO model package as a :class:`~napari_unet.modelfile.LoadedModel` for the
tiled predictor. napari-unet's own packages are rebuilt from its registry (no code from the package
runs); others run their TorchScript or state dict wrapped as a
:class:`~napari_unet.bioimageio.package_net.PackageNet`."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from ._common import ARCHITECTURE_CALLABLE, DESCRIPTION_NAMES, PACKAGE_ARCHITECTURE, _fail
from .plan import _load_description, _Plan


def _package_config(path: Path, descr, plan: _Plan, weights: str) -> dict:
    """The napari-unet config of an imported package (the exported one, when napari-unet wrote it)."""
    from ..modelfile import FORMAT, FORMAT_VERSION, TARGETS

    documentation = ""
    if descr.documentation is not None:
        try:
            from bioimageio.spec.utils import download

            documentation = download(descr.documentation).read().decode("utf-8")
        except Exception:
            documentation = ""
    ours = _exported_config(descr)
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


def _exported_config(descr):
    """The napari-unet config the package carries under ``config.napari_unet`` (None when it has none)."""
    return (descr.config.model_extra or {}).get("napari_unet") if descr.config is not None else None


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
    return _read_package(Path(path), "auto")[-1]


def _read_package(path: Path, weight_format: str):
    """``(description, plan, whether napari-unet exported it, the weights to run, napari-unet config)``
    of a package, or a ModelFileError saying why napari-unet cannot run it."""
    descr = _load_description(path)
    plan = _Plan(path, descr)
    ours = _is_ours(descr)
    weights = _weights_choice(path, descr, ours, weight_format)
    return descr, plan, ours, weights, _package_config(path, descr, plan, weights)


def _is_ours(descr) -> bool:
    """A package napari-unet exported: its config names a registered architecture and its state dict
    comes with napari-unet's architecture file."""
    from ..models.registry import available_models

    config = _exported_config(descr)
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
    from ..modelfile import LoadedModel, ModelFileError

    path = Path(path)
    descr, plan, ours, weights, config = _read_package(path, weight_format)
    entry = getattr(descr.weights, weights)
    try:
        if weights == "pytorch_state_dict" and ours:
            net = _rebuild_ours(path, entry, config, plan)
        else:
            net = _wrap_package_weights(entry, weights, plan)
            config["architecture"], config["arguments"] = PACKAGE_ARCHITECTURE, {}
    except ModelFileError:
        raise
    except Exception as exc:
        _fail(path, f"its {weights} weights cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]}).")
    name = path.parent.name if path.name in DESCRIPTION_NAMES else path.stem
    return LoadedModel(net=net.eval().to(device), config=config, path=path, name=name)


def _rebuild_ours(path: Path, entry, config: dict, plan: _Plan):
    """A package napari-unet exported: its network rebuilt from the registry with the package's state dict."""
    import torch

    from ..modelfile import build_network, validate_config

    try:
        validate_config({k: v for k, v in config.items() if k != "bioimageio"})
        # as load_model builds a model file's network: arguments the config predates take their old values
        net = build_network(config)
    except ValueError as exc:  # (a ModelFileError too)
        _fail(path, f"its napari-unet config is damaged ({str(exc).rstrip('.')}).")
    if net.out_channels != plan.out_channels or net.in_channels != plan.in_channels:
        _fail(path, "its napari-unet config does not match its inputs and outputs.")
    raw = io.BytesIO(entry.get_reader().read())  # the spec's torch zip: tensors only, never code
    state = torch.load(raw, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    config["arguments"] = dict(net.config)
    return net


def _wrap_package_weights(entry, weights: str, plan: _Plan):
    """The package's own network (its TorchScript, or its state dict built by its architecture code) as a
    :class:`~napari_unet.bioimageio.package_net.PackageNet`."""
    import torch

    from .package_net import PackageNet

    if weights == "torchscript":
        with warnings.catch_warnings():  # deprecated in PyTorch, still the format other tools run
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(io.BytesIO(entry.get_reader().read()), map_location="cpu")
    else:  # a foreign state dict: the package's architecture code builds the network
        from bioimageio.core.backends.pytorch_backend import load_torch_model

        module = load_torch_model(entry, devices=["cpu"])
    return PackageNet(module.eval(), plan)
