"""What an export writes beside its weights: the spec-0.5 description (``rdf.yaml``), the
README.md built from the model card, the citations, and the generated architecture file that rebuilds
the network through napari-unet's registry for the ``pytorch_state_dict`` weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ._common import ARCHITECTURE_CALLABLE, ARCHITECTURE_FILE, LICENSE, _eps

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
                + (f"touching objects split by a watershed at distance maxima {lm.postprocess['split_depth']:g} px deep"
                   if lm.postprocess['split_touching'] else 'no splitting') + ")."
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


def _architecture_source() -> str:
    """The generated architecture file: rebuilds the network through napari-unet's registry."""
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
    from ..models.registry import get_spec

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

