"""Fitting: Levenberg-Marquardt with analytic Jacobians, priors, adaptive moments, PSF fits."""

import numpy as np

from ._kernels import HAVE_KERNEL
from ._kernels import admom_sums as kernel_admom_sums
from ._kernels import normal_equations as kernel_normal_equations
from .gmix import GMix, model_and_derivs, moments_to_gT, profile_mixture, round_T

# Flag bits (combined with bitwise OR).
FLAG_PSF_FAILED = 1          # PSF fit failed for some epoch
FLAG_NO_EPOCHS = 2           # no usable epoch
FLAG_METACAL_FAILED = 4      # the sheared images could not be made
FLAG_FIT_FAILED = 8          # the model fit did not converge after every retry
FLAG_SHAPE_RANGE = 16        # |g| >= 1 or T not finite at the end
FLAG_COV_FAILED = 32         # parameter covariance singular or not positive
FLAG_ADMOM_FAILED = 64       # adaptive moments did not converge (guess fell back)
FLAG_MAX_GAIN = 128          # the deconvolution amplifies some frequency more than max_gain

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


def levenberg_marquardt(func, x0, allowed=None, maxiter=200, ftol=1e-11, newton_after=16):
    """Minimise ``sum(r**2)`` with Levenberg-Marquardt, finished by damped Newton steps.

    Gauss-Newton steps ignore the curvature of the model times the residuals; at low S/N
    that term is not small and, in the curved valleys of the (g, T) degeneracy of small
    galaxies, Levenberg-Marquardt creeps at a linear rate (hundreds of steps, or no
    convergence at all). A fit still running after ``newton_after`` evaluations switches
    to Newton steps on the full Hessian of chi^2 (forward differences of the analytic
    gradient ``2 J r``), which converge quadratically near the minimum.

    Parameters
    ----------
    func : callable
        ``func(x) -> (chi2, grad, A)``: ``chi2 = sum(r**2)``, ``grad = J r`` and the normal
        matrix ``A = J J^T`` for residuals ``r`` (m,) with Jacobian ``J`` (n_par, m)
        (:func:`normal_equations` makes them from ``r, J``), or None where the model is
        undefined (the step is rejected).
    x0 : array_like
        Starting point.
    allowed : callable, optional
        ``allowed(x) -> bool``; steps to disallowed points are rejected.
    maxiter : int
        Maximum number of model evaluations.
    ftol : float
        Converged when an accepted step lowers chi^2 by less than ``ftol * chi^2``.
    newton_after : int or None
        Evaluations of plain Levenberg-Marquardt before the Newton phase (None: never).

    Returns
    -------
    dict
        ``x``, ``chi2``, ``JTJ`` (normal matrix at the solution), ``nfev``, ``converged``.
    """
    x = np.array(x0, dtype=float)
    first = func(x)
    if first is None:
        return {"x": x, "chi2": np.inf, "JTJ": None, "nfev": 1, "converged": False}
    chi2, grad, A = first
    state = {"x": x, "chi2": float(chi2), "grad": grad, "A": A, "nfev": 1}
    lm_budget = maxiter if newton_after is None else min(maxiter, newton_after)
    converged = _damped_steps(func, state, allowed, lm_budget, ftol, newton=False)
    if not converged and newton_after is not None and state["nfev"] < maxiter:
        converged = _damped_steps(func, state, allowed, maxiter, ftol, newton=True)
    return {"x": state["x"], "chi2": state["chi2"], "JTJ": state["A"], "nfev": state["nfev"],
            "converged": converged}


def normal_equations(r, J):
    """``(chi2, grad, A) = (r r, J r, J J^T)`` for :func:`levenberg_marquardt`."""
    return float(r @ r), J @ r, J @ J.T


