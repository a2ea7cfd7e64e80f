"""Fitting: Levenberg-Marquardt with analytic Jacobians, priors, adaptive moments, PSF fits."""

import numpy as np

from .gmix import GMix, model_and_derivs, moments_to_gT, profile_mixture

# Flag bits (combined with bitwise OR).
FLAG_PSF_FAILED = 1          # PSF fit failed for some epoch
FLAG_NO_EPOCHS = 2           # no usable epoch
FLAG_METACAL_FAILED = 4      # the sheared images could not be made
FLAG_FIT_FAILED = 8          # the model fit did not converge after every retry
FLAG_SHAPE_RANGE = 16        # |g| >= 1 or T not finite at the end
FLAG_COV_FAILED = 32         # parameter covariance singular or not positive
FLAG_ADMOM_FAILED = 64       # adaptive moments did not converge (guess fell back)

PARAM_NAMES = ("u0", "v0", "g1", "g2", "T", "flux")


class Priors:
    """Priors of the galaxy fit, applied as extra least-squares residuals (-2 ln p).

    Parameters
    ----------
    g_sigma : float or None
        Width of the shape prior ``p(g) ~ (1 - g^2)^2 exp(-g^2 / 2 sigma^2)`` (None = flat
        in the unit disc).
    cen_sigma : float or None
        Width (arcsec) of the Gaussian prior on the centre offsets (None = flat).
    T_range : (float, float)
        Flat prior on T (arcsec^2); steps outside are rejected.
    flux_range : (float, float)
        Flat prior on the flux.
    """

    def __init__(self, g_sigma=0.3, cen_sigma=0.2, T_range=(-1.0, 1e4),
                 flux_range=(-1e12, 1e12)):
        self.g_sigma = g_sigma
        self.cen_sigma = cen_sigma
        self.T_range = T_range
        self.flux_range = flux_range

    @property
    def n_rows(self):
        return (2 if self.g_sigma else 0) + (2 if self.cen_sigma else 0)

    def allowed(self, x):
        gsq = x[2] * x[2] + x[3] * x[3]
        return (gsq < 1.0 and self.T_range[0] <= x[4] <= self.T_range[1]
                and self.flux_range[0] <= x[5] <= self.flux_range[1])

    def rows(self, x):
        """Residuals and their derivatives ``(n_rows,), (6, n_rows)``."""
        r = np.zeros(self.n_rows)
        d = np.zeros((6, self.n_rows))
        k = 0
        if self.cen_sigma:
            r[0] = x[0] / self.cen_sigma
            r[1] = x[1] / self.cen_sigma
            d[0, 0] = d[1, 1] = 1.0 / self.cen_sigma
            k = 2
        if self.g_sigma:
            g1, g2 = x[2], x[3]
            s = g1 * g1 + g2 * g2
            # -2 ln p = s / sigma^2 - 4 ln(1 - s) = s * f(s)^2 with f^2 = 1/sigma^2 + 4 L(s),
            # L(s) = -ln(1 - s) / s (-> 1 at 0); residuals g_i f(s) keep it smooth at g = 0.
            if s < 1e-4:
                L = 1.0 + s / 2 + s * s / 3
                dL = 0.5 + 2 * s / 3 + 0.75 * s * s
            else:
                L = -np.log1p(-s) / s
                dL = (s / (1 - s) + np.log1p(-s)) / (s * s)
            f = np.sqrt(1.0 / self.g_sigma ** 2 + 4.0 * L)
            df = 2.0 * dL / f          # d f / d s
            r[k] = g1 * f
            r[k + 1] = g2 * f
            d[2, k] = f + g1 * df * 2 * g1
            d[3, k] = g1 * df * 2 * g2
            d[2, k + 1] = g2 * df * 2 * g1
            d[3, k + 1] = f + g2 * df * 2 * g2
        return r, d


NO_PRIORS = Priors(g_sigma=None, cen_sigma=None, T_range=(-np.inf, np.inf),
                   flux_range=(-np.inf, np.inf))


