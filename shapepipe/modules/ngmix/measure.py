"""Per-object metacalibration measurement and the ShapePipe-format ngmix catalogue.

:func:`measure_object` takes the epochs of one object (a list of
:class:`~shapepipe.modules.ngmix.observation.Observation`) and returns one row per metacal
type; :func:`write_catalog` writes rows of many objects as HDUs NOSHEAR, 1P, 1M, 2P, 2M.
"""

import numpy as np

from shapepipe.utils.rng import make_rng

from .fitting import (
    FLAG_MAX_GAIN,
    FLAG_METACAL_FAILED,
    FLAG_NO_EPOCHS,
    FLAG_PSF_FAILED,
    NO_PRIORS,
    PixelSet,
    Priors,
    adaptive_moments,
    fit_gmix_model,
    fit_psf_gauss,
    round_measures,
)
from .gmix import GMix, gT_to_moments
from .metacal import METACAL_TYPES, MetacalImager, metacal_shears

HDU_NAMES = {"noshear": "NOSHEAR", "1p": "1P", "1m": "1M", "2p": "2P", "2m": "2M"}

# Output columns (name, numpy dtype) of every HDU: ShapePipe's ngmix catalogue columns
# in ShapePipe's order (``*_psfo_ngmix`` = original PSF, Gaussian fit averaged over epochs,
# noiseless so its errors are 0; ``Tpsf``, ``g1_psf``, ``g2_psf`` = the round reconvolution
# PSF of the metacal images), then extras. ``T_r`` / ``s2n_r``: round size and round S/N of
# the fitted model (:func:`~shapepipe.modules.ngmix.fitting.round_measures`), for selection
# cuts that do not depend on the galaxy's orientation relative to the PSF (DES Y3's cuts).
COLUMNS = [
    ("id", "i8"), ("n_epoch_model", "i4"), ("moments_fail", "i4"), ("ntry_fit", "i2"),
    ("g1_psfo_ngmix", "f8"), ("g2_psfo_ngmix", "f8"), ("T_psfo_ngmix", "f8"),
    ("g1_err_psfo_ngmix", "f8"), ("g2_err_psfo_ngmix", "f8"), ("T_err_psfo_ngmix", "f8"),
    ("g1", "f8"), ("g1_err", "f8"), ("g2", "f8"), ("g2_err", "f8"),
    ("T", "f8"), ("T_err", "f8"), ("Tpsf", "f8"), ("g1_psf", "f8"), ("g2_psf", "f8"),
    ("flux", "f8"), ("flux_err", "f8"), ("s2n", "f8"), ("mag", "f8"), ("mag_err", "f8"),
    ("flags", "i4"), ("mcal_flags", "i4"),
    ("g1g2_cov", "f8"), ("u0", "f8"), ("v0", "f8"), ("chi2", "f8"), ("npix", "i4"),
    ("nfev", "i2"), ("T_r", "f8"), ("s2n_r", "f8"),
]


def _empty_row(object_id, n_epoch):
    row = {name: (np.nan if dt == "f8" else 0) for name, dt in COLUMNS}
    row["id"] = object_id
    row["n_epoch_model"] = n_epoch
    return row