def _full_hessian(func, state):
    """Half the Hessian of chi^2 at ``state['x']`` from forward differences of ``J r``.

    Steps are 1e-4 of each parameter's Gauss-Newton error (5e-7 absolute at least).
    Returns None where a shifted point is undefined.
    """
    x, grad, A = state["x"], state["grad"], state["A"]
    try:
        err = np.sqrt(np.abs(np.diag(np.linalg.inv(A))))
    except np.linalg.LinAlgError:
        return None
    H = np.empty_like(A)
    for j in range(x.size):
        h = max(1e-4 * err[j], 5e-7) if np.isfinite(err[j]) else 5e-7
        xj = x.copy()
        xj[j] += h
        shifted = func(xj)
        state["nfev"] += 1
        if shifted is None:
            return None
        H[:, j] = (shifted[1] - grad) / h
    return 0.5 * (H + H.T)


def _damped_steps(func, state, allowed, maxiter, ftol, newton):
    """Damped (Gauss-)Newton iterations on ``state`` until convergence or ``maxiter``.

    ``newton=False``: Levenberg-Marquardt on ``J J^T``; ``newton=True``: the full Hessian,
    recomputed after every accepted step, with the same Marquardt damping.
    """
    A, grad = state["A"], state["grad"]
    lam = 1e-3 if not newton else 1e-6
    H = None
    while state["nfev"] < maxiter:
        if _gradient_negligible(grad, state["chi2"], A):
            return True
        if newton and H is None:
            H = _full_hessian(func, state)
            if H is None:
                return False
        M = H if newton else A
        diag = np.diag(A).copy()
        diag[diag <= 0] = 1e-30
        try:
            step = np.linalg.solve(M + lam * np.diag(diag), -grad)
        except np.linalg.LinAlgError:
            step = None
        # A Newton step must go downhill (the Hessian may be indefinite far from the
        # minimum): otherwise damp harder, which tends to a gradient step.
        if step is None or (newton and step @ grad >= 0):
            lam *= 10.0
            if lam > 1e12:
                return False
            continue
        xn = state["x"] + step
        if allowed is not None and not allowed(xn):
            lam *= 10.0
            if lam > 1e12:
                return False
            continue
        new = func(xn)
        state["nfev"] += 1
        if new is None:
            lam *= 10.0
            if lam > 1e12:
                return False
            continue
        chi2n = float(new[0])
        chi2 = state["chi2"]
        if chi2n <= chi2:
            small = (chi2 - chi2n) <= ftol * chi2 + 1e-300
            grad, A = new[1], new[2]
            state.update(x=xn, chi2=chi2n, grad=grad, A=A)
            H = None
            lam = max(lam * 0.1, 1e-15)
            if small:
                return True
        else:
            lam *= 10.0
            if lam > 1e12:
                # No downhill step: we are at the minimum to machine precision if the
                # gradient is negligible.
                return _gradient_negligible(grad, chi2, A)
    return False


def _gradient_negligible(grad, chi2, A):
    """True when every gradient component is ~1e-8 of its natural scale (at a minimum)."""
    return bool(np.all(np.abs(grad) <= 1e-8 * (np.sqrt(chi2) + 1e-30)
                       * np.sqrt(np.maximum(np.diag(A), 1e-300))))


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
    u, v, area = pixels.u, pixels.v, pixels.area
    n_prior = priors.n_rows
    per_epoch = isinstance(psf, (list, tuple))
    if per_epoch and len(psf) != pixels.n_epoch:
        raise ValueError(f"{len(psf)} PSF mixtures for {pixels.n_epoch} epochs")
    psfs = list(psf) if per_epoch else [psf]
    parts = [sl for sl, _ in pixels.slices] if per_epoch else [slice(None)]
    pixel_eqs = _pixel_equations(u, v, area, d, sw, p, f, psfs, parts)

    def render(x):
        if not per_epoch:
            m, _, ok = model_and_derivs(x, u, v, area, p, f, psf, False)
            return m, ok
        ms = []
        for sl, pe in zip(parts, psfs):
            ar = area[sl] if np.ndim(area) else area
            m, _, ok = model_and_derivs(x, u[sl], v[sl], ar, p, f, pe, False)
            if not ok:
                return None, False
            ms.append(m)
        return np.concatenate(ms), True

    def func(x):
        eqs = pixel_eqs(x)
        if eqs is None or not n_prior:
            return eqs
        chi2, grad, A = eqs
        pr, pd = priors.rows(x)
        return chi2 + float(pr @ pr), grad + pd @ pr, A + pd @ pd.T

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
    m, ok = render(x)
    if ok:
        wm = pixels.weight * m
        den = np.sqrt(np.sum(wm * m))
        out["s2n"] = float(np.sum(wm * d) / den) if den > 0 else np.nan
    else:
        out["s2n"] = np.nan
    return out