def levenberg_marquardt(func, x0, allowed=None, maxiter=200, ftol=1e-11):
    """Minimise ``sum(r**2)`` with Levenberg-Marquardt (Marquardt's diagonal scaling).

    Parameters
    ----------
    func : callable
        ``func(x) -> (r, J)`` with residuals ``r`` (m,) and Jacobian ``J`` (n_par, m), or
        ``(None, None)`` where the model is undefined (the step is rejected).
    x0 : array_like
        Starting point.
    allowed : callable, optional
        ``allowed(x) -> bool``; steps to disallowed points are rejected.
    maxiter : int
        Maximum number of model evaluations.
    ftol : float
        Converged when an accepted step lowers chi^2 by less than ``ftol * chi^2``.

    Returns
    -------
    dict
        ``x``, ``chi2``, ``JTJ`` (normal matrix at the solution), ``nfev``, ``converged``.
    """
    x = np.array(x0, dtype=float)
    r, J = func(x)
    if r is None:
        return {"x": x, "chi2": np.inf, "JTJ": None, "nfev": 1, "converged": False}
    chi2 = float(r @ r)
    A = J @ J.T
    grad = J @ r
    lam = 1e-3
    nfev = 1
    converged = False
    while nfev < maxiter:
        diag = np.diag(A).copy()
        diag[diag <= 0] = 1e-30
        try:
            step = np.linalg.solve(A + lam * np.diag(diag), -grad)
        except np.linalg.LinAlgError:
            lam *= 10.0
            if lam > 1e12:
                break
            continue
        xn = x + step
        if allowed is not None and not allowed(xn):
            lam *= 10.0
            if lam > 1e12:
                break
            continue
        rn, Jn = func(xn)
        nfev += 1
        if rn is None:
            lam *= 10.0
            if lam > 1e12:
                break
            continue
        chi2n = float(rn @ rn)
        if chi2n <= chi2:
            small = (chi2 - chi2n) <= ftol * chi2 + 1e-300
            x, r, J, chi2 = xn, rn, Jn, chi2n
            A = J @ J.T
            grad = J @ r
            lam = max(lam * 0.1, 1e-15)
            if small:
                converged = True
                break
        else:
            lam *= 10.0
            if lam > 1e12:
                # No downhill step: we are at the minimum to machine precision if the
                # gradient is negligible.
                converged = bool(np.all(np.abs(grad) <= 1e-8 * (np.sqrt(chi2) + 1e-30)
                                        * np.sqrt(np.maximum(np.diag(A), 1e-300))))
                break
    return {"x": x, "chi2": chi2, "JTJ": A, "nfev": nfev, "converged": converged}


class PixelSet:
    """Good pixels of a list of observations, concatenated for joint (multi-epoch) fits.

    Parameters
    ----------
    obs_list : list of Observation
    weight_factor : float
        Multiplies every weight (0.5 for metacal images with the noise correction, whose
        variance is doubled).
    """

    def __init__(self, obs_list, weight_factor=1.0):
        us, vs, ds, ws, areas, self.slices = [], [], [], [], [], []
        start = 0
        for obs in obs_list:
            u, v, d, w, area = obs.pixels()
            us.append(u)
            vs.append(v)
            ds.append(d)
            ws.append(w)
            areas.append(np.full(u.size, area))
            good = (obs.weight > 0).ravel()
            self.slices.append((slice(start, start + u.size), good))
            start += u.size
        self.u = np.concatenate(us)
        self.v = np.concatenate(vs)
        self.data = np.concatenate(ds)
        self.weight = np.concatenate(ws) * weight_factor
        self.sqrtw = np.sqrt(self.weight)
        area = np.concatenate(areas)
        self.area = area[0] if np.all(area == area[0]) else area
        self.n_epoch = len(obs_list)

    def data_from_images(self, images):
        """Flat good-pixel data from a list of per-epoch images (same order as obs_list)."""
        return np.concatenate([np.asarray(im).ravel()[good] for im, (_, good)
                               in zip(images, self.slices)])


