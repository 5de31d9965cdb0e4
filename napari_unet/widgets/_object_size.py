"""The Segment dock's object size: the field, "Estimate from image" and "Measure on labels" (a part
of :class:`~.segment.SegmentWidget`).

The sizes come from the core: what a model declares (:func:`napari_unet.modelinfo.object_sizes`),
the median diameter of labelled objects (:func:`napari_unet.scaling.median_diameter`) and the
estimate from first passes of the model (:func:`napari_unet.inference.estimate.estimate_diameter_iter`,
on the plane shown: :func:`~napari_unet.inference.estimate.shown_plane`).
"""

from __future__ import annotations

import threading

import numpy as np
from magicgui.widgets import FloatSpinBox, PushButton

from ._layers import current_plane

DIAMETER_HELP = ("Typical diameter of the objects in this image, in pixels. The image is resized so that they reach "
                 "the size the model works at; the labels keep the image's size. 'auto' (0): estimated from the "
                 "image at each run (a few small first passes).")


#: "Measure on labels" reads labels larger than this (pixels), or not in memory, in a worker
MEASURE_ON_THE_QT_THREAD = 4096 * 4096


class ObjectSizeControls:
    """The object-size controls and actions of the Segment dock (mixed into its widget, whose image,
    channels, device and tiles, status line, predictor and jobs they use)."""

    def _make_size_controls(self):
        self.diameter = FloatSpinBox(label="Object size (px)", value=0.0, min=0.0, max=5000.0, step=1.0,
                                     tooltip=DIAMETER_HELP)
        self.estimate_button = PushButton(text="Estimate from image",
                                          tooltip="Set the object size from first passes of the model on the image "
                                                  "(no labels needed; a few seconds).")
        self.measure_button = PushButton(text="Measure on labels",
                                         tooltip="Set the object size to the median diameter of the objects in the "
                                                 "selected labels layer (or the top-most one of the image's size).")

    def _apply_object_size(self, config: dict) -> None:
        """The field for a model's config: a model that declares the object size it works at resizes
        images; the field starts at the size it was made for (its fine-tuning corrections'), else at
        "auto" (estimated at each run); other models take images as they are (the field is off)."""
        from ..modelinfo import object_sizes

        network, made_for = object_sizes(config)
        self.diameter.value = min(float(made_for or 0.0), self.diameter.max) if network else 0.0
        self.diameter.native.setSpecialValueText("auto" if network else "")
        self.diameter.enabled = self.measure_button.enabled = self.estimate_button.enabled = bool(network)
        self.diameter.tooltip = DIAMETER_HELP + (f" This model works at objects of {network:g} px." if network else
                                                 " This model takes images at their own size (it declares no object "
                                                 "size).")

    def measure_object_size(self, *_):
        """Set the object size to the median object diameter of a labels layer: the selected one,
        else the top-most one of the image's size (a correction or an earlier result)."""
        from napari.layers import Labels

        from ..scaling import median_diameter

        image = self.image.value
        active = self._viewer.layers.selection.active
        candidates = [active] if isinstance(active, Labels) else []
        if image is not None:
            shape = tuple((image.data[0] if image.multiscale else image.data).shape)
            rows_cols = shape[-3:-1] if image.rgb else shape[-2:]
            candidates += [layer for layer in reversed(self._viewer.layers) if isinstance(layer, Labels)
                           and not layer.multiscale and tuple(layer.data.shape[-2:]) == rows_cols]
        if not candidates or candidates[0].multiscale:
            self.report_error("No labels layer to measure: select one (corrections or an earlier result) first.")
            return
        layer = candidates[0]
        data, name = layer.data, layer.name

        def measured(diameter):
            if diameter is None:
                self.report_error(f"'{name}' has no object of 16 pixels or more to measure.")
                return
            self.diameter.value = round(diameter, 1)
            self.status.value = f"object size {diameter:.1f} px: the median diameter of the objects in '{name}'"

        if isinstance(data, np.ndarray) and data.size <= MEASURE_ON_THE_QT_THREAD:
            measured(median_diameter(data))  # in memory and small: at once
            return
        if self.running:  # a store (a large result): read in a worker, never on the Qt thread
            self.status.value = "still busy with the previous job…"
            return
        self.start_job(lambda: median_diameter(np.asarray(data)),
                       lambda diameter: None if self.cancelled else measured(diameter),
                       f"napari-unet: measuring {name}", job_name="Measuring the objects",
                       cancelled_message="cancelled: the object size was not changed")
        self.status.value = f"measuring the objects in '{name}' (reading the labels)…"

    def estimate_object_size(self, *_):
        """Set the object size from first passes of the model on the chosen image (a job)."""
        inputs = self._ready_to_start()
        if inputs is None:
            return
        layer, data, model = inputs
        from ..inference.estimate import estimate_diameter_iter, shown_plane
        from ..jobs import PredictionCancelled

        channel_axis = None if layer.rgb else self.channels.value
        rgb, device, tile = bool(layer.rgb), self.device.value, self.tile_size.value
        stop = threading.Event()
        try:
            position = current_plane(self._viewer, layer, data.shape)[0]
        except (IndexError, ValueError, TypeError):
            position = None
        plane = shown_plane(data.shape, position, rgb, channel_axis)  # a stack: the plane on screen

        def job():
            predictor = self._predictor(model, device, tile)
            try:
                return (yield from estimate_diameter_iter(predictor.model, data, channel_axis=channel_axis, rgb=rgb,
                                                          plane=plane, stop=stop, predictor=predictor))
            except PredictionCancelled:
                return None

        def done(estimate):
            if estimate is None:
                return
            if estimate.diameter is None:
                self.report_error(f"No object size found in '{layer.name}': {estimate.describe()}. Measure it on "
                                  "labels, or type it in.")
                return
            self.diameter.value = round(min(estimate.diameter, self.diameter.max), 1)
            self.status.value = f"object size {estimate.diameter:.1f} px, estimated in '{layer.name}': " \
                                f"{estimate.describe()}"

        self.start_job(job, done, f"napari-unet: object size of {layer.name}", stop=stop)
