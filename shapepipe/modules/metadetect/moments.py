"""Gaussian-weighted moments of many detections on one image, in one vectorised pass.

The shape estimator of metadetection as DES Y6 used it ("wmom"): the second moments of the
pixels under a fixed round Gaussian weight centred on the detection, in sky coordinates
``(u, v)`` (arcsec, the local Jacobian of the image). The ellipticity is
``e = (M_uu - M_vv, 2 M_uv) / (M_uu + M_vv)``; it is not an unbiased shear estimator by
itself (its response is ~0.3-0.5), and metadetection measures that response on sheared
images, so no PSF correction enters.
"""

import numpy as np

#: The stamp reaches out to this many weight sigmas (the weight is 3e-4 of its peak there).
STAMP_SIGMAS = 4.0

FLAG_EDGE = 1  #: the stamp leaves the image
FLAG_MASKED = 2  #: a pixel of zero weight where the moment weight exceeds 1% of its peak
FLAG_MOMENTS = 4  #: non-positive flux, or second moments not positive definite


def stamp_radius(sigma_w, pixel_scale):
    """Half-size (pixels) of the stamps for a weight of sigma ``sigma_w`` arcsec."""
    return int(np.ceil(STAMP_SIGMAS * sigma_w / pixel_scale))


def weighted_moments(image, x, y, jac, sigma_w, variance=None, bad=None, radius=None):
    """Weighted flux, second moments and ellipticity of objects centred at ``(x, y)``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` image.
    x, y : array_like
        0-based numpy positions (column, row) of the weight centres.
    jac : array_like, shape (2, 2)
        ``[[du/dx, du/dy], [dv/dx, dv/dy]]`` (arcsec per pixel).
    sigma_w : float
        Sigma (arcsec) of the round Gaussian weight.
    variance : numpy.ndarray, optional
        ``(ny, nx)`` per-pixel noise variance, for the flux error (0 without).
    bad : numpy.ndarray of bool, optional
        ``(ny, nx)`` pixels without data (flagged when the weight is sizeable there).
    radius : int, optional
        Stamp half-size in pixels (default :func:`stamp_radius`).

    Returns
    -------
    dict of numpy.ndarray
        ``flux`` (sum of weight x pixel, weight peak 1), ``flux_err``, ``T_w`` (weighted
        ``M_uu + M_vv``, arcsec^2) and ``T_w_err``, ``T`` (the moments with the weight divided
        out, as for a Gaussian object: ``C = (C_w^-1 - 1/sigma_w^2)^-1``; inf when ``C_w`` is
        not smaller than the weight) and ``T_err`` (linear propagation of the pixel
        variances, the deweighting taken as round), ``e1``, ``e2``, ``flags``.
    """
    image = np.asarray(image, dtype=float)
    ny, nx = image.shape
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    jac = np.asarray(jac, dtype=float)
    pixel_scale = np.sqrt(abs(np.linalg.det(jac)))
    r = stamp_radius(sigma_w, pixel_scale) if radius is None else int(radius)
    off = np.arange(-r, r + 1)
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    flags = np.zeros(len(x), dtype=np.int32)
    edge = (ix - r < 0) | (ix + r >= nx) | (iy - r < 0) | (iy + r >= ny)
    flags[edge] |= FLAG_EDGE
    cols = np.clip(ix[:, None] + off[None, :], 0, nx - 1)                 # (n, s)
    rows = np.clip(iy[:, None] + off[None, :], 0, ny - 1)
    pix = image[rows[:, :, None], cols[:, None, :]]                        # (n, s, s)
    dx = (ix - x)[:, None] + off[None, :]                                  # (n, s)
    dy = (iy - y)[:, None] + off[None, :]
    u = jac[0, 0] * dx[:, None, :] + jac[0, 1] * dy[:, :, None]
    v = jac[1, 0] * dx[:, None, :] + jac[1, 1] * dy[:, :, None]
    w = np.exp(-0.5 * (u * u + v * v) / sigma_w ** 2)
    # Pixels clipped onto the edge are repeats, not data.
    inside = ((ix[:, None] + off[None, :] >= 0) & (ix[:, None] + off[None, :] < nx))[:, None, :] \
        & ((iy[:, None] + off[None, :] >= 0) & (iy[:, None] + off[None, :] < ny))[:, :, None]
    w = np.where(inside, w, 0.0)
    if bad is not None:
        b = np.asarray(bad, dtype=bool)[rows[:, :, None], cols[:, None, :]]
        flags[np.any(b & (w > 0.01), axis=(1, 2))] |= FLAG_MASKED
        w = np.where(b, 0.0, w)
    wi = w * pix
    flux = wi.sum(axis=(1, 2))
    muu = (wi * u * u).sum(axis=(1, 2))
    mvv = (wi * v * v).sum(axis=(1, 2))
    muv = (wi * u * v).sum(axis=(1, 2))
    tsum = muu + mvv
    if variance is not None:
        var = np.asarray(variance, dtype=float)[rows[:, :, None], cols[:, None, :]]
        flux_err = np.sqrt((w * w * var).sum(axis=(1, 2)))
        # T_w = sum(w r^2 I) / sum(w I) is a ratio of sums linear in the pixels:
        # dT_w/dI_p = w_p (r_p^2 - T_w) / F.
        with np.errstate(divide="ignore", invalid="ignore"):
            t_w0 = tsum / flux
            r2 = u * u + v * v
            t_w_err = np.sqrt((w * w * var * (r2 - t_w0[:, None, None]) ** 2)
                              .sum(axis=(1, 2))) / np.abs(flux)
    else:
        flux_err = np.zeros(len(x))
        t_w_err = np.zeros(len(x))
    # A weighted second-moment matrix that is not positive definite (noise, or a neighbour
    # under the weight) has |e| > 1: not a shape.
    good = (flux > 0) & (muu > 0) & (mvv > 0) & (muu * mvv - muv * muv > 0)
    flags[~good] |= FLAG_MOMENTS
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = np.where(good, (muu - mvv) / tsum, np.nan)
        e2 = np.where(good, 2.0 * muv / tsum, np.nan)
        cuu = np.where(good, muu / flux, np.nan)
        cvv = np.where(good, mvv / flux, np.nan)
        cuv = np.where(good, muv / flux, np.nan)
        t_w = cuu + cvv
        t_dw = _deweighted_trace(cuu, cvv, cuv, sigma_w)
        # Through the (round) deweighting T = 2 / (2 / T_w - 1 / sigma_w^2): dT/dT_w = (T/T_w)^2.
        t_err = np.where(np.isfinite(t_dw), t_w_err * (t_dw / t_w) ** 2, np.nan)
    return {"flux": flux, "flux_err": flux_err, "T_w": t_w, "T_w_err": t_w_err, "T": t_dw,
            "T_err": t_err, "e1": e1, "e2": e2, "flags": flags}


def _deweighted_trace(cuu, cvv, cuv, sigma_w):
    """Trace of ``(C_w^-1 - I / sigma_w^2)^-1``: the size of a Gaussian object, weight removed."""
    det = cuu * cvv - cuv * cuv
    with np.errstate(divide="ignore", invalid="ignore"):
        iuu = cvv / det - 1.0 / sigma_w ** 2
        ivv = cuu / det - 1.0 / sigma_w ** 2
        iuv = -cuv / det
        idet = iuu * ivv - iuv * iuv
        ok = (det > 0) & (iuu > 0) & (idet > 0)
        t = np.where(ok, (iuu + ivv) / idet, np.inf)
    return np.where(np.isfinite(cuu), t, np.nan)
