"""Gaussian mixtures: shapes, galaxy profile approximations, rendering and analytic derivatives.

Conventions (as in ngmix): sky coordinates ``(u, v)`` in arcsec, obtained from pixel
coordinates through the local affine :class:`~shapepipe.modules.ngmix.observation.Jacobian`.
A shape is the reduced-shear ellipticity ``g = (1 - q) / (1 + q)``; the size ``T`` is
``Iuu + Ivv`` (``2 sigma**2`` for a round Gaussian). A component with shape ``g`` and size
``T`` has covariance ``T / 2 * [[1 + e1, e2], [e2, 1 - e1]]`` with the distortion
``e = 2 g / (1 + |g|**2)``. Models are evaluated at pixel centres: the PSF already contains
the pixel response.
"""

import numpy as np

# Galaxy profiles as concentric Gaussian mixtures: (amplitudes p_i, variance factors f_i) of
# the radial profile, normalised so that sum(p) = 1 and sum(p * f) = 1, i.e. the parameter T
# is the second-moment size of the whole mixture. The coefficients are produced by
# ``profile_mixture(name)`` (a least-squares fit of the 2-D profile done by this package,
# see ``fit_profile_mixture``) and cached at first use.
_PROFILE_CACHE = {}

MODELS = ("gauss", "exp", "dev")


def g_to_e(g1, g2):
    """Reduced-shear ellipticity g -> distortion e (same orientation)."""
    gsq = g1 * g1 + g2 * g2
    fac = 2.0 / (1.0 + gsq)
    return g1 * fac, g2 * fac


def e_to_g(e1, e2):
    """Distortion e -> reduced-shear ellipticity g; NaN where |e| >= 1."""
    e1 = np.asarray(e1, dtype=float)
    e2 = np.asarray(e2, dtype=float)
    esq = e1 * e1 + e2 * e2
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.sqrt(esq)
        g = np.where(esq < 1.0, np.where(e > 0, (1.0 - np.sqrt(np.clip(1.0 - esq, 0, None)))
                                          / np.where(e > 0, e, 1.0), 0.0), np.nan)
        fac = np.where(e > 0, g / np.where(e > 0, e, 1.0), 1.0)
    return e1 * fac, e2 * fac


def moments_to_gT(cuu, cvv, cuv):
    """Covariance (Iuu, Ivv, Iuv) -> (g1, g2, T)."""
    T = cuu + cvv
    with np.errstate(invalid="ignore", divide="ignore"):
        e1 = (cuu - cvv) / T
        e2 = 2.0 * cuv / T
    g1, g2 = e_to_g(e1, e2)
    return g1, g2, T


def gT_to_moments(g1, g2, T):
    """(g1, g2, T) -> covariance (Iuu, Ivv, Iuv)."""
    e1, e2 = g_to_e(g1, g2)
    half = 0.5 * T
    return half * (1.0 + e1), half * (1.0 - e1), half * e2


def round_T(g1, g2, T):
    """Size of the shape made round with its determinant (area) kept: ``T (1-g^2)/(1+g^2)``.

    A component with reduced-shear shape ``g`` and size ``T`` has covariance determinant
    ``(T/2)^2 (1 - e^2)`` with ``sqrt(1 - e^2) = (1 - g^2) / (1 + g^2)``; the round
    component of the same determinant has ``T_r = T sqrt(1 - e^2)``. NaN where ``|g| >= 1``.
    """
    gsq = np.asarray(g1, dtype=float) ** 2 + np.asarray(g2, dtype=float) ** 2
    with np.errstate(invalid="ignore"):
        return np.where(gsq < 1.0, T * (1.0 - gsq) / (1.0 + gsq), np.nan)


def _sersic_profile(r, n):
    """Unnormalised Sersic profile with unit half-light radius (b_n from the gamma function)."""
    from scipy.special import gammaincinv

    b = gammaincinv(2.0 * n, 0.5)
    return np.exp(-b * r ** (1.0 / n))