def fit_gmix_model(pixels, psf, model="gauss", guess=None, priors=None, data=None,
                   rng=None, n_retry=3, maxiter=200):
    """Fit a PSF-convolved galaxy model jointly to every pixel of a :class:`PixelSet`.

    Parameters
    ----------
    pixels : PixelSet
        Pixels (sky coordinates, weights) of every epoch.
    psf : GMix or list of GMix
        PSF mixture in sky units: one for every epoch (the metacal reconvolution PSF), or
        one per epoch (fits of the original images, e.g. from :func:`fit_psf_em`).
    model : str
        ``gauss``, ``exp`` or ``dev``.
    guess : array_like
        Starting ``(u0, v0, g1, g2, T, flux)``.
    priors : Priors, optional
        Default ``Priors()``; :data:`NO_PRIORS` for a pure maximum-likelihood fit.
    data : numpy.ndarray, optional
        Pixel values replacing ``pixels.data`` (the sheared images of metacal).
    rng : numpy.random.Generator, optional
        Perturbs the guess for retries after a failure (deterministic per object).
    n_retry : int
        Number of perturbed restarts after a failed fit.

    Returns
    -------
    dict
        ``pars`` (6,), ``pars_cov`` (6, 6), ``flags``, ``chi2``, ``nfev``, ``ntry``, ``s2n``
        (model-weighted S/N ``sum(w m d) / sqrt(sum(w m^2))``).
    """
    if priors is None:
        priors = Priors()
    p, f = profile_mixture(model)
    d = pixels.data if data is None else data
    sw = pixels.sqrtw
    wd = d * sw
    u, v, area = pixels.u, pixels.v, pixels.area
    n_prior = priors.n_rows
    per_epoch = isinstance(psf, (list, tuple))
    if per_epoch:
        if len(psf) != pixels.n_epoch:
            raise ValueError(f"{len(psf)} PSF mixtures for {pixels.n_epoch} epochs")
        parts = [(sl, area[sl] if np.ndim(area) else area) for sl, _ in pixels.slices]

    def render(x, want_derivs=True):
        if not per_epoch:
            return model_and_derivs(x, u, v, area, p, f, psf, want_derivs)
        ms, ds = [], []
        for (sl, ar), pe in zip(parts, psf):
            m, dm, ok = model_and_derivs(x, u[sl], v[sl], ar, p, f, pe, want_derivs)
            if not ok:
                return None, None, False
            ms.append(m)
            ds.append(dm)
        return (np.concatenate(ms), np.concatenate(ds, axis=1) if want_derivs else None,
                True)

    def func(x):
        m, dm, ok = render(x)
        if not ok:
            return None, None
        r = m * sw - wd
        jac = dm * sw
        if n_prior:
            pr, pd = priors.rows(x)
            r = np.concatenate([r, pr])
            jac = np.concatenate([jac, pd], axis=1)
        return r, jac

    x0 = np.array(guess, dtype=float)
    res = None
    ntry = 0
    for ntry in range(1, n_retry + 2):
        start = x0
        if ntry > 1:
            if rng is None:
                rng = np.random.default_rng(12345)
            start = x0 + np.array([0.02, 0.02, 0.05, 0.05, 0.0, 0.0]) * rng.uniform(-1, 1, 6)
            start[4] = x0[4] * (1 + 0.2 * rng.uniform(-1, 1))
            start[5] = x0[5] * (1 + 0.2 * rng.uniform(-1, 1))
            gsq = start[2] ** 2 + start[3] ** 2
            if gsq >= 0.9:
                start[2:4] *= 0.5 / np.sqrt(gsq)
        if not priors.allowed(start):
            start = np.array([0.0, 0.0, 0.0, 0.0, max(start[4], 0.01), start[5]])
        res = levenberg_marquardt(func, start, allowed=priors.allowed, maxiter=maxiter)
        if res["converged"]:
            break
    out = {"pars": res["x"], "chi2": res["chi2"], "nfev": res["nfev"], "ntry": ntry, "flags": 0}
    if not res["converged"]:
        out["flags"] |= FLAG_FIT_FAILED
    x = res["x"]
    if not (np.all(np.isfinite(x)) and x[2] ** 2 + x[3] ** 2 < 1.0):
        out["flags"] |= FLAG_SHAPE_RANGE
    cov = np.full((6, 6), np.nan)
    if res["JTJ"] is not None:
        try:
            cov = np.linalg.inv(res["JTJ"])
            if not np.all(np.diag(cov) > 0):
                out["flags"] |= FLAG_COV_FAILED
        except np.linalg.LinAlgError:
            out["flags"] |= FLAG_COV_FAILED
    else:
        out["flags"] |= FLAG_COV_FAILED
    out["pars_cov"] = cov
    m, _, ok = render(x, want_derivs=False)
    if ok:
        wm = pixels.weight * m
        den = np.sqrt(np.sum(wm * m))
        out["s2n"] = float(np.sum(wm * d) / den) if den > 0 else np.nan
    else:
        out["s2n"] = np.nan
    return out