def round_measures(pixels, pars, psf, model="gauss"):
    """Round size ``T_r`` and round S/N ``s2n_r`` of a fitted galaxy model.

    The S/N and size of the fitted (elliptical) model depend on the galaxy's orientation
    relative to an elliptical PSF, so cuts on them select differently when the PSF is
    elongated (PSF leakage through the selection). The round quantities remove the
    orientation, as ngmix / DES Y3 metacal do: the galaxy model is made round with its
    covariance determinant kept (``T_r = T (1 - g^2) / (1 + g^2)``, same centre and flux),
    convolved with the round version of each epoch's PSF mixture (every component made
    round with its determinant kept, :meth:`GMix.make_round`), and

        s2n_r = sqrt(sum_epochs sum_pixels w * model_r^2),

    on the weights of the fit (no data enter: it is the S/N a round galaxy of the fitted flux
    would have). For a round galaxy and a round PSF it equals the model S/N of the fit.

    Parameters
    ----------
    pixels : PixelSet
        The pixels and weights of the fit.
    pars : array_like
        Fitted ``(u0, v0, g1, g2, T, flux)``.
    psf : GMix or list of GMix
        The PSF mixture the fit convolved with: one for every epoch, or one per epoch.
    model : str
        Galaxy model of the fit.

    Returns
    -------
    T_r, s2n_r : float
        NaN where undefined (``|g| >= 1``, non-finite parameters, a round model that is not
        positive definite).
    """
    u0, v0, g1, g2, T, flux = (float(x) for x in pars)
    t_r = float(round_T(g1, g2, T))
    if not (np.isfinite(t_r) and np.isfinite(flux) and np.isfinite(u0) and np.isfinite(v0)):
        return t_r, np.nan
    p, f = profile_mixture(model)
    per_epoch = isinstance(psf, (list, tuple))
    try:
        psfs = [pm.make_round() for pm in (psf if per_epoch else [psf])]
    except ValueError:
        return t_r, np.nan
    parts = [sl for sl, _ in pixels.slices] if per_epoch else [slice(None)]
    s2n_sum = 0.0
    for sl, pm in zip(parts, psfs):
        area = pixels.area[sl] if np.ndim(pixels.area) else pixels.area
        m = _render_round(u0, v0, t_r, flux, pixels.u[sl], pixels.v[sl], area, p, f, pm)
        if m is None:
            return t_r, np.nan
        s2n_sum += float(np.dot(pixels.weight[sl] * m, m))
    return t_r, float(np.sqrt(s2n_sum)) if s2n_sum > 0 else np.nan


def _render_round(u0, v0, t_r, flux, u, v, area, p, f, psf):
    """Round galaxy mixture ``(p, f)`` of size ``t_r`` convolved with a round PSF mixture.

    Every convolved component is a round Gaussian of variance ``t_r f_i / 2 + s_j``, so one
    squared radius per PSF centre and one exponential per (component, pixel) suffice (for the
    exp model, a quarter of the cost of the general elliptical renderer; bench/RESULTS.md).
    None if some variance <= 0.
    """
    var = 0.5 * t_r * f[:, None] + psf.cuu[None, :]          # (n_gal, n_psf)
    if np.any(var <= 0):
        return None
    amp = (flux * p[:, None] * psf.flux[None, :] / psf.flux.sum()) / (2.0 * np.pi * var)
    model = np.zeros(u.shape)
    for j in range(len(psf)):
        r2 = (u - (u0 + psf.u[j])) ** 2 + (v - (v0 + psf.v[j])) ** 2
        model += amp[:, j] @ np.exp(np.multiply.outer(-0.5 / var[:, j], r2))
    return model * area


