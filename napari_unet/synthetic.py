"""Deterministic synthetic microscopy with exact instance masks.

Every public generator returns ``(image, labels)``:

* ``image``  -- ``uint16`` camera counts, the simulated acquisition;
* ``labels`` -- ``int32`` instance mask of the same shape, ``0`` for background and
  ``1..N`` for the objects, every id present (consecutive).

The masks are exact: a pixel carries an object's id if and only if the object was drawn
there (before blur and noise). Where two objects overlap, the one drawn later ("on top")
owns the pixel, so the mask is always a partition of the image.

Everything is driven by one ``numpy.random.default_rng(seed)`` per call: the same
arguments give bit-identical outputs, and no global random state is read or changed.
Only numpy and scipy are used, so the module is safe to import anywhere (no torch, Qt or
napari).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

__all__ = ["fluorescent_nuclei", "phase_contrast_cells", "nuclei_3d", "SAMPLES"]


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


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


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float, n_waves: int = 5):
    """1 + a sum of very low frequency plane waves plus a vignetting term (illumination)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    field = np.zeros(shape, dtype=np.float64)
    for _ in range(n_waves):
        f = _unit(rng, len(shape)) * rng.uniform(0.2, 1.0)
        phase = rng.uniform(0, 2 * np.pi)
        arg = sum(2 * np.pi * f[k] * grids[k] / shape[k] for k in range(len(shape)))
        field = field + rng.uniform(0.3, 1.0) * np.cos(arg + phase)
    field *= amplitude / max(np.abs(field).max(), 1e-9)
    # vignetting around an off-centre optical axis
    c = np.array(shape) * rng.uniform(0.35, 0.65, len(shape))
    r2 = sum(((grids[k] - c[k]) / shape[k]) ** 2 for k in range(len(shape)))
    field = field - amplitude * 1.2 * r2
    return 1.0 + field


def _bandpass(rng: np.random.Generator, shape, s_small, s_large) -> np.ndarray:
    """Zero-mean, unit-variance band-pass filtered white noise."""
    w = rng.standard_normal(shape)
    t = ndi.gaussian_filter(w, s_small) - ndi.gaussian_filter(w, s_large)
    return t / max(t.std(), 1e-12)


def _spots(rng: np.random.Generator, shape, density: float, sigma) -> np.ndarray:
    """Randomly placed blurred point spots (chromocentres / granules), mean ~1 where present."""
    size = int(np.prod(shape))
    n = rng.poisson(density * size)
    idx = rng.integers(0, size, n)
    field = np.zeros(size, dtype=np.float64)
    np.add.at(field, idx, rng.exponential(1.0, n))
    field = ndi.gaussian_filter(field.reshape(shape), sigma)
    return field / max(field.max(), 1e-12)


def _camera(
    rng: np.random.Generator,
    photons: np.ndarray,
    gain: float,
    offset: float,
    read_noise: float,
) -> np.ndarray:
    """Poisson shot noise, gain (ADU / electron), gaussian read noise, offset -> uint16."""
    counts = rng.poisson(np.maximum(photons, 0.0)).astype(np.float64) * gain
    counts += offset + rng.normal(0.0, read_noise, photons.shape)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def _touches(mask_box: np.ndarray, labels_box: np.ndarray, target: int | None = None) -> bool:
    """True when the 4/6-connected dilation of ``mask_box`` hits a (given) label."""
    grown = ndi.binary_dilation(mask_box)
    hit = labels_box[grown & ~mask_box]
    return bool(np.any(hit == target) if target is not None else np.any(hit > 0))


# --------------------------------------------------------------------------------------
# Placement of non-overlapping / touching / overlapping blobs (2D and 3D)
# --------------------------------------------------------------------------------------


