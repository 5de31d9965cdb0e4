"""The short commands: ``napari-unet evaluate`` (scores of labels against ground truth),
``napari-unet models`` (what can be used) and ``napari-unet export`` (a BioImage.IO package)."""

from __future__ import annotations

from pathlib import Path

from .common import UsageError, load_model, pairs, read_labels

#: The scores ``evaluate`` prints, per image and their mean.
SCORES = ["ap50", "f1", "mean_iou", "dice", "foreground_iou"]


def cmd_evaluate(args) -> int:
    from ..metrics import evaluate, mean_metrics

    rows = []
    for pred_path, gt_path in pairs(Path(args.pred), Path(args.gt), masks_label="ground truth"):
        gt = read_labels(gt_path)
        rows.append((pred_path.name, evaluate(gt, read_labels(pred_path, gt.shape))))
    print(f"{'image':<32s} " + " ".join(f"{k:>14s}" for k in SCORES))
    for name, m in rows:
        print(f"{name:<32s} " + " ".join(f"{m[k]:14.4f}" for k in SCORES))
    mean = mean_metrics([m for _, m in rows])
    print(f"{'mean':<32s} " + " ".join(f"{mean[k]:14.4f}" for k in SCORES))
    return 0


def cmd_models(args) -> int:
    from ..modelfile import known_models, read_config
    from ..models import available_models, build_model, get_spec

    print(f"{'name':<16s} {'variant':<40s} {'dims':>4s} {'params':>8s} {'deep sup.':>9s}  weights")
    files = known_models()
    for name in available_models():
        spec = get_spec(name)
        n = build_model(name).n_parameters
        weights = "-"
        if name in files:
            data = read_config(files[name]).get("provenance", {}).get("data", "")
            weights = f"bundled ({data})" if data else "bundled"
        print(f"{name:<16s} {spec.title:<40s} {spec.spatial_dims:>3d}D {n / 1e6:7.2f}M "
              f"{'yes' if spec.deep_supervision else 'no':>9s}  {weights}")
    others = [n for n in files if n not in available_models()]
    for name in others:
        config = read_config(files[name])
        print(f"{name:<16s} {'(model file) ' + config['architecture']:<40s} {'':>4s} {'':>8s} {'':>9s}  {files[name]}")
    return 0


def cmd_export(args) -> int:
    """``napari-unet export``: a BioImage.IO model package (:func:`napari_unet.bioimageio.export_model`)."""
    from ..bioimageio import export_model

    model = load_model(args.model)
    print(f"exporting {model.name} to BioImage.IO" + ("; bioimageio.core then tests the package" if args.check else ""),
          flush=True)
    try:
        out = export_model(model, args.output, authors=args.author or None, check=args.check)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"wrote {out}" + (" (bioimageio.core's model test passed)" if args.check else ""))
    return 0
