"""The short commands: ``napari-unet evaluate`` (scores of labels against ground truth),
``napari-unet models`` (what can be used) and ``napari-unet export`` (a BioImage.IO package)."""

from __future__ import annotations

from pathlib import Path

from .common import IMAGE_SUFFIXES, UsageError, load_model, read_labels

#: The scores ``evaluate`` prints, per image and their mean.
SCORES = ["ap50", "f1", "mean_iou", "dice", "foreground_iou"]
#: What ``evaluate`` reads in either folder: image files and zarr stores (``predict --format zarr``).
EVALUATED_SUFFIXES = IMAGE_SUFFIXES + (".zarr",)


def cmd_evaluate(args) -> int:
    from ..metrics import evaluate, mean_metrics

    rows = []
    for pred_path, gt_path in evaluation_pairs(Path(args.pred), Path(args.gt)):
        gt = read_labels(gt_path)
        rows.append((gt_path.name, evaluate(gt, read_labels(pred_path, gt.shape))))
    print(f"{'image':<32s} " + " ".join(f"{k:>14s}" for k in SCORES))
    for name, m in rows:
        print(f"{name:<32s} " + " ".join(f"{m[k]:14.4f}" for k in SCORES))
    mean = mean_metrics([m for _, m in rows])
    print(f"{'mean':<32s} " + " ".join(f"{mean[k]:14.4f}" for k in SCORES))
    return 0


def evaluation_pairs(pred_dir: Path, gt_dir: Path) -> list[tuple[Path, Path]]:
    """``(prediction, ground truth)`` files matched by name without the extension (``predict``
    writes ``<stem>.tif`` whatever the image's format, or ``<stem>.zarr`` with ``--format zarr``:
    zarr stores are read whole), every ground-truth image with one
    (``UsageError`` naming those without: a mean over fewer images would look better than it is);
    ``predict --probabilities``' ``<stem>_probabilities`` files and predictions without ground
    truth (said on stderr) are not scored."""
    import sys

    found = {}
    for folder in (pred_dir, gt_dir):
        if not folder.is_dir():
            raise UsageError(f"{folder}: no such folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EVALUATED_SUFFIXES
                       and not (folder == pred_dir and p.stem.endswith("_probabilities")))
        by_stem = {}
        for path in files:
            if path.stem in by_stem:
                raise UsageError(f"{by_stem[path.stem].name} and {path.name} in {folder} have the same name: keep one")
            by_stem[path.stem] = path
        found[folder] = by_stem
    preds, truths = found[pred_dir], found[gt_dir]
    if not truths:
        raise UsageError(f"{gt_dir}: no ground truth (.tif, .png, .npy, .zarr) in this folder")
    missing = [truths[s].name for s in truths if s not in preds]
    if missing:
        raise UsageError(f"no prediction with the name of {len(missing)} ground-truth image(s) in {pred_dir}: "
                         f"{', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
    extra = [preds[s].name for s in preds if s not in truths]
    if extra:
        print(f"napari-unet: {len(extra)} prediction(s) without ground truth are not scored: "
              f"{', '.join(extra[:3])}{'...' if len(extra) > 3 else ''}", file=sys.stderr)
    return [(preds[s], truths[s]) for s in truths]


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
    from ..bioimageio import export_model, package_path

    out = package_path(args.output)  # (.zip appended when missing)
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} already exists: choose another output, or pass --overwrite to replace it")
    model = load_model(args.model)
    print(f"exporting {model.name} to BioImage.IO" + ("; bioimageio.core then tests the package" if args.check else ""),
          flush=True)
    try:
        out = export_model(model, out, authors=args.author or None, check=args.check)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"wrote {out}" + (" (bioimageio.core's model test passed)" if args.check else ""))
    return 0
