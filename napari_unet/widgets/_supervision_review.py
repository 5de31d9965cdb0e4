"""The Deep-supervision dock's pruning and review half: "Run pruned", the depth shown, "Next
region to review" (a part of :class:`~.supervision.SupervisionWidget`).

The work runs on the core's functions (:func:`~napari_unet.inference.supervision.compare_pruned_iter`,
:func:`~napari_unet.inference.supervision.next_region`), and the table and camera move are the
core's plain data (:mod:`napari_unet.inference.review`); this module reads the controls, starts the
jobs and puts their results into the viewer.
"""

from __future__ import annotations

import threading

import numpy as np
from napari.utils.notifications import show_info

from ._layers import build_layer, checksum, layer_meta as _meta, model_label, put_layer, spatial_transform

ALL = "all depths"


def _camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _grid(viewer):
    """Grid-mode settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _canvas_size(viewer) -> tuple:
    """The canvas' (height, width) in screen pixels: public on the viewer model since napari 0.6;
    before, a typical 512 x 512 (the zoom is then only approximate)."""
    return tuple(getattr(getattr(viewer, "canvas", None), "size", None) or (512, 512))


class PruningAndReview:
    """The pruning and review actions of the Deep-supervision dock (mixed into its widget, whose
    controls, predictors and last results they use)."""

    def run_pruned(self):
        """Predict with U-Net++'s depth-k sub-network only; time it and score it (in a worker)."""
        inputs = self._ready_to_start()
        if inputs is None:
            return
        layer, data, model = inputs
        try:
            truth, reviewed = self._corrections_data(self._spatial_shape(layer))
        except ValueError as exc:
            self.report_error(str(exc))
            return
        from ..inference.supervision import compare_pruned_iter
        from ..jobs import PredictionCancelled

        depth = int(self.prune_depth.value)
        stop = threading.Event()
        device = self.device.value
        transform = spatial_transform(layer, None)
        base = f"{layer.name} [{model_label(model)}]"
        # the full network's run is timed and scored once per image and corrections (as they are now; corrections
        # too large to hash are scored again each time); only the last one is kept (it holds its prediction).
        # The corrections (up to 256 MB) are hashed in the worker, not on the Qt thread.
        image_key = (model, device, layer.unique_id, self._spatial_shape(layer))
        full_runs = self._full_runs  # (done() replaces it, never changes it)

        def job():
            truth_key = None if truth is None else checksum(np.asarray(truth))
            reviewed_key = None if reviewed is None else checksum(np.asarray(reviewed))
            full_key = (*image_key, truth_key, reviewed_key)
            hashed = (truth is None or truth_key is not None) and (reviewed is None or reviewed_key is not None)
            have_full = hashed and full_key in full_runs
            predictor = self._predictor(model, device, False)
            try:
                results, labels = yield from compare_pruned_iter(predictor, data, depth, with_full=not have_full,
                                                                 truth=truth, reviewed=reviewed, stop=stop,
                                                                 rgb=bool(layer.rgb))
            except PredictionCancelled:
                return None
            layer_out = build_layer(labels, "labels", f"{base} depth {depth} labels",
                                    {"source": layer.name, "model": str(model), "kind": "labels", "depth": depth},
                                    **transform)
            return results, layer_out, full_key, have_full

        def done(result):
            if result is None or stop.is_set():
                return
            results, layer_out, full_key, have_full = result
            if not have_full:
                self._full_runs = {full_key: results[0]}
            full = self._full_runs.get(full_key, results[0])
            run, score = results[-1]
            self.last_pruned = run
            put_layer(self._viewer, layer_out)
            self._add_pruned_row(run, score, full, restart=not have_full)
            self.status.value = f"depth {depth}: {run.ms_per_megapixel:.0f} ms per megapixel on " \
                                f"{run.prediction.device}"

        self.start_job(job, done, f"napari-unet: depth {depth} of {layer.name}", stop=stop)

    def _add_pruned_row(self, run, score, full, restart: bool = False):
        """One row per pruned run: its time per megapixel, its speed-up over the full network on
        the same image (``full``: its run and score, timed the same way after a warm-up), its score.
        ``restart``: the full network was run again (another image, or other corrections), so the
        table starts again, from its new "full" row."""
        from ..inference.review import pruned_table

        held = self.pruned.shape[0] > 0 and not restart
        self.pruned.value = pruned_table(self.pruned.data if held else [], self.pruned.row_headers if held else [],
                                         run, score, full)
        self.pruned.native.resizeColumnsToContents()

    # -- looking at the results ----------------------------------------------------------
    def _result_layers(self):
        if self._context is None:
            return []
        base = self._context[2]
        return [layer for layer in self._viewer.layers if layer.name.startswith(base) and
                _meta(layer).get("kind") == "depth"]

    def _on_show_depth(self, choice):
        for layer in self._result_layers():
            layer.visible = choice == ALL or _meta(layer).get("depth") == choice

    def next_region(self):
        """Centre the view on the not-yet-reviewed block where the depths disagree most."""
        if self.running:
            return
        if self._context is None:
            self.report_error("Run all depths first: the disagreement between depths says where to look.")
            return
        from ..inference.supervision import next_region

        layer, transform, _base, _model, disagreement, corrections = self._context
        reviewed = None
        if corrections is not None and corrections in self._viewer.layers:
            name = _meta(corrections).get("reviewed")
            if name in self._viewer.layers and self._viewer.layers[name].data.shape == disagreement.shape:
                reviewed = np.array(self._viewer.layers[name].data)
        spatial_dims = self.last_depths.spatial_dims
        visited = set(self._visited)

        def job():
            yield from ()
            return next_region(disagreement, spatial_dims, reviewed, visited)

        def done(region):
            if self.cancelled:  # Cancel: the view stays where it is, the region is not marked visited
                return
            if region is None:
                self.status.value = "every region where the depths disagree is reviewed (or visited)"
                show_info("napari-unet: nothing left to review where the depths disagree.")
                return
            self._visited.add(region.key)
            self._go_to(region, transform)
            self.status.value = f"region {len(self._visited)}: {region.describe()}"

        self.start_job(job, done, "napari-unet: finding the next region")

    def _go_to(self, region, transform):
        """Set the sliders to the region's plane and centre and zoom the camera on its block."""
        from ..inference.review import view_of

        dims = self._viewer.dims
        view = view_of(region, transform["scale"], transform["translate"], dims.ndim, dims.displayed,
                       _canvas_size(self._viewer))
        for axis, value in view.points.items():
            dims.set_point(axis, value)
        camera = _camera(self._viewer)
        camera.center = view.center
        camera.zoom = view.zoom