def fit_profile_mixture(n_sersic, n_gauss, r_max=None):
    """Fit a concentric Gaussian mixture to a circular Sersic profile (2-D, flux-weighted).

    The fit minimises the squared relative difference of the two surface-brightness
    profiles weighted by the flux in each annulus (``2 pi r dr I(r)``), on a logarithmic
    radius grid, with positive amplitudes and variances (fitted in log space).

    Parameters
    ----------
    n_sersic : float
        Sersic index (1 exponential, 4 de Vaucouleurs).
    n_gauss : int
        Number of Gaussians.
    r_max : float, optional
        Outer radius of the fit, in half-light radii (default 8 for n=1, 12 for n=4).

    Returns
    -------
    p, f : numpy.ndarray
        Amplitudes (sum 1) and variance factors (sum(p f) = 1), sorted by f.
    """
    from scipy.optimize import least_squares

    if r_max is None:
        r_max = 8.0 if n_sersic < 2 else 12.0
    r = np.geomspace(1e-3, r_max, 400)
    prof = _sersic_profile(r, n_sersic)
    dr = np.gradient(r)
    norm = np.sum(prof * 2 * np.pi * r * dr)
    prof = prof / norm
    wts = np.sqrt(2 * np.pi * r * dr * prof)
    # Start from variances spread geometrically over the profile's range.
    var0 = np.geomspace(1e-3, 2.0, n_gauss) * (1.0 if n_sersic < 2 else 3.0)
    amp0 = np.full(n_gauss, 1.0 / n_gauss)
    x0 = np.concatenate([np.log(amp0), np.log(var0)])

    def model(x):
        amp = np.exp(x[:n_gauss])
        var = np.exp(x[n_gauss:])
        return (amp[None, :] / (2 * np.pi * var[None, :])
                * np.exp(-0.5 * r[:, None] ** 2 / var[None, :])).sum(axis=1)

    def resid(x):
        return (model(x) / prof - 1.0) * wts

    sol = least_squares(resid, x0, method="lm", xtol=1e-12, ftol=1e-12, max_nfev=20000)
    amp = np.exp(sol.x[:n_gauss])
    var = np.exp(sol.x[n_gauss:])
    order = np.argsort(var)
    amp, var = amp[order], var[order]
    # Component i has covariance var_i * I: its T is 2 var_i.
    p = amp / amp.sum()
    t_comp = 2.0 * var
    t_tot = np.sum(p * t_comp)
    return p, t_comp / t_tot


def profile_mixture(model):
    """Amplitudes and variance factors ``(p, f)`` of a galaxy model (cached).

    ``gauss`` is one Gaussian; ``exp`` a 6-Gaussian and ``dev`` a 8-Gaussian fit of the
    Sersic n=1 and n=4 profiles made by :func:`fit_profile_mixture` at first use.
    """
    if model not in MODELS:
        raise ValueError(f"unknown galaxy model {model!r}: expected one of {', '.join(MODELS)}")
    if model not in _PROFILE_CACHE:
        if model == "gauss":
            _PROFILE_CACHE[model] = (np.ones(1), np.ones(1))
        elif model == "exp":
            _PROFILE_CACHE[model] = fit_profile_mixture(1.0, 6)
        else:
            _PROFILE_CACHE[model] = fit_profile_mixture(4.0, 8)
    return _PROFILE_CACHE[model]


class GMix:
    """A Gaussian mixture in sky coordinates: arrays of flux, centre and covariance.

    Parameters
    ----------
    flux, u, v, cuu, cvv, cuv : array_like
        One entry per component.
    """

    def __init__(self, flux, u, v, cuu, cvv, cuv):
        self.flux = np.atleast_1d(np.asarray(flux, dtype=float))
        self.u = np.atleast_1d(np.asarray(u, dtype=float))
        self.v = np.atleast_1d(np.asarray(v, dtype=float))
        self.cuu = np.atleast_1d(np.asarray(cuu, dtype=float))
        self.cvv = np.atleast_1d(np.asarray(cvv, dtype=float))
        self.cuv = np.atleast_1d(np.asarray(cuv, dtype=float))

    def __len__(self):
        return self.flux.size

    @classmethod
    def round_gauss(cls, T, flux=1.0):
        """A single round Gaussian of size T centred at the origin."""
        return cls(flux, 0.0, 0.0, 0.5 * T, 0.5 * T, 0.0)

    def make_round(self):
        """The mixture with every component made round, its determinant kept.

        Each covariance becomes ``sqrt(det C) * I`` (centres and fluxes unchanged): the area
        of each component, hence its peak and its S/N contribution at fixed flux, is kept
        while its orientation is removed.
        """
        det = self.cuu * self.cvv - self.cuv ** 2
        if np.any(det <= 0):
            raise ValueError("cannot make round a mixture with a non-positive covariance")
        c = np.sqrt(det)
        return GMix(self.flux, self.u, self.v, c, c, np.zeros_like(c))

    def total_flux(self):
        return float(self.flux.sum())

    def moments(self):
        """Centroid and second moments ``(u, v, Iuu, Ivv, Iuv)`` of the whole mixture."""
        f = self.flux / self.flux.sum()
        u = np.sum(f * self.u)
        v = np.sum(f * self.v)
        cuu = np.sum(f * (self.cuu + (self.u - u) ** 2))
        cvv = np.sum(f * (self.cvv + (self.v - v) ** 2))
        cuv = np.sum(f * (self.cuv + (self.u - u) * (self.v - v)))
        return u, v, cuu, cvv, cuv

    def get_gT(self):
        """(g1, g2, T) of the mixture's second moments."""
        _, _, cuu, cvv, cuv = self.moments()
        return moments_to_gT(cuu, cvv, cuv)

    def render(self, u, v, area=1.0):
        """Surface brightness at sky positions times the pixel ``area`` (flux per pixel)."""
        out = np.zeros(np.broadcast(u, v).shape)
        for k in range(len(self)):
            det = self.cuu[k] * self.cvv[k] - self.cuv[k] ** 2
            du = u - self.u[k]
            dv = v - self.v[k]
            chi2 = (self.cvv[k] * du * du - 2 * self.cuv[k] * du * dv + self.cuu[k] * dv * dv) / det
            out += self.flux[k] / (2 * np.pi * np.sqrt(det)) * np.exp(-0.5 * chi2)
        return out * area