def _pixel_equations(u, v, area, data, sw, p, f, psfs, parts):
    """``x -> (chi2, grad, A)`` of a PSF-convolved model over pixel subsets, or None.

    ``psfs[i]`` convolves the pixels ``parts[i]`` (one part per epoch with per-epoch PSF
    mixtures, else a single part). Uses the compiled kernel when numba is installed.
    """
    area = np.broadcast_to(np.asarray(area, dtype=float), u.shape)
    chunks = []
    for sl, pm in zip(parts, psfs):
        ds = data[sl] * sw[sl]
        chunks.append((np.ascontiguousarray(u[sl]), np.ascontiguousarray(v[sl]),
                       np.ascontiguousarray(area[sl]), np.ascontiguousarray(data[sl]),
                       np.ascontiguousarray(sw[sl]), float(ds @ ds), pm))
    if HAVE_KERNEL:
        def equations(x):
            x = np.asarray(x, dtype=float)
            chi2 = 0.0
            grad = np.zeros(6)
            A = np.zeros((6, 6))
            g = np.empty(6)
            a = np.empty((6, 6))
            for cu, cv, car, cd, csw, sum_d2, pm in chunks:
                c = kernel_normal_equations(x, cu, cv, car, cd, csw, sum_d2, p, f, pm.flux,
                                            pm.u, pm.v, pm.cuu, pm.cvv, pm.cuv, g, a)
                if c < 0:
                    return None
                chi2 += c
                grad += g
                A += a
            return chi2, grad, A
        return equations

    def equations_numpy(x):
        chi2 = 0.0
        grad = np.zeros(6)
        A = np.zeros((6, 6))
        for cu, cv, car, cd, csw, _, pm in chunks:
            m, dm, ok = model_and_derivs(x, cu, cv, car, p, f, pm)
            if not ok:
                return None
            c, g, a = normal_equations((m - cd) * csw, dm * csw)
            chi2 += c
            grad += g
            A += a
        return chi2, grad, A
    return equations_numpy


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
    u = np.ascontiguousarray(u, dtype=float)
    v = np.ascontiguousarray(v, dtype=float)
    im = np.ascontiguousarray(im, dtype=float)
    sums = np.zeros(6)
    for it in range(1, maxiter + 1):  # noqa: B007 (it is reported)
        det = muu * mvv - muv * muv
        if det <= 0 or muu <= 0:
            flags = FLAG_ADMOM_FAILED
            break
        if HAVE_KERNEL:
            kernel_admom_sums(u, v, im, u0, v0, muu, mvv, muv, sums)
        else:
            du = u - u0
            dv = v - v0
            chi2 = (mvv * du * du - 2 * muv * du * dv + muu * dv * dv) / det
            wi = np.exp(-0.5 * chi2) * im
            sums[:] = (wi.sum(), (wi * du).sum(), (wi * dv).sum(), (wi * du * du).sum(),
                       (wi * dv * dv).sum(), (wi * du * dv).sum())
        s = sums[0]
        if not np.isfinite(s) or s <= 0:
            flags = FLAG_ADMOM_FAILED
            break
        mu = sums[1] / s
        mv = sums[2] / s
        quu = sums[3] / s - mu * mu
        qvv = sums[4] / s - mv * mv
        quv = sums[5] / s - mu * mv
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

    func = _pixel_equations(obs_u, obs_v, jacobian.det, data, sw, p, f, [delta],
                            [slice(None)])
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
