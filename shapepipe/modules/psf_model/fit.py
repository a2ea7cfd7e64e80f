"""Built-in PSF model: pixel basis with polynomial spatial variation, fitted to star VIGNETs.

The model is PSFEx's (``BASIS_TYPE PIXEL``): the PSF image on a grid of step ``PSF_SAMP``
image pixels is ``sum_k poly_k(u) B_k`` with ``u`` the normalised context (position) and
``poly_k`` PSFEx's polynomial terms. The fit:

1. each star's VIGNET is resampled (Lanczos-3, separable, batched) onto the PSF grid centred
   on the star's catalogue centre, which removes the sub-pixel offsets; masked pixels
   (``-1e30``) and every output pixel they touch get zero weight;
2. the stars are normalised by their flux; pixel weights include background noise, Poisson
   noise (if a gain is known) and a relative model accuracy term (``PSF_ACCURACY``);
3. the basis images solve, for every PSF pixel at once, a weighted linear least-squares
   problem in the polynomial coefficients (batched normal equations: a ``(npix, K, K)``
   stack solved by one ``numpy.linalg.solve`` call);
4. star fluxes are re-fitted on the model, stars whose reduced chi2 is an outlier (robust
   median + ``n`` MAD clipping, blends, cosmic rays, galaxies) are rejected, and the fit is
   repeated until the set of accepted stars no longer changes;
5. optionally (``degree_selection="PRESS"``) the polynomial degree is chosen from the data:
   after the first pass, the configured degree and every lower one are scored by their
   leave-one-star-out prediction error of the stars' shapes (PRESS) on the same stars,
   pixels and weights, and the second pass fits the degree :func:`select_degree` keeps.
"""

import numpy as np

from shapepipe.modules.psfex.dotpsf import PSFModel, poly_powers, poly_terms
from shapepipe.modules.psfex.resample import LANCZOS_ORDER, resample_mask, resample_stack

MASKED = -1e29  # SExtractor marks pixels outside the image / flagged with -1e30
#: Stars whose leave-one-out shape chi2 (3 values) exceeds this under every candidate degree
#: are left out of the degree selection (about 5 sigma on each value).
OUTLIER_CHI2 = 75.0


class PSFFitResult:
    """What :func:`fit_psf` returns.

    Attributes
    ----------
    model : PSFModel
        The fitted model (mask normalised so that the PSF on the image pixel grid sums to 1).
    accepted : numpy.ndarray
        Boolean per input star: used in the final fit.
    loaded : numpy.ndarray
        Boolean per input star: passed the pre-selection (S/N, usable pixels).
    chi2 : numpy.ndarray
        Reduced chi2 of each star against the final model (NaN if not loaded).
    flux : numpy.ndarray
        Fitted flux of each star.
    chi2_total : float
        Reduced chi2 of the accepted stars.
    fwhm : float
        FWHM of the model at the centre of the context range, image pixels.
    """

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def robust_sigma(values):
    """1.4826 x median absolute deviation."""
    values = np.asarray(values, dtype=float)
    return 1.4826 * np.median(np.abs(values - np.median(values)))


def _border_rms(vignets, bad):
    """Robust background rms from the two outer rows/columns of every vignet."""
    n = vignets.shape[0]
    ring = np.zeros(vignets.shape[1:], bool)
    ring[:2] = ring[-2:] = True
    ring[:, :2] = ring[:, -2:] = True
    values = vignets[:, ring]
    good = ~bad[:, ring]
    per_star = np.full(n, np.nan)
    for_stats = np.where(good, values, np.nan)
    med = np.nanmedian(for_stats, axis=1)
    per_star = 1.4826 * np.nanmedian(np.abs(for_stats - med[:, None]), axis=1)
    return per_star


def _fwhm_of(image, samp):
    """FWHM (image pixels) from the area above half maximum of a well-sampled image."""
    peak = image.max()
    if peak <= 0:
        return 0.0
    area = np.count_nonzero(image >= 0.5 * peak) * samp * samp
    return float(2.0 * np.sqrt(area / np.pi))