def _fill_bad_pixels(obs, psf_fit, rng, method="model"):
    """Replace zero-weight pixels by a PSF-convolved Gaussian fit of the good ones.

    Metacal needs a complete image (a hole would be deconvolved and sheared). The weight
    of those pixels stays zero in the fits. ``method = "symmetric"`` then replaces each bad
    pixel whose mirror image through the fitted centre is good by the (cubic-spline) value
    there: a sheared elliptical galaxy convolved with a point-symmetric PSF is
    point-symmetric, so the mirror carries the true profile where the Gaussian model does
    not (noiseless exponential galaxies with 1% bad pixels: m1 -0.0042 with the model fill,
    -0.0000 with the true pixels; ``bench/RESULTS.md``).
    """
    bad = obs.weight <= 0
    if not bad.any():
        return obs.image
    pixels = PixelSet([obs])
    am = adaptive_moments(np.where(bad, 0.0, obs.image), obs.jacobian, weight=obs.weight)
    t_guess = am["T"] - psf_fit["T"] if am["flags"] == 0 else psf_fit["T"]
    flux_guess = am["flux"] if am["flags"] == 0 else obs.image[~bad].sum()
    guess = [0.0, 0.0, 0.0, 0.0, max(t_guess, 0.1 * psf_fit["T"]), flux_guess]
    res = fit_gmix_model(pixels, psf_fit["gmix"], "gauss", guess=guess, rng=rng)
    y, x = np.nonzero(bad)
    u, v = obs.jacobian.uv(x, y)
    u0, v0, g1, g2, T, flux = res["pars"]
    cuu, cvv, cuv = gT_to_moments(g1, g2, T)
    psf = psf_fit["gmix"]
    model = GMix(flux, u0, v0, cuu + psf.cuu[0], cvv + psf.cvv[0], cuv + psf.cuv[0])
    filled = obs.image.copy()
    filled[y, x] = model.render(u, v, obs.jacobian.det)
    if method == "symmetric":
        from scipy.ndimage import map_coordinates

        xc, yc = obs.jacobian.xy(u0, v0)
        xm, ym = 2.0 * xc - x, 2.0 * yc - y
        ny, nx = bad.shape
        ix, iy = np.rint(xm).astype(int), np.rint(ym).astype(int)
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        usable = inside.copy()
        usable[inside] = ~bad[iy[inside], ix[inside]]
        if usable.any():
            filled[y[usable], x[usable]] = map_coordinates(
                filled, [ym[usable], xm[usable]], order=3, mode="nearest")
    elif method != "model":
        raise ValueError(f"bad-pixel fill {method!r}: expected 'model' or 'symmetric'")
    return filled


def _fit_image(image_list, good_obs, pixels, reconv, model, priors, t_r, sigma_r,
               start_T_factors, n_retry, rng):
    """Best fit of one metacal image (all epochs): starts from its adaptive moments.

    Returns the fit of lowest chi^2 among those started at the adaptive-moments guess with
    its size multiplied by each of ``start_T_factors``, and the adaptive moments.
    """
    first = image_list[0]
    am = adaptive_moments(first, good_obs[0].jacobian, weight=good_obs[0].weight,
                          guess_T=4.0 * sigma_r ** 2, tol=1e-5)
    if am["flags"] == 0 and np.isfinite(am["flux"]) and am["flux"] > 0:
        guess = np.array([am["u0"], am["v0"], 0.0, 0.0, max(am["T"] - t_r, 0.05 * t_r),
                          am["flux"]])
    else:
        guess = np.array([0.0, 0.0, 0.0, 0.0, 0.5 * t_r, max(float(np.sum(first)), 1e-3)])
    if not priors.allowed(guess):
        guess[4] = min(max(guess[4], priors.T_range[0] + 1e-6), priors.T_range[1])
    data = pixels.data_from_images(image_list)
    best = None
    for factor in start_T_factors:
        start = guess.copy()
        start[4] *= factor
        if not priors.allowed(start):
            continue
        trial = fit_gmix_model(pixels, reconv, model=model, guess=start, priors=priors,
                               data=data, rng=rng, n_retry=n_retry)
        if best is None or _better_fit(trial, best):
            best = trial
    if best is None:
        best = fit_gmix_model(pixels, reconv, model=model, guess=guess, priors=priors,
                              data=data, rng=rng, n_retry=n_retry)
    return best, am


def _better_fit(new, old):
    """True if fit ``new`` beats ``old``: unflagged first, then lower chi^2."""
    if bool(new["flags"]) != bool(old["flags"]):
        return not new["flags"]
    return new["chi2"] < old["chi2"]


