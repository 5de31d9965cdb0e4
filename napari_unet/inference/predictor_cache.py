"""One predictor settings object, and the caches of predictors that it is the key of.

:class:`PredictorSettings` holds everything a :class:`~.predictor.Predictor` is made from: the
model (a bundled name or a model file), the device, the tiles (size, halo, blend, batch) and
whether it returns every side output; optionally the model file's modification time, so that a
file rewritten since (a fine-tuned model saved again) is another key and is loaded again.

:class:`PredictorCache` keeps the predictors of the last few settings. Every predictor cache of the
package is one of these: the Segment and Deep-supervision docks keep one each, and every process
that runs block or file tasks keeps one (:func:`napari_unet.inference.runners.cached_predictor`).
A new predictor of a model the cache already holds shares its loaded model (the file is read
once); each predictor still has its own copy of the network for its device.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .tiling import DEFAULT_BLEND, DEFAULT_HALO

if TYPE_CHECKING:
    from .predictor import Predictor


def _number_or_auto(value):
    """``"512"`` and ``512`` are one setting (a widget's combo box gives text); ``"auto"`` and
    anything else stay as given (the :class:`Predictor` checks them and says what is wrong)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


@dataclass(frozen=True)
class PredictorSettings:
    """What a :class:`Predictor` is made from; equal settings make the same predictor.

    ``model``: a bundled model's name or a model file's path. ``modified``: the model file's
    modification time in nanoseconds when the settings were made (:meth:`stamped`; None: not
    looked at). The other fields are the :class:`Predictor`'s arguments of the same names.
    """

    model: str
    device: str = "auto"
    tile_size: int | str = "auto"
    halo: int = DEFAULT_HALO
    blend: int = DEFAULT_BLEND
    batch_size: int | str = "auto"
    side_outputs: bool = False
    modified: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "tile_size", _number_or_auto(self.tile_size))
        object.__setattr__(self, "batch_size", _number_or_auto(self.batch_size))
        object.__setattr__(self, "side_outputs", bool(self.side_outputs))

    @classmethod
    def of(cls, model, arguments: dict | None = None, **overrides) -> "PredictorSettings":
        """Settings of ``model`` from a dict of :class:`Predictor` arguments (``device``,
        ``tile_size``, ``halo``, ``blend``, ``batch_size``: the settings dicts that block-wise and
        file runs carry) and keyword overrides. An unknown argument raises ``TypeError``, as the
        :class:`Predictor` would."""
        return cls(str(model), **{**(arguments or {}), **overrides})

    def stamped(self) -> "PredictorSettings":
        """These settings with the model file's modification time as it is now. Raises
        :class:`~napari_unet.modelfile.ModelFileError` when the file is gone."""
        from ..catalog import ModelFileError, resolve_model_path

        path = resolve_model_path(self.model)
        try:
            modified = path.stat().st_mtime_ns
        except OSError:
            raise ModelFileError(f"The model file {path} is gone (moved, renamed or deleted): load it again with "
                                 "'Load model file…', or choose another model.") from None
        return replace(self, modified=modified)

    def arguments(self) -> dict:
        """The :class:`Predictor`'s keyword arguments (all but the model)."""
        return {"device": self.device, "tile_size": self.tile_size, "halo": self.halo, "blend": self.blend,
                "batch_size": self.batch_size, "side_outputs": self.side_outputs}

    def same_model(self, other: "PredictorSettings") -> bool:
        """Whether ``other`` names the same model file, as it was when these settings were made."""
        return self.model == other.model and self.modified == other.modified

    def build(self, loaded=None) -> Predictor:
        """A new :class:`Predictor` with these settings (of ``loaded``, a loaded model of
        :attr:`model`, when given; else the model is loaded)."""
        from .predictor import Predictor  # (torch: in the worker that builds it, never at import)

        return Predictor(self.model if loaded is None else loaded, **self.arguments())


class PredictorCache:
    """The predictors of the ``capacity`` most recently used :class:`PredictorSettings`.

    :meth:`get` returns the predictor of some settings, making it on first use; a model the
    cache already holds (same file, same modification time) is not loaded again. :attr:`loads`
    counts the model files read. Safe to use from several threads.
    """

    def __init__(self, capacity: int = 1):
        self.capacity = capacity
        self.loads = 0
        self._predictors: OrderedDict[PredictorSettings, Predictor] = OrderedDict()
        self._lock = threading.RLock()

    def __contains__(self, settings: PredictorSettings) -> bool:
        return settings in self._predictors

    def __len__(self) -> int:
        return len(self._predictors)

    def get(self, settings: PredictorSettings) -> Predictor:
        """The predictor of ``settings`` (made now when the cache has none; the least recently used
        one goes when the cache is full)."""
        with self._lock:
            predictor = self._predictors.get(settings)
            if predictor is not None:
                self._predictors.move_to_end(settings)
                return predictor
            loaded = next((p.model for s, p in self._predictors.items() if s.same_model(settings)), None)
            if loaded is None:
                from ..modelfile import load_model

                loaded = load_model(settings.model)
                self.loads += 1
            predictor = settings.build(loaded)
            while self._predictors and len(self._predictors) >= max(1, int(self.capacity)):
                self._predictors.popitem(last=False)
            self._predictors[settings] = predictor
            return predictor

    def clear(self) -> None:
        with self._lock:
            self._predictors.clear()