def adaptive_moments(image, jacobian, weight=None, guess_T=None, maxiter=100, tol=1e-8):
    """Adaptive (Gaussian-weighted, self-consistent) moments of an image, in sky units.

    The elliptical Gaussian weight is iterated to twice the weighted second moments, its
    fixed point being the best-fitting elliptical Gaussian; the centroid moves to the
    weighted mean.

    Parameters
    ----------
    image : numpy.ndarray
    jacobian : Jacobian
        Pixel -> sky map; its reference point is the starting centre.
    weight : numpy.ndarray, optional
        Pixels with weight 0 are ignored.
    guess_T : float, optional
        Starting size (default: 4 pixel areas).

    Returns
    -------
    dict
        ``u0, v0, Iuu, Ivv, Iuv, g1, g2, T, flux, flags, niter``.
    """
    ny, nx = image.shape
    y, x = np.mgrid[0:ny, 0:nx]
    u, v = jacobian.uv(x.ravel(), y.ravel())
    im = image.ravel()
    if weight is not None:
        good = weight.ravel() > 0
        u, v, im = u[good], v[good], im[good]
    T = guess_T if guess_T is not None else 4.0 * jacobian.det
    muu = mvv = 0.5 * T
    muv = 0.0
    u0 = v0 = 0.0
    flags = 0
    it = 0
    for it in range(1, maxiter + 1):  # noqa: B007 (it is reported)
        det = muu * mvv - muv * muv
        if det <= 0 or muu <= 0:
            flags = FLAG_ADMOM_FAILED
            break
        du = u - u0
        dv = v - v0
        chi2 = (mvv * du * du - 2 * muv * du * dv + muu * dv * dv) / det
        wi = np.exp(-0.5 * chi2) * im
        s = wi.sum()
        if not np.isfinite(s) or s <= 0:
            flags = FLAG_ADMOM_FAILED
            break
        mu = (wi * du).sum() / s
        mv = (wi * dv).sum() / s
        quu = (wi * du * du).sum() / s - mu * mu
        qvv = (wi * dv * dv).sum() / s - mv * mv
        quv = (wi * du * dv).sum() / s - mu * mv
        nuu, nvv, nuv = 2 * quu, 2 * qvv, 2 * quv
        u0 += mu
        v0 += mv
        change = abs(nuu - muu) + abs(nvv - mvv) + abs(nuv - muv)
        muu, mvv, muv = nuu, nvv, nuv
        if change < tol * (muu + mvv) and abs(mu) + abs(mv) < tol * np.sqrt(muu + mvv):
            break
    else:
        flags = FLAG_ADMOM_FAILED
    g1, g2, T = moments_to_gT(muu, mvv, muv)
    flux = 2.0 * s if flags == 0 else np.nan
    return {"u0": u0, "v0": v0, "Iuu": muu, "Ivv": mvv, "Iuv": muv, "g1": float(g1),
            "g2": float(g2), "T": float(T), "flux": float(flux), "flags": flags, "niter": it}