def _place_blobs(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spacing: np.ndarray,
    n: int,
    make_blob: Callable[[np.ndarray], _Blob],
    p_touch: float,
    p_overlap: float,
    max_tries: int = 40,
):
    """Draw up to ``n`` blobs into a label image.

    Each new blob is, at random, placed free (no contact), pushed against an existing blob
    until the two just touch, or dropped partly on top of one (the new one wins the shared
    pixels; the one below keeps >= 55 % of its area in one piece). Returns the label image
    and, per label, ``(blob, image_box, local_box, rho_box)`` for rendering.
    """
    labels = np.zeros(shape, dtype=np.int32)
    drawn: list[tuple[_Blob, tuple, tuple, np.ndarray, int]] = []  # blob, ibox, lbox, rho, area
    extent = np.array(shape) * spacing

    def evaluate(blob: _Blob):
        box = blob.full_box(spacing)
        rho = blob.rho(box, spacing)
        ibox, lbox = _clip(box, shape)
        if ibox is None:
            return None
        full_area = int((rho <= 1).sum())
        rho_in = rho[lbox]
        mask = rho_in <= 1
        if full_area == 0 or mask.sum() < 0.6 * full_area:  # mostly inside the image
            return None
        return ibox, lbox, rho_in, mask

    failures = 0
    for _ in range(n):
        if failures >= 3:
            break  # the field is full: stop instead of burning time on hopeless tries
        mode = "free"
        if drawn:
            u = rng.uniform()
            mode = "touch" if u < p_touch else ("overlap" if u < p_touch + p_overlap else "free")
        for _attempt in range(max_tries):
            if mode == "free" or not drawn:
                center = rng.uniform(0.0, 1.0, len(shape)) * extent
                blob = make_blob(center)
                if labels[tuple((center / spacing).astype(int))]:
                    continue  # cheap early reject: centre already taken
                ev = evaluate(blob)
                if ev is None:
                    continue
                ibox, lbox, rho_in, mask = ev
                if np.any(labels[ibox][mask]):
                    continue
                break
            j = int(rng.integers(len(drawn)))
            target = drawn[j][0]
            direction = _unit(rng, len(shape))
            blob = make_blob(target.center.copy())
            if mode == "overlap":
                dist = rng.uniform(0.5, 0.75) * (target.semi.mean() + blob.semi.mean())
                blob.center = target.center + direction * dist
                ev = evaluate(blob)
                if ev is None:
                    continue
                ibox, lbox, rho_in, mask = ev
                under = labels[ibox][mask]
                if set(np.unique(under).tolist()) - {0, j + 1}:
                    continue  # would cover a third object
                n_shared = int((under == j + 1).sum())
                if n_shared < 0.08 * mask.sum():
                    continue
                # what is left of the object below must stay large and in one piece
                _, tb, _, _, tarea = drawn[j]
                below = labels[tb] == j + 1
                covered = np.zeros_like(below)
                # paint the new mask into the target's box coordinates
                off = [i.start - t.start for i, t in zip(ibox, tb)]
                sl_new, sl_tgt = [], []
                for k in range(len(shape)):
                    a = max(0, off[k])
                    b = min(below.shape[k], off[k] + mask.shape[k])
                    sl_tgt.append(slice(a, b))
                    sl_new.append(slice(a - off[k], b - off[k]))
                if any(s.stop <= s.start for s in sl_tgt):
                    continue
                covered[tuple(sl_tgt)] = mask[tuple(sl_new)]
                rest = below & ~covered
                if rest.sum() < 0.55 * tarea or ndi.label(rest)[1] != 1:
                    continue
                break
            # touch: start well inside the target, walk outwards until free
            step = 0.5 * float(spacing.min())
            t = 0.85 * (target.rmin + blob.rmin)  # surely overlapping
            t_max = 1.3 * (target.rmax + blob.rmax)
            ev = None
            while t < t_max:
                blob.center = target.center + direction * t
                ev = evaluate(blob)
                if ev is None:
                    break
                if not np.any(labels[ev[0]][ev[3]]):
                    break
                t += step
            if ev is None or t >= t_max:
                continue
            ibox, lbox, rho_in, mask = ev
            if not _touches_in_image(mask, labels, ibox, j + 1):
                continue
            break
        else:
            failures += 1  # no valid position found for this object
            continue
        failures = 0
        label = len(drawn) + 1
        labels[ibox][mask] = label
        drawn.append((blob, ibox, lbox, rho_in, int(mask.sum())))
    return labels, [(b, ib, lb, r) for b, ib, lb, r, _ in drawn]


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


# --------------------------------------------------------------------------------------
# Fluorescent nuclei (2D and 3D)
# --------------------------------------------------------------------------------------


