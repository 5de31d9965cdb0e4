"""The zarr stores a block-wise run writes (:func:`~.large.segment_to_zarr_iter`).

They are written under temporary names beside their final paths and renamed into place at the end
(:func:`~.lazyio._commit`), so that a failed or cancelled run leaves nothing under a final name.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .blockplan import LargePlan, chunk_shape
from .lazyio import _check_output, _commit, _create_array, check_apart


@dataclass
class BlockStores:
    """The zarr stores of one run: written under temporary names beside the final paths and
    renamed at the end; without a labels path, a new temporary folder's store is written in place
    (a viewer layer can show it meanwhile). The probabilities always get a store: discarded at the
    end when no path was given for them."""

    labels_path: Path
    probabilities_path: Path | None
    in_place: bool
    tmp_labels: Path
    tmp_probs: Path

    @classmethod
    def prepare(cls, labels_path, probabilities_path, source=None) -> "BlockStores":
        """Check the output paths (before any work): ``.zarr`` names, never over something else nor
        over the input ``source`` (a path or an array, see :func:`~.lazyio.check_apart`); a None
        ``labels_path`` then makes a temporary folder."""
        keep_probs = probabilities_path is not None
        in_place = labels_path is None
        outputs = [] if in_place else [Path(labels_path)]
        if keep_probs:
            probabilities_path = Path(probabilities_path)
            outputs.append(probabilities_path)
        for path in outputs:
            _check_output(path)
            check_apart(path, source)
        if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
            raise ValueError("The labels and the probabilities need two different .zarr paths.")
        if in_place:  # only now: a refused output leaves no folder behind
            import tempfile

            labels_path = Path(tempfile.mkdtemp(prefix="napari-unet-")) / "labels.zarr"
        labels_path = Path(labels_path)
        token = uuid.uuid4().hex[:8]
        tmp_labels = labels_path if in_place else labels_path.with_name(f".{labels_path.name}.tmp-{token}")
        tmp_probs = (probabilities_path.with_name(f".{probabilities_path.name}.tmp-{token}") if keep_probs
                     else labels_path.with_name(f".{labels_path.name}.probabilities-{token}"))
        return cls(labels_path, probabilities_path if keep_probs else None, in_place, tmp_labels, tmp_probs)

    def create(self, plan: LargePlan, attrs: dict) -> None:
        planes, spatial, n_out = plan.plane_shape, plan.grid.shape, plan.n_out
        chunks = chunk_shape(plan.grid.block, plan.spatial_dims)
        _create_array(self.tmp_labels, planes + spatial, (1,) * len(planes) + chunks, np.int32, attrs)
        k_axis = (n_out,) if n_out > 1 else ()
        _create_array(self.tmp_probs, planes + k_axis + spatial, (1,) * len(planes) + k_axis + chunks, np.float32,
                      attrs)

    def commit(self) -> None:
        if not self.in_place:
            _commit(self.tmp_labels, self.labels_path)
        if self.probabilities_path is not None:
            _commit(self.tmp_probs, self.probabilities_path)

    def clean_up(self, finished: bool) -> None:
        """Remove what is left under temporary names (everything, when the run did not finish)."""
        for tmp in (self.tmp_probs,) if self.in_place and finished else (self.tmp_labels, self.tmp_probs):
            shutil.rmtree(tmp, ignore_errors=True)
        if self.in_place and not finished:
            shutil.rmtree(self.labels_path.parent, ignore_errors=True)