def measure_object(obs_list, object_id, seed=0, model="gauss", step=0.01, priors=None,
                   fixnoise=True, n_retry=3, zero_point=30.0, margin=8, dilation=None,
                   noise_sign=1.0, noise_rotation=0, start_T_factors=(1.0, 0.4, 2.5),
                   max_gain=None, bad_pixel_fill="symmetric", seed_label=None):
    """Metacalibration shapes of one object from its epochs.

    Parameters
    ----------
    obs_list : list of Observation
        Epochs (image, weight, Jacobian at the object, PSF image each).
    object_id : int
        Object identifier: with ``seed`` it fixes every random number used for the object.
    seed : int
        Configured seed.
    model : str
        Galaxy model ``gauss``, ``exp`` or ``dev``.
    step : float
        Metacal shear step.
    priors : Priors, optional
        Priors of the fits (default :class:`Priors` with a centre prior of one pixel).
    fixnoise : bool
        Add the sheared 90-degree-rotated noise image (Sheldon & Huff 2017).
    n_retry : int
        Perturbed restarts of a failed fit.
    zero_point : float
        Magnitude zero point of the fluxes.
    margin : int
        Margin of the Fourier lattice of the sheared images (pixels).
    dilation : float, optional
        Size factor of the round reconvolution Gaussian relative to the major axis of the
        fitted PSF Gaussian (default ``1 + 2 step``).
    noise_sign : float
        Multiplies the correction noise. Simulations with antithetic pairs (the same galaxy
        with pixel noise ``+n`` and ``-n``) pass -1 for the second stamp so that the
        first-order noise terms of both noises cancel in the pair; any single stamp is still
        an exact draw of the method.
    noise_rotation : int
        Quarter turns (counter-clockwise) of the correction noise: simulations whose
        rotated stamps are exact rotations of other stamps (noise included) pass the turns
        so that the correction noise rotates with the image.
    start_T_factors : sequence of float
        Each of the five fits starts from the adaptive-moments guess of its own image with
        the size multiplied by each factor and keeps the converged fit of lowest chi^2: at
        low S/N the likelihood of a small galaxy can have two minima along the
        size-ellipticity degeneracy, and a single start lands in the higher one for some of
        them. The five images get the same procedure so that the response is that of one
        estimator, switches between minima included.
    max_gain : float, optional
        Flag the object (``FLAG_MAX_GAIN`` in ``flags`` and ``mcal_flags``) when the
        deconvolution multiplies some frequency by more than this, ``max |G(k) / P(k)|``
        over the frequencies the reconvolution Gaussian ``G`` keeps, for some epoch: a PSF
        image whose transform nearly vanishes there (a noisy or badly fitted PSF model)
        turns pixel noise into large sheared-image artefacts. None: never flag.
    bad_pixel_fill : {"symmetric", "model"}
        How masked pixels are filled before the deconvolution: the point-symmetric mirror of
        the galaxy where it is good and the PSF-convolved Gaussian fit elsewhere (default),
        or the Gaussian fit everywhere. The Gaussian fill is wrong in the wings of
        non-Gaussian galaxies, differently in the sheared images: m1 = -0.0042 on noiseless
        stamps with 1% bad pixels and a bad column, against -0.0004 with the mirror
        (pre-registered runs P5 / P7, bench/RESULTS.md).
    seed_label : int, optional
        Replaces ``object_id`` in the seeds of the object's random numbers (the output rows
        keep ``object_id``): e.g. a label of the object's sky position, so that simulations
        of the same sky give an object the same random numbers whatever its detection number
        (:func:`shapepipe.modules.ngmix.tile.position_labels`).

    Returns
    -------
    dict
        ``{type: row}`` for the five types; a row is a dict of :data:`COLUMNS`.
    """
    if noise_rotation % 2 and any(o.shape[0] != o.shape[1] for o in obs_list):
        raise ValueError(f"noise_rotation={noise_rotation} needs square stamps")
    # Separate streams: the correction noise depends only on (seed, id, epoch shapes), never
    # on how many retries some fit needed.
    label = int(object_id if seed_label is None else seed_label)
    rng = make_rng(seed, label, "fit")
    noise_rng = make_rng(seed, label, "noise")
    rows = {t: _empty_row(object_id, 0) for t in METACAL_TYPES}
    if dilation is None:
        dilation = 1.0 + 2.0 * abs(step)

    # PSF of each epoch: Gaussian fit, used for the reconvolution size and reported.
    psf_fits, good_obs, flags = [], [], 0
    for obs in obs_list:
        if obs.psf is None:
            raise ValueError("every observation needs a PSF image for metacalibration")
        pf = fit_psf_gauss(obs.psf, obs.psf_jacobian())
        if pf["flags"]:
            flags |= FLAG_PSF_FAILED
            continue
        psf_fits.append(pf)
        good_obs.append(obs)
    if not good_obs:
        for row in rows.values():
            row["flags"] = row["mcal_flags"] = flags | FLAG_NO_EPOCHS
        return rows
    tpsfo = np.mean([pf["T"] for pf in psf_fits])
    g1o = np.mean([pf["g1"] for pf in psf_fits])
    g2o = np.mean([pf["g2"] for pf in psf_fits])
    # Round reconvolution PSF covering the largest PSF axis of every epoch, dilated.
    lam = max(np.linalg.eigvalsh(np.array([[pf["gmix"].cuu[0], pf["gmix"].cuv[0]],
                                           [pf["gmix"].cuv[0], pf["gmix"].cvv[0]]])).max()
              for pf in psf_fits)
    sigma_r = np.sqrt(lam) * dilation
    reconv = GMix.round_gauss(2.0 * sigma_r ** 2)

    # Sheared images of every epoch.
    images = {t: [] for t in METACAL_TYPES}
    try:
        for obs, pf in zip(good_obs, psf_fits):
            image = _fill_bad_pixels(obs, pf, rng, bad_pixel_fill)
            noise = None
            if fixnoise:
                w = obs.weight
                ok = w > 0
                fill_w = np.median(w[ok]) if ok.any() else 1.0
                sigma = 1.0 / np.sqrt(np.where(ok, w, fill_w))
                noise = noise_rng.standard_normal(w.shape)
                if noise_rotation % 4:
                    noise = np.rot90(noise, -noise_rotation)
                noise = noise * (sigma * noise_sign)
            imager = MetacalImager(obs.shape, obs.jacobian, obs.psf, sigma_r, margin=margin)
            for t, im in imager.make_all(image, noise, step=step).items():
                images[t].append(im)
            if max_gain is not None and imager.max_gain > max_gain:
                flags |= FLAG_MAX_GAIN
    except (FloatingPointError, ValueError, np.linalg.LinAlgError):
        for row in rows.values():
            row["flags"] = row["mcal_flags"] = flags | FLAG_METACAL_FAILED
        return rows

    pixels = PixelSet(good_obs, weight_factor=0.5 if fixnoise else 1.0)
    if priors is None:
        scale = float(np.mean([o.jacobian.scale for o in good_obs]))
        priors = Priors(cen_sigma=scale)

    # Every type is fitted by the same procedure, from guesses made on its own image: the
    # response must be that of one estimator. (Starting the sheared fits from the unsheared
    # solution made them follow its minimum, so when a low-S/N likelihood has two nearly equal
    # minima metacal missed the switches between them that a real shear causes: m was
    # +0.7% at S/N 10-13.)
    t_r = 2.0 * sigma_r ** 2
    results, admom = {}, {}
    for t in METACAL_TYPES:
        results[t], admom[t] = _fit_image(images[t], good_obs, pixels, reconv, model, priors,
                                          t_r, sigma_r, start_T_factors, n_retry,
                                          make_rng(seed, label, "fit"))
    am = admom["noshear"]
    mcal_flags = flags
    for res in results.values():
        mcal_flags |= res["flags"]
    for t, res in results.items():
        row = rows[t]
        x, cov = res["pars"], res["pars_cov"]
        # Same pixels, weights and PSF as the fit. The fit's PSF is the round reconvolution
        # Gaussian (making it round changes nothing); the galaxy model is made round.
        row["T_r"], row["s2n_r"] = round_measures(pixels, x, reconv, model)
        err = np.sqrt(np.where(np.diag(cov) > 0, np.diag(cov), np.nan))
        row.update({
            "n_epoch_model": len(good_obs),
            "u0": x[0], "v0": x[1], "g1": x[2], "g2": x[3], "T": x[4], "flux": x[5],
            "g1_err": err[2], "g2_err": err[3], "g1g2_cov": cov[2, 3], "T_err": err[4],
            "flux_err": err[5], "Tpsf": t_r, "g1_psf": 0.0, "g2_psf": 0.0,
            "T_psfo_ngmix": tpsfo, "g1_psfo_ngmix": g1o, "g2_psfo_ngmix": g2o,
            "g1_err_psfo_ngmix": 0.0, "g2_err_psfo_ngmix": 0.0, "T_err_psfo_ngmix": 0.0,
            "moments_fail": int(am["flags"] != 0), "s2n": res["s2n"],
            "chi2": res["chi2"], "npix": pixels.data.size,
            "flags": flags | res["flags"], "mcal_flags": mcal_flags,
            "ntry_fit": res["ntry"], "nfev": res["nfev"],
        })
        with np.errstate(invalid="ignore", divide="ignore"):
            row["mag"] = zero_point - 2.5 * np.log10(x[5]) if x[5] > 0 else np.nan
            row["mag_err"] = 2.5 / np.log(10) * err[5] / x[5] if x[5] > 0 else np.nan
    return rows