def _render_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spacing: np.ndarray,
    drawn,
    psf_sigma: tuple[float, ...],
    haze_sigma: tuple[float, ...],
    background: float,
    mean_peak: float,
    brightness_spread: float = 0.35,
) -> np.ndarray:
    """Expected photons per pixel for a set of drawn nuclei (before illumination / noise);
    per-nucleus brightness is ``mean_peak`` times a log-normal of sigma ``brightness_spread``."""
    tex_sigma = 1.0 / spacing
    chromatin = [_bandpass(rng, shape, tex_sigma, 3.0 * tex_sigma) for _ in range(2)]
    spots = _spots(rng, shape, 0.006 / float(np.prod(1.0 / spacing)), 0.9 / spacing)
    signal = np.zeros(shape, dtype=np.float64)
    for i, (blob, ibox, lbox, rho) in enumerate(drawn):
        inside = rho <= 1
        bright = mean_peak * rng.lognormal(0.0, brightness_spread)
        if rng.uniform() < 0.06:  # a few very bright (mitotic-like) nuclei
            bright *= 2.2
        # projected thickness of a dome: flat top, soft fall-off towards the rim
        dome = np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0)) ** 0.6
        tex = (
            1.0
            + rng.uniform(0.12, 0.25) * chromatin[i % 2][ibox]
            + rng.uniform(0.3, 1.2) * spots[ibox]
        )
        signal[ibox] += np.where(inside, bright * dome * np.clip(tex, 0.3, None), 0.0)
    blurred = ndi.gaussian_filter(signal, psf_sigma)
    haze = ndi.gaussian_filter(signal, haze_sigma)  # out-of-focus light
    return background + blurred + 0.12 * haze


def fluorescent_nuclei(shape=(512, 512), n_nuclei: int = 60, seed: int = 0):
    """Widefield fluorescence image of stained nuclei (e.g. DAPI / Hoechst), 2D.

    Parameters
    ----------
    shape : (int, int)
        Image size, YX.
    n_nuclei : int
        Number of nuclei to place (fewer if the field is too crowded to fit them all).
    seed : int
        Seed of the ``numpy.random.default_rng`` driving everything.

    Returns
    -------
    image : (Y, X) uint16
        Camera counts.
    labels : (Y, X) int32
        0 = background, 1..N = nuclei (consecutive). Exact: a pixel has a nucleus' id iff the
        nucleus was drawn there; in overlaps the nucleus on top owns the pixel.

    Simulated: ellipses with radii ~6-16 px, random orientation and slightly irregular
    outlines (radius modulated by low-frequency noise); ~30 % pushed against a neighbour
    until they touch and ~12 % dropped partly on top of one (overlap, fluorescence adds up);
    per-nucleus brightness (log-normal, a few ~2x brighter ones) with a dome profile and
    chromatin-like texture (band-pass noise + bright chromocentres); gaussian PSF blur plus
    faint out-of-focus haze; dim autofluorescent background under uneven, vignetted
    illumination; Poisson shot noise, camera gain, gaussian read noise and a camera offset
    of 100 counts.
    """
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(seed)
    spacing = np.ones(2)
    def make(center):
        r = rng.uniform(7.0, 13.5)
        return _random_blob(
            rng, center, r, aspect=rng.uniform(1.0, 1.45), irregularity=0.09, n_modes=3, max_freq=4.0
        )

    labels, drawn = _place_blobs(rng, shape, spacing, n_nuclei, make, p_touch=0.30, p_overlap=0.12)
    photons = _render_nuclei(
        rng, shape, spacing, drawn, psf_sigma=(1.4, 1.4), haze_sigma=(7.0, 7.0),
        background=18.0, mean_peak=260.0,
    )
    photons *= _smooth_field(rng, shape, 0.18)
    image = _camera(rng, photons, gain=1.6, offset=100.0, read_noise=3.0)
    return image, _check(labels)


