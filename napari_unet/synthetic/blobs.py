"""Star-convex blobs: the shapes every synthetic object is drawn from (2D and 3D), and the small
geometry helpers that clip them to an image and tell whether two of them touch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


def _unit(rng: np.random.Generator, ndim: int) -> np.ndarray:
    v = rng.standard_normal(ndim)
    return v / np.linalg.norm(v)


def _rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A uniformly random rotation matrix (columns = object axes in image space)."""
    if ndim == 2:
        a = rng.uniform(0.0, np.pi)
        c, s = np.cos(a), np.sin(a)
        return np.array([[c, -s], [s, c]])
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@dataclass
class _Blob:
    """A star-convex blob: a rotated ellipsoid whose radius is modulated by smooth noise.

    Geometry is in physical units (``spacing`` converts pixels to physical units).
    """

    center: np.ndarray  # physical coordinates, per axis
    semi: np.ndarray  # semi-axes (physical)
    rot: np.ndarray  # (ndim, ndim) rotation; column j = direction of semi-axis j
    dirs: np.ndarray  # (m, ndim) unit vectors of the radius modulation
    freqs: np.ndarray  # (m,)
    phases: np.ndarray  # (m,)
    amps: np.ndarray  # (m,)

    @property
    def rmax(self) -> float:
        return float(self.semi.max() * (1.0 + self.amps.sum()))

    @property
    def rmin(self) -> float:
        return float(self.semi.min() * (1.0 - self.amps.sum()))

    def rho(self, box: tuple[slice, ...], spacing: np.ndarray) -> np.ndarray:
        """Normalised radius in ``box`` (pixel slices, may exceed the image): <= 1 inside."""
        ndim = len(box)
        d = [
            (np.arange(sl.start, sl.stop, dtype=np.float64) * spacing[k] - self.center[k]).reshape(
                [-1 if i == k else 1 for i in range(ndim)]
            )
            for k, sl in enumerate(box)
        ]
        # coordinates in the object frame, normalised by the semi-axes
        y = [sum(d[k] * self.rot[k, j] for k in range(ndim)) / self.semi[j] for j in range(ndim)]
        r = np.sqrt(sum(yj * yj for yj in y))
        r_safe = np.maximum(r, 1e-9)
        pert = 1.0
        for m in range(len(self.amps)):
            cosang = sum(y[j] * self.dirs[m, j] for j in range(ndim)) / r_safe
            pert = pert + self.amps[m] * np.cos(self.freqs[m] * cosang + self.phases[m])
        return r / pert

    def full_box(self, spacing: np.ndarray) -> tuple[slice, ...]:
        """Pixel bounding box of the whole blob (not clipped to the image)."""
        half = np.sqrt(((self.rot * self.semi[None, :]) ** 2).sum(axis=1)) * (1.0 + self.amps.sum())
        lo = np.floor((self.center - half) / spacing).astype(int) - 1
        hi = np.ceil((self.center + half) / spacing).astype(int) + 2
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _random_blob(
    rng: np.random.Generator,
    center: np.ndarray,
    radius: float,
    aspect: float,
    irregularity: float,
    n_modes: int,
    max_freq: float,
) -> _Blob:
    ndim = center.size
    # semi-axes: ``radius`` is the geometric-mean radius; one axis stretched by ``aspect``
    semi = np.full(ndim, radius, dtype=np.float64)
    semi[0] *= aspect
    semi /= aspect ** (1.0 / ndim)
    return _Blob(
        center=np.asarray(center, dtype=np.float64),
        semi=semi,
        rot=_rotation(rng, ndim),
        dirs=np.stack([_unit(rng, ndim) for _ in range(n_modes)]),
        freqs=rng.uniform(1.5, max_freq, n_modes),
        phases=rng.uniform(0.0, 2 * np.pi, n_modes),
        amps=rng.uniform(0.3, 1.0, n_modes) * (irregularity / n_modes),
    )


def _clip(box: tuple[slice, ...], shape: tuple[int, ...]):
    """Clip a box to the image; returns (image slices, slices into the box-sized arrays)."""
    img, loc = [], []
    for sl, n in zip(box, shape):
        a, b = max(sl.start, 0), min(sl.stop, n)
        if b <= a:
            return None, None
        img.append(slice(a, b))
        loc.append(slice(a - sl.start, b - sl.start))
    return tuple(img), tuple(loc)


def _touches(mask_box: np.ndarray, labels_box: np.ndarray, target: int | None = None) -> bool:
    """True when the 4/6-connected dilation of ``mask_box`` hits a (given) label."""
    grown = ndi.binary_dilation(mask_box)
    hit = labels_box[grown & ~mask_box]
    return bool(np.any(hit == target) if target is not None else np.any(hit > 0))


def _touches_in_image(mask, labels, ibox, target) -> bool:
    """Dilation of ``mask`` (placed at ``ibox``) reaches pixels of label ``target``."""
    pad = []
    for sl, n in zip(ibox, labels.shape):
        pad.append((1 if sl.start > 0 else 0, 1 if sl.stop < n else 0))
    big = np.pad(mask, pad)
    gbox = tuple(slice(sl.start - p[0], sl.stop + p[1]) for sl, p in zip(ibox, pad))
    return _touches(big, labels[gbox], target)


def _check(labels: np.ndarray) -> np.ndarray:
    """Ensure labels are consecutive 1..N (they are by construction)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    assert ids.size == 0 or (ids[0] == 1 and ids[-1] == ids.size), "labels not consecutive"
    return labels