def rows_to_tables(rows_list):
    """Rows of many objects (list of ``{type: row}``) -> ``{type: numpy structured array}``."""
    dtype = np.dtype(COLUMNS)
    tables = {}
    for t in METACAL_TYPES:
        tab = np.zeros(len(rows_list), dtype=dtype)
        for name, _ in COLUMNS:
            tab[name] = [r[t][name] for r in rows_list]
        tables[t] = tab
    return tables


def write_catalog(path, tables, header=None):
    """Write the metacal catalogue: HDUs NOSHEAR, 1P, 1M, 2P, 2M (atomically).

    Parameters
    ----------
    path : str
        Output FITS file.
    tables : dict
        ``{type: structured array}`` (from :func:`rows_to_tables`) or a list of rows.
    header : dict, optional
        Extra keywords for the primary header (seed, model, step...).
    """
    from astropy.io import fits

    from shapepipe.utils.atomic import write_fits

    if isinstance(tables, list):
        tables = rows_to_tables(tables)
    primary = fits.PrimaryHDU()
    for key, value in (header or {}).items():
        primary.header[key] = value
    hdus = [primary]
    for t in METACAL_TYPES:
        hdus.append(fits.BinTableHDU(tables[t], name=HDU_NAMES[t]))
    write_fits(fits.HDUList(hdus), path)