def nuclei_3d(shape=(32, 128, 128), n_nuclei: int = 30, seed: int = 0, *, background: float = 15.0,
              mean_peak: float = 220.0, brightness_spread: float = 0.35):
    """Fluorescence z-stack of nuclei, 3D (ZYX) with anisotropic voxels.

    Voxels are 2x longer along Z than along Y/X (display with ``scale=(2, 1, 1)``); the
    nuclei are round in physical space, so they look squashed in voxel space.

    Parameters
    ----------
    shape : (int, int, int)
        Stack size, ZYX.
    n_nuclei : int
        Number of nuclei to place (fewer if the volume is too crowded).
    seed : int
        Seed of the ``numpy.random.default_rng`` driving everything.
    background, mean_peak : float
        Photons per voxel of the background and of an average nucleus's peak (the contrast).
    brightness_spread : float
        Sigma of the log-normal spread of the nuclei's brightness (0: all alike).

    Returns
    -------
    image : (Z, Y, X) uint16
        Camera counts.
    labels : (Z, Y, X) int32
        0 = background, 1..N = nuclei (consecutive); exact voxel masks, the nucleus on top
        owns overlapping voxels.

    Simulated: randomly rotated ellipsoids (semi-axes ~5-11 physical px) with slightly
    irregular surfaces, ~25 % touching a neighbour and a few overlapping; per-nucleus
    brightness, chromatin-like texture; anisotropic gaussian PSF (sigma 1 px in YX, 1.6
    slices = 3.2 px along Z) with out-of-focus haze; uneven illumination; Poisson + read
    noise and a camera offset of 100 counts.
    """
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(seed)
    spacing = np.array([2.0, 1.0, 1.0])

    def make(center):
        return _random_blob(
            rng, center, rng.uniform(6.5, 9.5), aspect=rng.uniform(1.0, 1.35),
            irregularity=0.08, n_modes=3, max_freq=4.0,
        )

    labels, drawn = _place_blobs(rng, shape, spacing, n_nuclei, make, p_touch=0.25, p_overlap=0.06)
    photons = _render_nuclei(
        rng, shape, spacing, drawn, psf_sigma=(1.6, 1.0, 1.0), haze_sigma=(4.0, 6.0, 6.0),
        background=background, mean_peak=mean_peak, brightness_spread=brightness_spread,
    )
    photons *= _smooth_field(rng, shape, 0.15)
    image = _camera(rng, photons, gain=1.6, offset=100.0, read_noise=3.0)
    return image, _check(labels)


# --------------------------------------------------------------------------------------
# Phase contrast cells (2D)
# --------------------------------------------------------------------------------------


