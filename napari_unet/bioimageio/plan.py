"""How napari-unet runs a package it did not build itself: the validated description, and the
plan read from it (axes, sizes, pre-processing, how the output is read), or one line saying why not."""

from __future__ import annotations

from pathlib import Path

from ._common import _fail, _require


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
        self.path = path
        if len(descr.inputs) != 1 or len(descr.outputs) != 1:
            _fail(path, f"the model takes {len(descr.inputs)} input(s) and gives {len(descr.outputs)} output(s); "
                        "napari-unet runs models with one image in and one segmentation out.")
        ipt, out = descr.inputs[0], descr.outputs[0]
        self.input_id = ipt.id
        self._read_input(ipt)
        self._check_output_size(ipt, out)
        self.out_axes = [self._kind(a, "output") for a in out.axes]
        out_channel = next((a for a in out.axes if a.type == "channel"), None)
        self.out_channels = out_channel.size if out_channel is not None else 1
        self.normalization, self.pre_ops = self._preprocessing(ipt)
        self.activation = self._postprocessing(out)
        self.target = self._target()

    def _read_input(self, ipt) -> None:
        """The input's axes, spatial axes, sizes (``min + n * step``) and channels."""
        from bioimageio.spec.model import v0_5 as spec

        self.in_axes = [self._kind(a, "input") for a in ipt.axes]
        self.spatial = [a.id for a in ipt.axes if a.type == "space"]
        if len(self.spatial) not in (2, 3) or (len(self.spatial) == 3 and "z" not in self.spatial):
            _fail(self.path, f"its input has the spatial axes {', '.join(map(str, self.spatial)) or 'none'}; "
                             "napari-unet runs 2D (y, x) and 3D (z, y, x) models.")
        self.mins, self.steps = [], []
        for a in ipt.axes:
            if a.type != "space":
                continue
            if isinstance(a.size, spec.ParameterizedSize):
                self.mins.append(a.size.min)
                self.steps.append(a.size.step)
            else:
                _fail(self.path, f"its input axis {a.id} has a fixed or referenced size ({a.size}); napari-unet "
                                 "tiles images and needs sizes of the form min + n * step.")
        channel = next((a for a in ipt.axes if a.type == "channel"), None)
        self.in_channels = channel.size if channel is not None else 1

    def _check_output_size(self, ipt, out) -> None:
        """A segmentation: the output has the input's spatial axes, each of the input's size."""
        from bioimageio.spec.model import v0_5 as spec

        out_spatial = [a for a in out.axes if a.type == "space"]
        if sorted(a.id for a in out_spatial) != sorted(self.spatial):
            _fail(self.path, "it is not a segmentation model: its output's spatial axes "
                             f"({', '.join(str(a.id) for a in out_spatial) or 'none'}) are not its input's.")
        for a in out_spatial:
            ref = a.size
            same = isinstance(ref, spec.SizeReference) and ref.tensor_id == ipt.id and ref.axis_id == a.id \
                and ref.offset == 0 and a.scale == next(b.scale for b in ipt.axes if b.id == a.id)
            if not same:
                _fail(self.path, f"it is not a segmentation model: its output axis {a.id} does not have the input's "
                                 "size.")

    def _target(self) -> str:
        """The napari-unet target its output channels are read as."""
        if self.out_channels == 1:
            return "binary"
        if self.out_channels in (2, 3):
            if self.activation == "sigmoid":
                _fail(self.path, f"its {self.out_channels} output channels are independent sigmoid maps (e.g. "
                                 "foreground and boundaries), which napari-unet cannot read as classes.")
            return "binary" if self.out_channels == 2 else "boundary"
        _fail(self.path, f"it is not a segmentation model napari-unet reads: its output has {self.out_channels} "
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