def fit_psf(vignets, centers, context, flux_guess=None, snr=None, psf_size=None, samp=1.0,
            groups=(1, 1), degrees=(2,), polnames=("XWIN_IMAGE", "YWIN_IMAGE"), min_sn=20.0,
            accuracy=0.01, gain=0.0, bkg_rms=None, clip_nsigma=4.0, max_iter=4,
            min_good_fraction=0.5, interp_order=7, pixel_clip=5.0, degree_selection="NONE",
            min_degree=1, selection_options=None):
    """Fit a PSFEx-format PSF model to star VIGNETs.

    Parameters
    ----------
    vignets : numpy.ndarray
        ``(n, h, w)`` star stamps; values below ``-1e29`` are masked. An object at 0-based
        image position ``x`` is at ``x - round(x) + w // 2`` in its stamp (SExtractor).
    centers : numpy.ndarray
        ``(n, 2)`` 1-based image positions (x, y) of the stars (``CENTER_KEYS``).
    context : numpy.ndarray
        ``(n, ndim)`` context values (``PSFVAR_KEYS``, usually the same positions).
    flux_guess : numpy.ndarray, optional
        Initial fluxes (``PHOTFLUX_KEY``); default: sum of the resampled stamp.
    snr : numpy.ndarray, optional
        S/N of each star; stars below ``min_sn`` are not loaded.
    psf_size : tuple of int, optional
        ``(nx, ny)`` of the model grid; default: the VIGNET size (at ``samp=1``).
    samp : float
        Model sampling step in image pixels (``PSF_SAMPLING``).
    groups, degrees : sequence of int
        Polynomial groups (1-based, one per context variable) and degree per group.
    polnames : sequence of str
        Names of the context variables (written as ``POLNAME``).
    min_sn : float
        Minimum S/N (``SAMPLE_MINSN``).
    accuracy : float
        Relative accuracy of model pixel values (``PSF_ACCURACY``).
    gain : float
        Gain (e-/ADU) for the Poisson term; 0 = no Poisson term.
    bkg_rms : float, optional
        Background rms per pixel; default: robust estimate from the stamps' borders.
    clip_nsigma : float
        Stars with a reduced chi2 above max(median + clip_nsigma x MAD-sigma, 2 x median)
        are rejected.
    max_iter : int
        Maximum number of fit / reject iterations.
    min_good_fraction : float
        Minimum fraction of usable PSF pixels for a star to be loaded.
    interp_order : int
        Lanczos order of the final resampling of the stamps (3 = a single pass).
    pixel_clip : float
        Pixels further than this many sigma from the model are dropped, and stars with more
        than 30% of such pixels in their core are rejected (0: no pixel clipping).
    degree_selection : {"NONE", "PRESS"}
        ``"PRESS"``: fit the configured degrees and every lower total degree (down to
        ``min_degree``; each group's degree is capped at the candidate's) and keep the one
        that best predicts the stars' shapes when each is left out (:func:`press_chi2`,
        :func:`select_degree`); too few stars for the configured degree start the
        selection at the highest degree they constrain.
        ``"NONE"``: the configured degrees.
    min_degree : int
        Lowest candidate degree of the selection (default 1: on the default survey a
        constant PSF won the selection on 3 of 12 CCDs where its size error at the true
        stars was 2-5x that of degree 1; a camera's PSF has at least a gradient).
    selection_options : dict, optional
        Keyword arguments of :func:`select_degree`.

    Returns
    -------
    PSFFitResult
        Also ``degrees`` (the degrees used) and ``press`` (``{degrees: mean per-star PRESS
        over the compared stars}``, ``inf`` for a degree with too few stars; empty without
        selection).

    Raises
    ------
    ValueError
        If fewer stars than polynomial terms are usable.
    """
    degree_selection = str(degree_selection).upper()
    if degree_selection not in ("NONE", "PRESS"):
        raise ValueError(f"degree selection must be PRESS or NONE, got {degree_selection!r}")
    degrees = tuple(int(d) for d in degrees)
    vignets = np.asarray(vignets, dtype=np.float64)
    n, h, w = vignets.shape
    centers = np.asarray(centers, dtype=float).reshape(n, 2)
    context = np.asarray(context, dtype=float).reshape(n, -1)
    if psf_size is None:
        psf_size = (w, h) if samp == 1.0 else (int(round(w / samp)) | 1, int(round(h / samp)) | 1)
    nx, ny = int(psf_size[0]), int(psf_size[1])
    powers = poly_powers(groups, degrees)
    ncoeff = powers.shape[0]

    bad_in = ~(vignets > MASKED) | ~np.isfinite(vignets)
    data_in = np.where(bad_in, 0.0, vignets)

    # Sub-pixel offset of each star in its stamp, then the stamp coordinates of the PSF grid.
    x0 = centers[:, 0] - 1.0
    y0 = centers[:, 1] - 1.0
    cx = x0 - np.round(x0) + w // 2
    cy = y0 - np.round(y0) + h // 2
    gx = (np.arange(nx) - nx // 2) * samp
    gy = (np.arange(ny) - ny // 2) * samp
    x_src = cx[:, None] + gx[None, :]
    y_src = cy[:, None] + gy[None, :]
    data = resample_stack(data_in, x_src, y_src)
    bad = resample_mask(bad_in, x_src, y_src)

    if bkg_rms is None:
        per_star = _border_rms(vignets, bad_in)
        bkg_rms = float(np.nanmedian(per_star)) if np.isfinite(per_star).any() else 1.0
    bkg_rms = max(float(bkg_rms), 1e-12)
    # Interpolation averages neighbouring pixels; the per-pixel variance of resampled white
    # noise is the sum of squared weights (about 0.6-1 for Lanczos-3): use the mean factor.
    var_bkg = bkg_rms**2

    good_frac = 1.0 - bad.reshape(n, -1).mean(axis=1)
    loaded = good_frac >= min_good_fraction
    if snr is not None:
        loaded &= np.asarray(snr, dtype=float) >= min_sn
    loaded &= np.all(np.isfinite(context), axis=1)

    # Context normalisation as PSFEx: centre and full range of the loaded stars.
    if loaded.any():
        cmin = context[loaded].min(axis=0)
        cmax = context[loaded].max(axis=0)
    else:
        cmin = cmax = np.zeros(context.shape[1])
    polzero = 0.5 * (cmin + cmax)
    polscal = np.where(cmax > cmin, cmax - cmin, 1.0)
    u_context = (context - polzero) / polscal
    phi = poly_terms(u_context, powers)  # (n, K)

    # Initial fluxes: aperture flux if given, else the sum of the resampled stamp.
    if flux_guess is not None:
        flux = np.asarray(flux_guess, dtype=float).reshape(n, -1)[:, 0].copy()
    else:
        flux = np.where(bad, 0.0, data).sum(axis=(1, 2)) * samp * samp
    flux = np.where(np.isfinite(flux) & (flux > 0), flux, np.nan)
    loaded &= np.isfinite(flux)

    if degree_selection == "PRESS" and len(degrees) and loaded.sum() <= ncoeff:
        # Too few stars for the configured degree: start from the highest candidate that
        # leaves at least one star more than it has terms (a PRESS score needs it).
        for cand in candidate_degrees(degrees, min_degree):
            if poly_powers(groups, cand).shape[0] < loaded.sum():
                degrees = cand
                powers = poly_powers(groups, degrees)
                ncoeff = powers.shape[0]
                phi = poly_terms(u_context, powers)
                break
    if loaded.sum() < ncoeff:
        raise ValueError(
            f"only {int(loaded.sum())} usable stars (S/N >= {min_sn}, enough unmasked "
            f"pixels) for a polynomial of {ncoeff} terms"
        )
    fit_args = (phi, loaded, var_bkg, gain, accuracy, samp, clip_nsigma, max_iter, ncoeff,
                (ny, nx), pixel_clip)

    # Pass 1: Lanczos-3 resampling, every output pixel touched by a masked one is dropped.
    basis, flux, chi2, accepted, use = _fit_iterate(data.reshape(n, -1), (~bad).reshape(n, -1),
                                                    flux, *fit_args)
    phi_pass1 = phi

    # Degree selection on the pass-1 state: every candidate is scored on the same stars,
    # pixels, fluxes and weights, so that only the polynomial differs.
    press = {}
    if degree_selection == "PRESS" and len(degrees) and max(degrees) > min_degree:
        model_var = phi @ basis
        functionals = moment_functionals(np.median(model_var[accepted], axis=0).reshape(ny, nx),
                                         samp)
        terms = {}
        for cand in candidate_degrees(degrees, min_degree):
            phi_c = poly_terms(u_context, poly_powers(groups, cand))
            terms[cand] = press_chi2(data.reshape(n, -1), use, phi_c, flux, accepted, var_bkg,
                                     gain, accuracy, model_var, functionals)
        chosen, press = select_degree(terms, **(selection_options or {}))
        if chosen != degrees:
            degrees = chosen
            powers = poly_powers(groups, degrees)
            ncoeff = powers.shape[0]
            phi = poly_terms(u_context, powers)
            fit_args = (phi, loaded, var_bkg, gain, accuracy, samp, clip_nsigma, max_iter,
                        ncoeff, (ny, nx), pixel_clip)
            if interp_order <= LANCZOS_ORDER:  # no second pass: refit pass 1 at that degree
                basis, flux, chi2, accepted, use = _fit_iterate(
                    data.reshape(n, -1), (~bad).reshape(n, -1), flux, *fit_args)

    # Pass 2: Lanczos-3 shrinks a 3.5-pixel-FWHM star by up to 0.5% at half-pixel shifts;
    # a long kernel (order 7) does not, but spreads masked pixels over 14 pixels. So masked
    # pixels are first filled with the pass-1 model of the star (at its own offset), the
    # stamps are resampled with the long kernel, and only the output pixels nearest to a
    # masked input pixel are dropped.
    if interp_order > LANCZOS_ORDER:
        amp = np.where(np.isfinite(flux), flux, 0.0)[:, None, None]
        grid = (phi_pass1 @ basis).reshape(n, ny, nx) * amp
        sx = (np.arange(w)[None, :] - cx[:, None]) / samp + nx // 2
        sy = (np.arange(h)[None, :] - cy[:, None]) / samp + ny // 2
        fill = resample_stack(grid, sx, sy, order=LANCZOS_ORDER)
        filled = np.where(bad_in, fill, data_in)
        data = resample_stack(filled, x_src, y_src, order=interp_order)
        ix = np.rint(x_src).astype(int)
        iy = np.rint(y_src).astype(int)
        outside = ((ix < 0) | (ix >= w))[:, None, :] | ((iy < 0) | (iy >= h))[:, :, None]
        rows = np.clip(iy, 0, h - 1)[:, :, None]
        cols = np.clip(ix, 0, w - 1)[:, None, :]
        bad = bad_in[np.arange(n)[:, None, None], rows, cols] | outside
        basis, flux, chi2, accepted, _ = _fit_iterate(data.reshape(n, -1),
                                                      (~bad).reshape(n, -1), flux, *fit_args)
    good = (~bad).reshape(n, -1)

    mask = basis.reshape(ncoeff, ny, nx)
    # Normalise: the PSF at the context centre sums to 1 on the image pixel grid.
    centre_terms = poly_terms(np.zeros((1, context.shape[1])), powers)[0]
    norm = float(np.tensordot(centre_terms, mask, axes=(0, 0)).sum()) * samp * samp
    if norm > 0:
        mask = mask / norm
        flux = flux * norm
    model_out = PSFModel(mask, polnames, polzero, polscal, groups, degrees, samp)
    n_pix = good[accepted].sum()
    chi2_total = float(np.nansum(chi2[accepted] * good[accepted].sum(axis=1)) / max(n_pix, 1))
    fwhm = _fwhm_of(model_out.evaluate(polzero[None])[0], samp)
    chi2 = np.where(loaded, chi2, np.nan)
    return PSFFitResult(model=model_out, accepted=accepted, loaded=loaded, chi2=chi2, flux=flux,
                        chi2_total=chi2_total, fwhm=fwhm, offsets=np.stack([cx - w // 2,
                                                                            cy - h // 2], 1),
                        degrees=degrees, press=press)


def select_degree(terms, outlier_chi2=OUTLIER_CHI2, one_se=True):
    """The degree to keep from the per-star PRESS terms of every candidate.

    Parameters
    ----------
    terms : dict
        ``{degrees: per-star PRESS (numpy.ndarray)}``, highest degree first, the same stars
        in every array (:func:`press_chi2`).
    outlier_chi2 : float
        Stars that no candidate predicts better than this (sum of three chi2 values, about
        3 for noise) are left out of the comparison: a star with a companion or a defect
        the clipping kept is mispredicted by every degree, and its huge term would decide
        between the candidates by its noise alone.
    one_se : bool
        Keep the lowest degree whose mean PRESS is within one standard error (of the
        paired per-star difference) of the lowest mean, the usual rule for choosing model
        complexity by cross-validation: a higher degree must earn its extra terms.

    Returns
    -------
    tuple
        ``(degrees, {degrees: mean PRESS over the compared stars})``.
    """
    cands = [c for c in terms if np.all(np.isfinite(terms[c]))]
    if not cands:
        top = next(iter(terms))
        return top, {c: float("inf") for c in terms}
    table = np.stack([terms[c] for c in cands])  # (C, m)
    keep = table.min(axis=0) <= outlier_chi2
    if not keep.any():
        keep[:] = True
    table = table[:, keep]
    scores = table.mean(axis=1)
    best = int(np.argmin(scores))
    chosen = best
    if one_se:
        m = table.shape[1]
        # Candidates are ordered from the highest degree down: the last acceptable one is
        # the lowest degree.
        for i in range(best + 1, len(cands)):
            diff = table[i] - table[best]
            se = diff.std(ddof=1) / np.sqrt(m) if m > 1 else np.inf
            if diff.mean() <= se:
                chosen = i
    press = {c: float("inf") for c in terms}
    press.update({c: float(v) for c, v in zip(cands, scores)})
    return cands[chosen], press


def candidate_degrees(degrees, min_degree=1):
    """The configured degrees and every lower total degree, highest first.

    Each group's degree is capped at the candidate total degree ``D``, for ``D`` from
    ``max(degrees)`` down to ``min_degree``: ``(3, 1)`` gives ``(3, 1), (2, 1), (1, 1), (0, 0)``.
    """
    top = max(degrees)
    out = []
    for total in range(top, max(int(min_degree), 0) - 1, -1):
        cand = tuple(min(d, total) for d in degrees)
        if cand not in out:
            out.append(cand)
    return out


def moment_functionals(image, samp):
    """Linear responses of a PSF's shape to a small change of its image.

    With a fixed Gaussian weight ``W`` matched to ``image`` (the mean model, unit flux,
    centred at ``(nx // 2, ny // 2)``), a residual image ``r`` changes the weighted moments'
    ellipticity by ``sum W (x^2 - y^2) r / Q`` and ``sum W 2xy r / Q`` and the relative size
    ``T`` by ``sum W (x^2 + y^2) r / Q - sum W r / S``, with ``Q = sum W (x^2 + y^2) image``
    and ``S = sum W image``: to first order the e1, e2 and size errors that
    ``scripts/psf_validation.py`` measures at held-out stars.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` model image.
    samp : float
        Its sampling step in image pixels.

    Returns
    -------
    numpy.ndarray
        ``(3, ny * nx)``: the e1, e2 and relative-size functionals.
    """
    ny, nx = image.shape
    gy, gx = np.mgrid[:ny, :nx]
    x = (gx - nx // 2) * samp
    y = (gy - ny // 2) * samp
    sigma = max(_fwhm_of(image, samp), 1.0) / 2.3548
    weight = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    r2 = x * x + y * y
    q = float((weight * r2 * image).sum())
    s = float((weight * image).sum())
    if not (q > 0 and s > 0):
        raise ValueError("PSF model image has no positive core: cannot score degrees")
    g = np.stack([weight * (x * x - y * y) / q, weight * 2.0 * x * y / q,
                  weight * r2 / q - weight / s])
    return g.reshape(3, -1)


def press_chi2(dflat, use, phi, flux, accepted, var_bkg, gain, accuracy, model, functionals,
               block=256):
    """Leave-one-star-out prediction chi2 of the stars' shapes (PRESS) for one design.

    Every PSF pixel is an independent weighted least-squares fit over the stars, so leaving a
    star out changes each pixel's coefficients through that star's own pixel only and the
    classical identity is exact: the prediction residual of star ``s`` at pixel ``p`` is
    ``r_sp / (1 - h_sp)``, with ``r_sp`` the fit residual and ``h_sp = w_sp phi_s^T A_p^-1
    phi_s`` the diagonal of the pixel's weighted hat matrix (``A_p`` its normal matrix). One
    solve per pixel thus gives what ``n`` refits would (fluxes, weights and clipped pixels
    held at the values of the fit that scores the candidates). A star far from the others (a
    corner) has ``h`` near 1 under a high degree, so its prediction error is large: this is
    what penalises extrapolation.

    The leave-one-out residual images are not scored by their pixel chi2: at the S/N of PSF
    stars almost every pixel is noise, and on a synthetic field whose size varies by 6% the
    pixel chi2 prefers a constant PSF whose size is 2.7% off at held-out stars. They are
    projected instead on the e1, e2 and size functionals (:func:`moment_functionals`) and
    each star's three values are weighted by their noise variance; the star's own noise
    adds the same amount to every candidate.

    Parameters
    ----------
    dflat : numpy.ndarray
        ``(n, P)`` resampled stamps.
    use : numpy.ndarray
        ``(n, P)`` pixels used in the fit.
    phi : numpy.ndarray
        ``(n, K)`` polynomial terms of the candidate degree.
    flux : numpy.ndarray
        Star fluxes.
    accepted : numpy.ndarray
        Stars in the fit.
    var_bkg, gain, accuracy : float
        Noise model (as :func:`fit_psf`).
    model : numpy.ndarray
        ``(n, P)`` unit-flux model that sets the signal-dependent variance (the same for
        every candidate).
    functionals : numpy.ndarray
        ``(3, P)`` from :func:`moment_functionals`.
    block : int
        Pixels per block (bounds the ``(m, block, K)`` temporaries).

    Returns
    -------
    numpy.ndarray
        Per accepted star, the sum over the three shape values of ``(G r_loo)^2 / var``
        (about 3 for a star predicted to within its noise); ``inf`` for every star if there
        are not more stars than polynomial terms.
    """
    idx = np.flatnonzero(accepted)
    k = phi.shape[1]
    if idx.size <= k:
        return np.full(idx.size, np.inf)
    a, b, wgt, y = _normal_equations(dflat, use, phi, flux, accepted, var_bkg, gain, accuracy,
                                     model)
    p = phi[idx]
    g = np.asarray(functionals, dtype=float)
    moments = np.zeros((idx.size, g.shape[0]))
    noise = np.zeros((idx.size, g.shape[0]))
    for start in range(0, a.shape[0], block):
        sl = slice(start, start + block)
        a_inv = np.linalg.inv(a[sl])  # (B, K, K)
        coeffs = np.einsum("pkl,pl->pk", a_inv, b[sl])  # (B, K)
        w_blk = wgt[:, sl]
        used = w_blk > 0
        resid = np.where(used, y[:, sl] - p @ coeffs.T, 0.0)  # (m, B)
        lev = np.einsum("sk,pkl,sl->sp", p, a_inv, p) * w_blk  # (m, B)
        # h -> 1: the star is not predicted at all by the others; cap the inflation so that
        # one degenerate pixel cannot make the score infinite.
        loo = resid / np.maximum(1.0 - lev, 1e-3)
        moments += loo @ g[:, sl].T
        inv_w = np.where(used, 1.0 / np.where(used, w_blk, 1.0), 0.0)
        noise += inv_w @ (g[:, sl] ** 2).T
    ok = noise > 0
    return np.where(ok, moments**2 / np.where(ok, noise, 1.0), 0.0).sum(axis=1)


def _fit_iterate(dflat, good, flux, phi, loaded, var_bkg, gain, accuracy, samp, clip_nsigma,
                 max_iter, ncoeff, shape, pix_nsigma=5.0, core_max=0.3, min_iter=3):
    """Alternate basis and flux fits, clip outlier pixels and stars until stable.

    Pixels more than ``pix_nsigma`` from the model (and their 4 neighbours) are dropped:
    neighbours and cosmic rays then cost a few pixels, not the star. Stars with more than
    ``core_max`` of their core in outliers (blends), or whose chi2 on the kept pixels is an
    outlier, are rejected. On the simulated survey (12 CCDs, ~40 stars each) this halves the
    model-truth rms of e1, e2 and size compared with keeping or rejecting whole stars only.
    """
    accepted = loaded.copy()
    model = None
    basis = chi2 = None
    use = good.copy()
    ny, nx = shape
    for iteration in range(max_iter):
        # The first basis of all weighs pixels by their own value (model is None): a bright
        # neighbour in a stamp is then down-weighted by its Poisson and accuracy terms, so
        # the first model is clean enough to find the outlier pixels.
        basis = _solve_basis(dflat, use, phi, flux, accepted, var_bkg, gain, accuracy, model)
        model = phi @ basis  # (n, npix), unit flux on the image pixel grid
        flux = _refit_flux(dflat, use, model, flux, var_bkg, gain, accuracy, samp)
        blended = np.zeros(len(flux), bool)
        if pix_nsigma:
            use, core_bad = _clip_pixels(dflat, good, model, flux, var_bkg, gain, accuracy,
                                         (ny, nx), samp, pix_nsigma)
            blended = core_bad > core_max
        basis = _solve_basis(dflat, use, phi, flux, accepted & ~blended, var_bkg, gain,
                             accuracy, model)
        model = phi @ basis
        flux = _refit_flux(dflat, use, model, flux, var_bkg, gain, accuracy, samp)
        chi2 = _star_chi2(dflat, use, model, flux, var_bkg, gain, accuracy, samp)
        ok = accepted & np.isfinite(chi2) & ~blended
        if not ok.any():
            break
        med = np.median(chi2[ok])
        # Bright stars show model imperfections far above their noise (chi2 1.5 at S/N 500
        # while blends reach 20+): never reject below twice the median.
        limit = max(med + clip_nsigma * robust_sigma(chi2[ok]), 2.0 * med)
        new_accepted = loaded & np.isfinite(chi2) & (chi2 <= limit) & ~blended
        if new_accepted.sum() < ncoeff:
            break
        # The clipping mask comes from the model: let it settle (a mask from the first,
        # data-weighted model flattens the PSF variation) before trusting a stable star set.
        if np.array_equal(new_accepted, accepted) and iteration >= min_iter - 1:
            break
        accepted = new_accepted
    return basis, flux, chi2, accepted, use


def _clip_pixels(dflat, good, model, flux, var_bkg, gain, accuracy, shape, samp, nsigma):
    """Pixels to keep, and the fraction of each star's core that is an outlier.

    Pixels more than ``nsigma`` from the model, grown by one pixel (neighbours, cosmic
    rays), are dropped. The fraction of outliers within 1.5 FWHM of the centre flags stars
    blended in their core, which are rejected as a whole.
    """
    n = len(flux)
    ny, nx = shape
    m = model * flux[:, None]
    var = _variance(np.maximum(m, 0.0), var_bkg, gain, accuracy)
    mean_model = np.nanmedian(model, axis=0).reshape(ny, nx)
    fwhm = max(_fwhm_of(mean_model, samp), 1.0)
    yy, xx = np.mgrid[:ny, :nx]
    core = (np.hypot(xx - nx // 2, yy - ny // 2) * samp <= 1.5 * fwhm).ravel()
    outlier = (np.abs(dflat - m) > nsigma * np.sqrt(var)) & good
    core_bad = outlier[:, core].sum(axis=1) / max(core.sum(), 1)
    grid = outlier.reshape(n, ny, nx)
    grown = grid.copy()
    grown[:, 1:, :] |= grid[:, :-1, :]
    grown[:, :-1, :] |= grid[:, 1:, :]
    grown[:, :, 1:] |= grid[:, :, :-1]
    grown[:, :, :-1] |= grid[:, :, 1:]
    return good & ~grown.reshape(n, -1), core_bad


def _variance(model_flux, var_bkg, gain, accuracy):
    """Pixel variance of a star: background + Poisson + relative model accuracy."""
    var = var_bkg + (accuracy * model_flux) ** 2
    if gain and gain > 0:
        var = var + np.maximum(model_flux, 0.0) / gain
    return var


def _solve_basis(dflat, good, phi, flux, accepted, var_bkg, gain, accuracy, model=None):
    """Weighted least squares of every PSF pixel's coefficients at once."""
    a, b, _, _ = _normal_equations(dflat, good, phi, flux, accepted, var_bkg, gain, accuracy,
                                   model)
    coeffs = np.linalg.solve(a, b[:, :, None])[:, :, 0]  # (P, K)
    return coeffs.T  # (K, P)


def _normal_equations(dflat, good, phi, flux, accepted, var_bkg, gain, accuracy, model=None):
    """Per-pixel normal matrices ``(P, K, K)``, right-hand sides ``(P, K)``, weights and
    normalised data ``(m, P)`` of the accepted stars."""
    idx = np.flatnonzero(accepted)
    d = dflat[idx]
    f = flux[idx][:, None]
    # Weight of the normalised data d/f: f^2 / var(d). The signal-dependent variance terms
    # come from the previous model (from the data only on the first pass: weights that
    # follow the noise would bias the fit low).
    signal = d if model is None else model[idx] * f
    var = _variance(np.maximum(signal, 0.0), var_bkg, gain, accuracy)
    wgt = np.where(good[idx], f * f / var, 0.0)  # (m, P)
    y = d / f
    p = phi[idx]  # (m, K)
    # Normal equations per pixel: A_p = sum_s w_sp phi_s phi_s^T, b_p = sum_s w_sp y_sp phi_s.
    outer = p[:, :, None] * p[:, None, :]  # (m, K, K)
    a = np.tensordot(wgt.T, outer, axes=(1, 0))  # (P, K, K)
    b = (wgt * y).T @ p  # (P, K)
    # Pixels no star constrains (corners beyond every stamp): a small ridge keeps them at 0.
    ridge = 1e-10 * np.maximum(np.trace(a, axis1=1, axis2=2), 1e-30)
    a = a + ridge[:, None, None] * np.eye(a.shape[1])[None]
    return a, b, wgt, y


def _refit_flux(dflat, good, model, flux, var_bkg, gain, accuracy, samp):
    """Linear amplitude of each star on its model."""
    m = model * np.where(np.isfinite(flux), flux, 0.0)[:, None]
    var = _variance(np.maximum(m, 0.0), var_bkg, gain, accuracy)
    wgt = np.where(good, 1.0 / var, 0.0)
    num = (wgt * dflat * model).sum(axis=1)
    den = (wgt * model * model).sum(axis=1)
    new = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.where(np.isfinite(new) & (new > 0), new, flux)


def _star_chi2(dflat, good, model, flux, var_bkg, gain, accuracy, samp):
    """Reduced chi2 of each star against its scaled model."""
    m = model * flux[:, None]
    var = _variance(np.maximum(m, 0.0), var_bkg, gain, accuracy)
    resid = np.where(good, (dflat - m) ** 2 / var, 0.0)
    npix = good.sum(axis=1)
    return np.where(npix > 0, resid.sum(axis=1) / np.maximum(npix, 1), np.nan)