def phase_contrast_cells(shape=(512, 512), n_cells: int = 25, seed: int = 0):
    """Phase-contrast image of adherent cells growing in small colonies, 2D.

    Parameters
    ----------
    shape : (int, int)
        Image size, YX.
    n_cells : int
        Number of cell seeds (a few may be dropped if squeezed to tiny fragments).
    seed : int
        Seed of the ``numpy.random.default_rng`` driving everything.

    Returns
    -------
    image : (Y, X) uint16
        Camera counts.
    labels : (Y, X) int32
        0 = background, 1..N = cells (consecutive), exact partition; cells in a colony
        share borders with no gap.

    Simulated: cells grown from seeds clustered into colonies as a weighted Voronoi
    tessellation of irregular, elongated star-shaped regions (radius ~16-34 px modulated by
    low-frequency noise), so neighbours share borders; a phase map from a per-cell dome
    height (thin lamellipodia at the rim, thicker round nucleus inside, granular cytoplasm);
    the phase-contrast optics as a high-pass of the phase (dark cell interiors, bright halo
    just outside the cells and thin bright lines at cell-cell borders, shade-off in large
    flat regions); slight blur, grey background with uneven illumination and faint debris,
    Poisson + read noise and a camera offset of 100 counts.
    """
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(seed)
    spacing = np.ones(2)
    scale = float(np.sqrt(np.prod(shape) / 512.0**2))

    # --- seeds, clustered into colonies -------------------------------------------------
    n_col = max(1, int(round(n_cells / 6)))
    col_centers = rng.uniform(0.15, 0.85, (n_col, 2)) * np.array(shape)
    blobs: list[_Blob] = []
    for i in range(n_cells):
        r = rng.uniform(18.0, 34.0) * min(max(scale, 0.4), 1.0)
        for _ in range(60):
            if rng.uniform() < 0.12:  # loners
                c = rng.uniform(0.05, 0.95, 2) * np.array(shape)
            else:
                k = int(rng.integers(n_col))
                c = col_centers[k] + rng.normal(0.0, 1.3 * r, 2)
            if not (0 <= c[0] < shape[0] and 0 <= c[1] < shape[1]):
                continue
            if all(np.linalg.norm(c - b.center) > 0.6 * (r + b.semi.mean()) for b in blobs):
                break
        blobs.append(
            _random_blob(rng, c, r, aspect=rng.uniform(1.0, 1.9), irregularity=0.45, n_modes=6,
                         max_freq=7.0)
        )

    # --- weighted Voronoi of star-shaped regions: exact partition ----------------------
    best = np.ones(shape, dtype=np.float64)
    raw = np.zeros(shape, dtype=np.int32)
    for i, b in enumerate(blobs):
        ibox, lbox = _clip(b.full_box(spacing), shape)
        if ibox is None:
            continue
        rho = b.rho(b.full_box(spacing), spacing)[lbox]
        win = rho < best[ibox]
        best[ibox][win] = rho[win]
        raw[ibox][win] = i + 1

    # keep the largest piece of each cell, drop tiny cells, relabel 1..N
    labels = np.zeros(shape, dtype=np.int32)
    min_area = 120.0 * min(scale, 1.0) ** 2
    nxt = 1
    for i, sl in enumerate(ndi.find_objects(raw)):
        if sl is None:
            continue
        piece, n = ndi.label(raw[sl] == i + 1)
        if n == 0:
            continue
        sizes = np.bincount(piece.ravel())[1:]
        if sizes.max() < min_area:
            continue
        labels[sl][piece == (np.argmax(sizes) + 1)] = nxt
        nxt += 1

    # --- phase map ---------------------------------------------------------------------
    fg = labels > 0
    border = np.zeros(shape, dtype=bool)  # pixels next to another label or background
    for ax in range(2):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[ax], b[ax] = slice(1, None), slice(None, -1)
        diff = labels[tuple(a)] != labels[tuple(b)]
        border[tuple(a)] |= diff
        border[tuple(b)] |= diff
    dist = ndi.distance_transform_edt(fg & ~border)
    smooth = np.zeros(shape)  # 1 inside nuclei: no cytoplasmic granules there
    height = np.tanh(dist / 4.0) * 0.4 + np.tanh(dist / 18.0) * 0.6
    # a thicker nucleus inside each cell, between the centroid and the cell's deepest point
    for i, sl in enumerate(ndi.find_objects(labels)):
        if sl is None:
            continue
        cell = labels[sl] == i + 1
        d = dist[sl] * cell
        deep = np.array(np.unravel_index(np.argmax(d), d.shape), dtype=np.float64)
        rn = min(0.7 * d.max(), rng.uniform(8.0, 12.0))
        if rn < 3:
            continue
        yy, xx = np.ogrid[: cell.shape[0], : cell.shape[1]]
        ang, asp = rng.uniform(0, np.pi), rng.uniform(1.0, 1.4)
        dy, dx = yy - deep[0], xx - deep[1]
        u = (dy * np.cos(ang) + dx * np.sin(ang)) / (rn * asp)
        v = (-dy * np.sin(ang) + dx * np.cos(ang)) / (rn / asp)
        nuc = np.sqrt(np.clip(1 - u * u - v * v, 0, 1)) * cell
        height[sl] += rng.uniform(0.2, 0.35) * nuc
        smooth[sl] = np.maximum(smooth[sl], np.clip(3 * nuc, 0, 1))
    granules = _spots(rng, shape, 0.01, 1.2)
    texture = 1.0 + (1.0 - smooth) * (0.12 * _bandpass(rng, shape, 1.2, 4.0) + 0.6 * granules)
    phase = ndi.gaussian_filter(height * np.clip(texture, 0.3, None) * fg, 1.0)

    # phase-contrast transfer: high-pass (halo / shade-off) + a little absolute darkening
    low = ndi.gaussian_filter(phase, 7.0)
    contrast = 1.0 - 1.6 * (phase - low) - 0.35 * phase
    debris = 0.02 * _bandpass(rng, shape, 1.5, 20.0) + 0.1 * _spots(rng, shape, 0.0004, 1.5)
    contrast = ndi.gaussian_filter(contrast + debris, 0.8)
    photons = 1500.0 * np.clip(contrast, 0.05, None) * _smooth_field(rng, shape, 0.15)
    image = _camera(rng, photons, gain=1.0, offset=100.0, read_noise=4.0)
    return image, _check(labels)


SAMPLES = {
    "nuclei": fluorescent_nuclei,
    "cells": phase_contrast_cells,
    "nuclei3d": nuclei_3d,
}
