"""Fluorescent nuclei, 2D (:func:`fluorescent_nuclei`) and 3D (:func:`nuclei_3d`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .blobs import _check, _random_blob
from .optics import _bandpass, _camera, _smooth_field, _spots
from .placement import _place_blobs


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