def read_catalog(path):
    """``{type: numpy structured array}`` of a metacal catalogue."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        return {t: np.asarray(hdul[HDU_NAMES[t]].data).copy() for t in METACAL_TYPES}


def shear_response(tables, step=0.01):
    """Per-object shear response matrix ``R[i, j] = d g_i / d gamma_j`` (N, 2, 2)."""
    r = np.empty((len(tables["noshear"]), 2, 2))
    for j, (p, m) in enumerate((("1p", "1m"), ("2p", "2m"))):
        r[:, 0, j] = (tables[p]["g1"] - tables[m]["g1"]) / (2 * step)
        r[:, 1, j] = (tables[p]["g2"] - tables[m]["g2"]) / (2 * step)
    return r


def selection_response(tables, select, step=0.01):
    """Mean selection response matrix ``R_S`` (Sheldon & Huff 2017, eq. 13).

    Parameters
    ----------
    tables : dict
        Metacal catalogue.
    select : callable
        ``select(table) -> bool array``; applied to each sheared catalogue.

    Returns
    -------
    numpy.ndarray, shape (2, 2)
    """
    rs = np.empty((2, 2))
    for j, (p, m) in enumerate((("1p", "1m"), ("2p", "2m"))):
        sp = select(tables[p])
        sm = select(tables[m])
        ns = tables["noshear"]
        for i, name in enumerate(("g1", "g2")):
            rs[i, j] = (np.mean(ns[name][sp]) - np.mean(ns[name][sm])) / (2 * step)
    return rs


__all__ = ["measure_object", "rows_to_tables", "write_catalog", "read_catalog",
           "shear_response", "selection_response", "metacal_shears", "NO_PRIORS"]
