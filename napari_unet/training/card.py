"""The config, provenance and model card of a fine-tuned model (one builder for every save)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict

from ..modelfile import make_config


def finetuned_config(run, stopped: str, metrics: dict, best_step: int, steps: int, seconds: float,
                     weights_net=None) -> dict:
    """The model-file config of a fine-tuning ``run`` (:class:`~napari_unet.training.finetune.FinetuneRun`)
    saved now: its weights (``weights_net``: the base's, kept because fine-tuning did not beat
    them), provenance, card and object size."""
    base_weights = weights_net is not None
    loaded, data = run.loaded, run.data
    if data.net_diameter and not base_weights:
        sizes = (data.net_diameter, data.diameter)
    elif loaded.object_diameter and data.diameter:
        # the base's weights, validated (and their post-processing tuned) at the corrections' object
        # size: the saved model is for objects of that size, as a fine-tuned one would be
        sizes = (loaded.object_diameter, data.diameter)
    elif not base_weights:  # trained on the images as they are (resizing off): predicts them so too
        sizes = (None, None)
    else:  # the base's own object size, if it declares one
        sizes = (loaded.object_diameter, loaded.config["input"].get("image_object_diameter"))
    return make_config(weights_net if base_weights else run.net, loaded.config["architecture"], run.target,
                       loaded.normalization, _provenance(run, stopped, metrics, best_step, steps, seconds, base_weights),
                       _card(run, stopped, metrics, steps, base_weights), *sizes)


def _provenance(run, stopped, metrics, best_step, steps, seconds, base_weights: bool) -> dict:
    loaded, data, settings = run.loaded, run.data, run.settings
    # the patches and batch the run began with (a batch halved when memory ran out is in its warnings)
    patch, batch = settings.patches(loaded.spatial_dims, loaded.net.size_divisor)
    return {
        "trained": True, "fine_tuned": not base_weights, "base_model": loaded.name,
        "weights": "the base model's, unchanged (fine-tuning did not beat them)" if base_weights else "fine-tuned",
        "base_provenance": loaded.config.get("provenance", {}).get("data"),
        "data": run.source or "corrections", "train_images": len(data.train), "val_regions": len(data.val),
        "loss": run.spec, "loss_preset": settings.loss, "weight_map": run.weight_map, "target": run.target,
        "settings": asdict(settings), "steps": steps,
        **({} if base_weights else {"patch_size": list(patch), "batch_size": int(batch)}),
        "best_step": best_step, "stopped": stopped,
        "val_ap50": metrics.get("ap50"), "val_metrics": metrics, "baseline_val_ap50": run.baseline.get("ap50"),
        "seconds": round(seconds, 1), "date": dt.datetime.now().isoformat(timespec="seconds"),
        "postprocess": run.postprocess, "postprocess_tuned": run.tuned is not None,
        "val_ap50_tuned_postprocess": run.tuned,
        "object_diameter": None if base_weights else data.net_diameter,
        "corrections_object_diameter": data.diameter, "scale": 1.0 if base_weights else data.scale,
    }


def _card(run, stopped, metrics, steps, base_weights: bool) -> str:
    loaded, data, settings, baseline, diameter = run.loaded, run.data, run.settings, run.baseline, run.data.diameter
    card = (f"# {run.name}\n\nFine-tuned from `{loaded.name}` on {len(data.train)} corrected image(s) "
            f"({run.source or 'corrections'}), loss {settings.loss}"
            f"{f' (w0={settings.w0:g}, sigma={settings.sigma:g} px)' if run.weight_map else ''}, target "
            f"{run.target}, {steps} steps ({stopped}).\n\n")
    if base_weights:
        card += (f"The fine-tuned weights scored no better than `{loaded.name}` with post-processing tuned on "
                 "the same held-out regions, so this file holds the base model's weights, unchanged, with "
                 + (f"its own post-processing (no other settings beat it on {run.base.regions} by more than "
                    f"{run.gain_text(held_out=False)})" if run.base.postprocess is None else
                    f"post-processing chosen on {run.base.regions} (the base trained on none of them)")
                 + (f", for objects of {diameter:.0f} px across as in the corrections (images are resized "
                    f"so that they reach the network's {loaded.object_diameter:g} px unless told another "
                    "object size)" if loaded.object_diameter and diameter else "") + ".\n\n")
    if metrics:
        card += (f"Validation AP@0.5 on held-out regions: {metrics['ap50']:.3f}"
                 + (f" (base model: {baseline['ap50']:.3f}).\n" if baseline else ".\n"))
    else:
        card += ("Not validated: " + ("validation was turned off" if not data.val else "stopped before the first "
                                      "validation") + "; no score was measured.\n")
    if data.net_diameter and not base_weights:
        card += (f"\nObjects in the corrections measure {diameter:.0f} px across; the network was trained at "
                 f"{data.net_diameter:g} px (images resized {data.scale:.2f}x), and prediction resizes images the "
                 "same way unless told another object diameter.\n")
    if run.tuned is not None:
        pp = run.postprocess
        from ..inference.postprocess import postprocess_text

        where = f", scored on {run.base.regions}" if base_weights else " chosen on the same regions"
        card += f"\nPost-processing{where}: {postprocess_text(pp)} (AP@0.5 {run.tuned:.3f}).\n"
    return card
