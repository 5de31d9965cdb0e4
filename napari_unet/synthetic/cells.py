"""Phase-contrast cells in colonies, 2D (:func:`phase_contrast_cells`): seeds, a partition into
cells, a phase map of their heights, and the optics that turn the phase into contrast."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .blobs import _Blob, _check, _clip, _random_blob
from .optics import _bandpass, _camera, _smooth_field, _spots


def phase_contrast_cells(shape=(512, 512), n_cells: int = 25, seed: int = 0):
    """Phase-contrast image of adherent cells growing in small colonies, 2D.

    ``shape`` is the image's (Y, X) size, ``n_cells`` the number of cell seeds (a few may be
    dropped if squeezed to tiny fragments), ``seed`` that of the ``numpy.random.default_rng``
    driving everything. Returns ``(image, labels)``: camera counts, (Y, X) uint16, and an exact
    partition, (Y, X) int32, 0 = background and 1..N = cells (consecutive); cells in a colony
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
    blobs = _colony_blobs(rng, shape, n_cells, scale)
    labels = _largest_pieces(_star_voronoi(blobs, shape, spacing), shape, scale)
    phase = _phase_map(rng, labels)
    image = _phase_contrast(rng, phase)
    return image, _check(labels)


def _colony_blobs(rng: np.random.Generator, shape: tuple[int, int], n_cells: int, scale: float) -> list[_Blob]:
    """One irregular, elongated blob per cell, its seed clustered into colonies (some loners)."""
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
    return blobs


def _star_voronoi(blobs: list[_Blob], shape: tuple[int, int], spacing: np.ndarray) -> np.ndarray:
    """A weighted Voronoi of the star-shaped regions: every pixel to the blob of smallest
    normalised radius (an exact partition; 0 where no blob reaches)."""
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
    return raw


def _largest_pieces(raw: np.ndarray, shape: tuple[int, int], scale: float) -> np.ndarray:
    """The largest piece of each cell of ``raw``, tiny cells dropped, relabelled 1..N."""
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
    return labels


def _borders(labels: np.ndarray) -> np.ndarray:
    """Pixels next to another label or the background (4-connected)."""
    border = np.zeros(labels.shape, dtype=bool)
    for ax in range(2):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[ax], b[ax] = slice(1, None), slice(None, -1)
        diff = labels[tuple(a)] != labels[tuple(b)]
        border[tuple(a)] |= diff
        border[tuple(b)] |= diff
    return border


def _phase_map(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """The cells' optical path: a dome height per cell (thin rim, thicker nucleus) times a granular
    cytoplasm texture, slightly blurred."""
    shape = labels.shape
    fg = labels > 0
    dist = ndi.distance_transform_edt(fg & ~_borders(labels))
    smooth = np.zeros(shape)  # 1 inside nuclei: no cytoplasmic granules there
    height = np.tanh(dist / 4.0) * 0.4 + np.tanh(dist / 18.0) * 0.6
    _add_nuclei(rng, labels, dist, height, smooth)
    granules = _spots(rng, shape, 0.01, 1.2)
    texture = 1.0 + (1.0 - smooth) * (0.12 * _bandpass(rng, shape, 1.2, 4.0) + 0.6 * granules)
    return ndi.gaussian_filter(height * np.clip(texture, 0.3, None) * fg, 1.0)


def _add_nuclei(rng: np.random.Generator, labels: np.ndarray, dist: np.ndarray, height: np.ndarray,
                smooth: np.ndarray) -> None:
    """A thicker nucleus inside each cell, between the centroid and the cell's deepest point:
    added to ``height``, and marked in ``smooth`` (in place)."""
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


def _phase_contrast(rng: np.random.Generator, phase: np.ndarray) -> np.ndarray:
    """The camera image of ``phase``: the phase-contrast transfer as a high-pass (halo /
    shade-off) plus a little absolute darkening, faint debris, slight blur, uneven illumination
    and camera noise."""
    shape = phase.shape
    low = ndi.gaussian_filter(phase, 7.0)
    contrast = 1.0 - 1.6 * (phase - low) - 0.35 * phase
    debris = 0.02 * _bandpass(rng, shape, 1.5, 20.0) + 0.1 * _spots(rng, shape, 0.0004, 1.5)
    contrast = ndi.gaussian_filter(contrast + debris, 0.8)
    photons = 1500.0 * np.clip(contrast, 0.05, None) * _smooth_field(rng, shape, 0.15)
    return _camera(rng, photons, gain=1.0, offset=100.0, read_noise=4.0)