def model_and_derivs(params, u, v, area, p, f, psf, want_derivs=True):
    """Render a PSF-convolved galaxy model and its derivatives with respect to the parameters.

    Parameters
    ----------
    params : array_like
        ``(u0, v0, g1, g2, T, flux)``.
    u, v : numpy.ndarray
        Sky coordinates of the pixels (arcsec), 1-D.
    area : numpy.ndarray or float
        Pixel area in arcsec^2 (``|det J|``) per pixel.
    p, f : numpy.ndarray
        Profile mixture (amplitudes and variance factors).
    psf : GMix
        PSF mixture (its centres are offsets added to the galaxy centre).
    want_derivs : bool
        Return the ``(6, npix)`` derivative array as well.

    Returns
    -------
    model : numpy.ndarray
        Flux per pixel.
    derivs : numpy.ndarray or None
        ``d model / d params``.
    ok : bool
        False if some convolved component is not positive definite.
    """
    u0, v0, g1, g2, T, flux = params
    gsq = g1 * g1 + g2 * g2
    den = 1.0 + gsq
    e1 = 2.0 * g1 / den
    e2 = 2.0 * g2 / den
    # Component covariances: galaxy component i (scaled by f_i) + PSF component j.
    fi = f[:, None]
    cuu = (0.5 * T * (1.0 + e1)) * fi + psf.cuu[None, :]
    cvv = (0.5 * T * (1.0 - e1)) * fi + psf.cvv[None, :]
    cuv = (0.5 * T * e2) * fi + psf.cuv[None, :]
    det = cuu * cvv - cuv * cuv
    if np.any(det <= 0) or np.any(cuu <= 0) or np.any(cvv <= 0):
        return None, None, False
    amp = (p[:, None] * psf.flux[None, :] / psf.flux.sum()) / (2 * np.pi * np.sqrt(det))
    iuu = (cvv / det).ravel()
    ivv = (cuu / det).ravel()
    iuv = (-cuv / det).ravel()
    amp = amp.ravel()
    cu = (u0 + np.broadcast_to(psf.u[None, :], cuu.shape)).ravel()
    cv = (v0 + np.broadcast_to(psf.v[None, :], cuu.shape)).ravel()
    ncomp = amp.size
    if ncomp == 1:
        du = u - cu[0]
        dv = v - cv[0]
        wu = iuu[0] * du + iuv[0] * dv
        wv = iuv[0] * du + ivv[0] * dv
        unit = amp[0] * area * np.exp(-0.5 * (du * wu + dv * wv))
        g = flux * unit
        model = g
        if not want_derivs:
            return model, None, True
        a_uu = 0.5 * (wu * wu - iuu[0])
        a_vv = 0.5 * (wv * wv - ivv[0])
        a_uv = wu * wv - iuv[0]
        fsc = f[0]
        d_u0 = g * wu
        d_v0 = g * wv
        s_uu = g * a_uu * fsc
        s_vv = g * a_vv * fsc
        s_uv = g * a_uv * fsc
    else:
        du = u[None, :] - cu[:, None]
        dv = v[None, :] - cv[:, None]
        wu = iuu[:, None] * du + iuv[:, None] * dv
        wv = iuv[:, None] * du + ivv[:, None] * dv
        unit_c = amp[:, None] * area * np.exp(-0.5 * (du * wu + dv * wv))
        unit = unit_c.sum(axis=0)
        g = flux * unit_c
        model = flux * unit
        if not want_derivs:
            return model, None, True
        fsc = np.broadcast_to(fi, cuu.shape).ravel()[:, None]
        d_u0 = (g * wu).sum(axis=0)
        d_v0 = (g * wv).sum(axis=0)
        s_uu = (g * (0.5 * (wu * wu - iuu[:, None])) * fsc).sum(axis=0)
        s_vv = (g * (0.5 * (wv * wv - ivv[:, None])) * fsc).sum(axis=0)
        s_uv = (g * (wu * wv - iuv[:, None]) * fsc).sum(axis=0)
    # Chain rule from the galaxy covariance (per unit f) to (g1, g2, T).
    den2 = den * den
    de1_dg1 = 2.0 / den - 4.0 * g1 * g1 / den2
    de1_dg2 = -4.0 * g1 * g2 / den2
    de2_dg1 = de1_dg2
    de2_dg2 = 2.0 / den - 4.0 * g2 * g2 / den2
    half_t = 0.5 * T
    diff = s_uu - s_vv
    derivs = np.empty((6, model.size))
    derivs[0] = d_u0
    derivs[1] = d_v0
    derivs[2] = half_t * (de1_dg1 * diff + de2_dg1 * s_uv)
    derivs[3] = half_t * (de1_dg2 * diff + de2_dg2 * s_uv)
    derivs[4] = 0.5 * ((1.0 + e1) * s_uu + (1.0 - e1) * s_vv + e2 * s_uv)
    derivs[5] = unit
    return model, derivs, True
