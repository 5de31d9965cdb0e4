"""What a microscope and its camera add to a scene: uneven illumination, textures made of
band-passed noise and spots, and the camera's shot noise, gain, read noise and offset."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .blobs import _unit


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
