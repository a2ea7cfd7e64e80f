"""SPREAD_MODEL and SPREADERR_MODEL of stamps, vectorised over objects.

Definition (SExtractor documentation; Desai et al. 2012, ApJ 757, 83; Mohr et al. 2012):
with ``p`` the object's pixels, ``W`` the diagonal inverse-variance weights, ``phi`` the local
PSF model and ``G`` the PSF convolved with a circular exponential of scale length FWHM/16
(FWHM of the PSF), both centred on the object and of unit flux::

    SPREAD_MODEL = (G^T W p) / (phi^T W p) - (G^T W phi) / (phi^T W phi)

It is ~0 for point sources and > 0 for extended ones. Its error propagates the pixel noise
(variance 1/W) through the first term, the only one that depends on the data::

    SPREADERR_MODEL = sqrt(sum_i W_i (G_i (phi^T W p) - phi_i (G^T W p))^2) / (phi^T W p)^2

Models are built in Fourier space: the PSF stamp (centred on its central pixel) is shifted to
the object's sub-pixel position by a phase ramp, and convolved with the exponential through
its exact transform ``(1 + (2 pi k h)^2)^(-3/2)`` (k in cycles/pixel, h the scale length).
"""

import numpy as np

#: No PSF for the object (empty or unreadable PSF store entry).
FLAG_NO_PSF = 1
#: No pixel with positive weight in the stamp.
FLAG_NO_PIXELS = 2
#: phi^T W p <= 0 (no flux under the PSF): the ratio is undefined.
FLAG_BAD_FIT = 4

#: Scale length of the exponential, in units of the PSF FWHM (SExtractor's choice).
EXP_SCALE_PER_FWHM = 1.0 / 16.0


def _embed(psf, size):
    """Put (n, P, P) stamps centred on pixel P//2 into (n, size, size) centred on size//2."""
    n, p, _ = psf.shape
    c, pc = size // 2, p // 2
    out = np.zeros((n, size, size))
    lo_src = max(pc - c, 0)
    lo_dst = max(c - pc, 0)
    w = min(p - lo_src, size - lo_dst)
    out[:, lo_dst:lo_dst + w, lo_dst:lo_dst + w] = psf[:, lo_src:lo_src + w, lo_src:lo_src + w]
    return out


def models(psf, dx, dy, fwhm, size):
    """PSF ``phi`` and galaxy model ``G`` on ``size`` x ``size`` stamps.

    Parameters
    ----------
    psf : numpy.ndarray
        ``(n, P, P)`` PSF stamps on the image pixel grid, centred on pixel ``P // 2``.
    dx, dy : numpy.ndarray
        ``(n,)`` object positions (0-based) inside the output stamps.
    fwhm : numpy.ndarray
        ``(n,)`` PSF FWHM in pixels (sets the exponential's scale length FWHM/16).
    size : int
        Output stamp side.

    Returns
    -------
    phi, G : numpy.ndarray
        ``(n, size, size)``, each normalised to unit sum.
    """
    psf = np.asarray(psf, dtype=float)
    a = _embed(psf, size)
    c = size // 2
    ky = np.fft.fftfreq(size)[None, :, None]
    kx = np.fft.rfftfreq(size)[None, None, :]
    sx = (np.asarray(dx, dtype=float) - c)[:, None, None]
    sy = (np.asarray(dy, dtype=float) - c)[:, None, None]
    f = np.fft.rfft2(a) * np.exp(-2j * np.pi * (kx * sx + ky * sy))
    h = (EXP_SCALE_PER_FWHM * np.asarray(fwhm, dtype=float))[:, None, None]
    transfer = (1.0 + (2.0 * np.pi * h) ** 2 * (kx ** 2 + ky ** 2)) ** -1.5
    phi = np.fft.irfft2(f, s=(size, size))
    gal = np.fft.irfft2(f * transfer, s=(size, size))
    for arr in (phi, gal):
        total = arr.sum(axis=(1, 2), keepdims=True)
        np.divide(arr, total, out=arr, where=np.abs(total) > 0)
    return phi, gal


def spread_model(pixels, weights, phi, gal):
    """SPREAD_MODEL, SPREADERR_MODEL and flags of stacks of stamps.

    Parameters
    ----------
    pixels : numpy.ndarray
        ``(n, S, S)`` background-subtracted object stamps.
    weights : numpy.ndarray
        ``(n, S, S)`` inverse-variance weights (0 = not used, e.g. masked pixels).
    phi, gal : numpy.ndarray
        ``(n, S, S)`` PSF and galaxy models (:func:`models`).

    Returns
    -------
    sm, sm_err : numpy.ndarray
        ``(n,)``; NaN where undefined.
    flags : numpy.ndarray of int16
        :data:`FLAG_NO_PIXELS`, :data:`FLAG_BAD_FIT`.
    """
    p = np.asarray(pixels, dtype=float)
    w = np.asarray(weights, dtype=float)
    axes = (1, 2)
    wp = w * p
    gwp = np.sum(gal * wp, axis=axes)
    pwp = np.sum(phi * wp, axis=axes)
    gwf = np.sum(gal * w * phi, axis=axes)
    fwf = np.sum(phi * w * phi, axis=axes)
    flags = np.zeros(len(p), dtype=np.int16)
    flags[~np.any(w > 0, axis=axes)] |= FLAG_NO_PIXELS
    flags[~(pwp > 0)] |= FLAG_BAD_FIT
    ok = flags == 0
    sm = np.full(len(p), np.nan)
    err = np.full(len(p), np.nan)
    if ok.any():
        b, a = pwp[ok, None, None], gwp[ok, None, None]
        sm[ok] = gwp[ok] / pwp[ok] - gwf[ok] / fwf[ok]
        resid = gal[ok] * b - phi[ok] * a
        err[ok] = np.sqrt(np.sum(w[ok] * resid ** 2, axis=axes)) / pwp[ok] ** 2
    return sm, err, flags