def fit_psf_gauss(psf_image, jacobian):
    """Least-squares fit of one elliptical Gaussian to a (noiseless) PSF image.

    Returns
    -------
    dict
        ``gmix`` (GMix centred at the origin), ``g1, g2, T, flags``.
    """
    # Only a starting point for the least-squares fit: a loose tolerance is enough.
    am = adaptive_moments(psf_image, jacobian, tol=1e-5)
    obs_u, obs_v = _grid_uv(psf_image.shape, jacobian)
    data = psf_image.ravel()
    # Uniform weights: the PSF model is noiseless; the scale only sets the chi^2 units.
    sw = np.full(data.size, 1.0 / max(np.abs(data).max(), 1e-30))
    delta = GMix(1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    p, f = profile_mixture("gauss")
    if am["flags"]:
        guess = np.array([0.0, 0.0, 0.0, 0.0, 4.0 * jacobian.det, data.sum()])
    else:
        guess = np.array([am["u0"], am["v0"], am["g1"], am["g2"], am["T"], data.sum()])

    def func(x):
        m, dm, ok = model_and_derivs(x, obs_u, obs_v, jacobian.det, p, f, delta)
        if not ok:
            return None, None
        return (m - data) * sw, dm * sw

    res = levenberg_marquardt(func, guess, allowed=lambda x: x[2] ** 2 + x[3] ** 2 < 1
                              and x[4] > 0)
    x = res["x"]
    flags = 0 if res["converged"] and x[4] > 0 else FLAG_PSF_FAILED
    from .gmix import gT_to_moments
    cuu, cvv, cuv = gT_to_moments(x[2], x[3], x[4])
    return {"gmix": GMix(1.0, 0.0, 0.0, cuu, cvv, cuv), "g1": float(x[2]), "g2": float(x[3]),
            "T": float(x[4]), "u0": float(x[0]), "v0": float(x[1]), "flags": flags}


def fit_psf_em(psf_image, jacobian, n_gauss=3, maxiter=500, tol=1e-9):
    """Fit a mixture of ``n_gauss`` free Gaussians to a PSF image by expectation-maximisation.

    Pixel values are treated as weights of a sample at the pixel centres (negative values
    clipped to zero).

    Returns
    -------
    dict
        ``gmix`` (GMix, flux normalised to 1, centres relative to the mixture centroid),
        ``g1, g2, T`` of the mixture, ``flags``, ``niter``.
    """
    u, v = _grid_uv(psf_image.shape, jacobian)
    wpix = np.clip(psf_image.ravel(), 0, None)
    wpix = wpix / wpix.sum()
    am = adaptive_moments(psf_image, jacobian)
    if am["flags"]:
        base = (2.0 * jacobian.det, 2.0 * jacobian.det, 0.0)
        cu, cv = 0.0, 0.0
    else:
        base = (am["Iuu"], am["Ivv"], am["Iuv"])
        cu, cv = am["u0"], am["v0"]
    scales = np.geomspace(0.5, 3.0, n_gauss) if n_gauss > 1 else np.ones(1)
    pi = np.full(n_gauss, 1.0 / n_gauss)
    mu_u = np.full(n_gauss, cu)
    mu_v = np.full(n_gauss, cv)
    cuu = base[0] * scales
    cvv = base[1] * scales
    cuv = base[2] * scales
    floor = 1e-4 * jacobian.det
    loglike_old = -np.inf
    flags = FLAG_PSF_FAILED
    it = 0
    for it in range(1, maxiter + 1):  # noqa: B007 (it is reported)
        det = cuu * cvv - cuv * cuv
        du = u[None, :] - mu_u[:, None]
        dv = v[None, :] - mu_v[:, None]
        chi2 = (cvv[:, None] * du * du - 2 * cuv[:, None] * du * dv
                + cuu[:, None] * dv * dv) / det[:, None]
        dens = (pi / (2 * np.pi * np.sqrt(det)))[:, None] * np.exp(-0.5 * chi2)
        tot = dens.sum(axis=0) + 1e-300
        loglike = np.sum(wpix * np.log(tot))
        resp = dens / tot * wpix[None, :]
        nk = resp.sum(axis=1) + 1e-300
        pi = nk / nk.sum()
        mu_u = (resp * u).sum(axis=1) / nk
        mu_v = (resp * v).sum(axis=1) / nk
        du = u[None, :] - mu_u[:, None]
        dv = v[None, :] - mu_v[:, None]
        cuu = (resp * du * du).sum(axis=1) / nk + floor
        cvv = (resp * dv * dv).sum(axis=1) / nk + floor
        cuv = (resp * du * dv).sum(axis=1) / nk
        if abs(loglike - loglike_old) < tol * abs(loglike):
            flags = 0
            break
        loglike_old = loglike
    gm = GMix(pi, mu_u, mu_v, cuu, cvv, cuv)
    uc, vc, iuu, ivv, iuv = gm.moments()
    gm = GMix(pi, mu_u - uc, mu_v - vc, cuu, cvv, cuv)
    g1, g2, T = moments_to_gT(iuu, ivv, iuv)
    return {"gmix": gm, "g1": float(g1), "g2": float(g2), "T": float(T), "u0": float(uc),
            "v0": float(vc), "flags": flags, "niter": it}


def _grid_uv(shape, jacobian):
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    return jacobian.uv(x.ravel(), y.ravel())
