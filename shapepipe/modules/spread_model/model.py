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


def gaussian_log_profile(x, y, cov, flux):
    """Log of the light an elliptical Gaussian of total ``flux`` puts at pixels ``(x, y)``.

    Parameters
    ----------
    x, y : numpy.ndarray
        Pixel offsets from the profile's centre, broadcastable together (pixels).
    cov : tuple of numpy.ndarray
        ``(xx, yy, xy)`` second moments (pixels^2), broadcastable against ``x``.
    flux : numpy.ndarray
        Total flux, broadcastable against ``x``; <= 0 or NaN gives -inf (owns nothing).

    Returns
    -------
    numpy.ndarray
        ``log(flux) - log(2 pi sqrt(det)) - q / 2`` with ``q`` the Mahalanobis distance.
    """
    xx, yy, xy = cov
    det = xx * yy - xy ** 2
    q = (yy * x ** 2 - 2.0 * xy * x * y + xx * y ** 2) / det
    with np.errstate(divide="ignore", invalid="ignore"):
        logf = np.where(np.asarray(flux) > 0, np.log(np.where(np.asarray(flux) > 0, flux, 1.0)),
                        -np.inf)
    return logf - np.log(2.0 * np.pi * np.sqrt(det)) - 0.5 * q


def regularised_moments(xx, yy, xy, floor=0.25):
    """Second moments made positive definite: ``floor`` (pixels^2) added to the diagonal,
    the cross term clipped so that the determinant stays positive; NaN -> circular floor."""
    xx = np.where(np.isfinite(xx), np.maximum(xx, 0.0), 0.0) + floor
    yy = np.where(np.isfinite(yy), np.maximum(yy, 0.0), 0.0) + floor
    lim = 0.95 * np.sqrt(xx * yy)
    xy = np.clip(np.where(np.isfinite(xy), xy, 0.0), -lim, lim)
    return xx, yy, xy


def owned_pixels(size, dx, dy, own_cov, own_flux, nb_dx, nb_dy, nb_cov, nb_flux,
                 max_fraction=1.0):
    """Pixels of each stamp that the object owns against its neighbours.

    As SExtractor's deblending allocates the pixels of a blend, each object is modelled by
    an elliptical Gaussian with its flux and second moments, and a pixel belongs to the
    object whose model predicts the most light there (``max_fraction = 1``). The pixels a
    neighbour owns are excluded from the object's SPREAD_MODEL sums (SExtractor masks them
    in its fits). With ``max_fraction < 1`` an object keeps only the pixels where no
    neighbour's model reaches that fraction of its own: the pixels it owns but where a
    neighbour's light is still a sizeable part of the signal are left out too, since the
    symmetric PSF and galaxy models read that one-sided light as extent.

    Parameters
    ----------
    size : int
        Stamp side.
    dx, dy : numpy.ndarray
        ``(n,)`` object positions in their stamps (0-based pixels).
    own_cov : tuple of numpy.ndarray
        ``(xx, yy, xy)``, each ``(n,)``: the objects' second moments (pixels^2, positive
        definite: :func:`regularised_moments`).
    own_flux : numpy.ndarray
        ``(n,)``.
    nb_dx, nb_dy : numpy.ndarray
        ``(n, K)`` neighbour positions in the object's stamp; NaN where there is none.
    nb_cov : tuple of numpy.ndarray
        ``(xx, yy, xy)``, each ``(n, K)``.
    nb_flux : numpy.ndarray
        ``(n, K)``.
    max_fraction : float
        A pixel is kept where every neighbour's model is at most this fraction of the
        object's.

    Returns
    -------
    numpy.ndarray of bool
        ``(n, size, size)``: True where no neighbour's model exceeds ``max_fraction``
        times the object's.
    """
    grid = np.arange(size, dtype=float)
    gx = grid[None, None, :]
    gy = grid[None, :, None]

    def col(a):
        return np.asarray(a, dtype=float)[:, None, None]

    own = gaussian_log_profile(gx - col(dx), gy - col(dy), tuple(col(c) for c in own_cov),
                               col(own_flux))
    keep = np.ones(own.shape, dtype=bool)
    nb_dx = np.asarray(nb_dx, dtype=float)
    for k in range(nb_dx.shape[1]):
        has = np.isfinite(nb_dx[:, k])
        if not has.any():
            continue
        rows = np.flatnonzero(has)

        def sel(a, rows=rows, k=k):
            return np.asarray(a, dtype=float)[rows, k][:, None, None]

        other = gaussian_log_profile(gx - sel(nb_dx), gy - sel(nb_dy),
                                     tuple(sel(c) for c in nb_cov), sel(nb_flux))
        keep[rows] &= ~(other - np.log(max_fraction) > own[rows])
    return keep
