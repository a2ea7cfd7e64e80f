"""GalSim stamps of known shear for tests and benchmarks of the shape measurement.

Exponential galaxies under Moffat PSFs, in sets of eight that share the intrinsic shape,
size, flux, PSFs and noise field: applied shear ``+g`` and ``-g``, intrinsic orientation
``0`` and ``90`` degrees, pixel noise ``+n`` and ``-n``. The rotation cancels shape noise;
shared noise between ``+g`` and ``-g`` makes the shear signal nearly noise free (paired
estimators, Pujol et al. 2019); the antithetic noise sign cancels the terms linear in the
noise -- the metacal response of an individual noisy object fluctuates by ~5/(S/N), a
fluctuation the pairs in shear alone do not remove. Every stamp on its own is an ordinary
draw, so the mean over all of them is unbiased.
"""

import numpy as np

from shapepipe.utils.rng import make_rng


def sample_snr(rng, snr_range, snr_slope=0.0, size=None):
    """S/N drawn for a log-uniform target population, optionally importance-sampled.

    Parameters
    ----------
    rng : numpy.random.Generator
    snr_range : (float, float)
    snr_slope : float
        ``a``: draw with density ``~ snr^-a`` in log S/N (0: log-uniform).
    size : int, optional

    Returns
    -------
    snr, weight
        The weight ``p / q`` (mean 1) restores the log-uniform population in weighted means.
    """
    lo, hi = np.log(snr_range)
    width = hi - lo
    if snr_slope > 0 and width > 0:
        # Inverse CDF of the truncated exponential density ~ exp(-a (u - lo)) on [lo, hi].
        a = float(snr_slope)
        tail = -np.expm1(-a * width)
        log_snr = lo - np.log1p(-rng.uniform(size=size) * tail) / a
        weight = tail * np.exp(a * (log_snr - lo)) / (a * width)
    else:
        log_snr = rng.uniform(lo, hi, size=size)
        weight = np.ones_like(log_snr) if size is not None else 1.0
    return np.exp(log_snr), weight


def snr_from_weight(weight, snr_range, snr_slope):
    """The S/N that :func:`sample_snr` drew, from its importance weight (the inverse map).

    The weight grows monotonically with the S/N when ``snr_slope > 0``, so saved per-galaxy
    sums can be split by S/N without storing it.
    """
    lo, hi = np.log(snr_range)
    width = hi - lo
    a = float(snr_slope)
    if not (a > 0 and width > 0):
        raise ValueError(f"snr_slope = {snr_slope}: the S/N is recoverable only for slope > 0")
    tail = -np.expm1(-a * width)
    return np.exp(lo + np.log(np.asarray(weight) * a * width / tail) / a)


def draw_group(index, seed, shear, n_epoch=1, stamp_size=51, pixel_scale=0.187,
                 snr_range=(10.0, 100.0), hlr_range=(0.3, 0.8), fwhm_range=(0.6, 0.8),
                 beta_range=(3.0, 4.8), psf_g_max=0.03, e_sigma=0.26, rotate_noise=False,
                 snr_slope=0.0, rotations=(0, 90), psf_g_mean=(0.0, 0.0), jacobian=None,
                 mask_fraction=0.0, psf_star_snr=None):
    """The eight stamps of one intrinsic galaxy.

    Parameters
    ----------
    index : int
        Galaxy number; with ``seed`` it fixes every random draw.
    seed : int
    shear : (float, float)
        Applied shear ``(g1, g2)``: stamp ``k`` has shear sign ``sign[k]``, rotation
        ``rot[k]`` and noise sign ``nsign[k]``.
    n_epoch : int
        Epochs (each with its own PSF and noise).
    rotate_noise : bool
        Rotate the pixel noise (and the sub-pixel offset) of the 90-degree stamps with the
        galaxy: a rotated stamp is then the exact rotation of the unrotated stamp of
        opposite shear, but for the PSF, which is not rotated. Its shape cancels that of
        the unrotated stamp up to the PSF's leakage, which makes the additive bias
        measurable from far fewer galaxies; the two orientations then carry nearly the
        same information on the multiplicative bias. The measurement must rotate the
        correction noise too (``noise_rotation`` of ``measure_object``, returned as
        ``nrot``).
    rotations : sequence of int
        Orientations (degrees, multiples of 90) of the intrinsic galaxy; ``(0,)`` gives
        groups of four (+-g, +-n), the most efficient design for m alone (the +-g pairs
        already cancel the intrinsic shape in the shear signal).
    snr_slope : float
        Importance sampling of the S/N. The target population is log-uniform in
        ``snr_range``; with ``snr_slope = a > 0`` the S/N is drawn with density
        ``~ snr^-a`` in log S/N instead and the group carries the weight ``p / q`` (mean 1)
        that restores the log-uniform population in weighted means. The scatter of the
        paired shear estimates falls as ~snr^-1.45, so drawing low-S/N galaxies more often
        and weighting them down measures the same biases with fewer galaxies (a = 1.45
        halves the variance for a given number of galaxies).

    psf_g_mean : (float, float)
        Added to every PSF's random shear: a non-zero mean PSF ellipticity, so that the
        additive bias measures the PSF leakage ``alpha = c / psf_g_mean``.
    jacobian : array_like (2, 2), optional
        Pixel -> sky matrix ``[[du/dx, du/dy], [dv/dx, dv/dy]]`` (arcsec per pixel) of a
        sheared/rotated WCS used to draw galaxy and PSF (default: ``pixel_scale`` square
        pixels). The measurement must be given the same Jacobian.
    mask_fraction : float
        Fraction of each epoch's pixels flagged bad (cosmic-ray-like single pixels, plus one
        bad column when > 0), set to a large value in the image; returned in ``mask``. The
        +-g and +-n stamps share the masks (the noise pairs stay exact).
    psf_star_snr : float, optional
        When set, ``psf`` is not the true PSF but a 3-Gaussian mixture fitted by EM to one
        noisy star image of this S/N (a fitted PSF model, with model and noise errors), and
        the true PSF is returned in ``psf_true``.

    Returns
    -------
    dict
        ``image``, ``weight``, ``psf``, ``mask`` (K, n_epoch, S, S), ``sign``, ``rot``,
        ``nsign``, ``nrot`` (K,) with ``K = 4 len(rotations)``, ``snr`` (target S/N of the
        galaxy over all epochs) and ``snr_weight`` (the importance weight, 1 without
        importance sampling).
    """
    import galsim

    if rotate_noise and (mask_fraction > 0 or jacobian is not None):
        raise ValueError("rotate_noise needs square pixels and no masks (the rotated stamps "
                         "must be exact rotations)")
    rng = make_rng(seed, "group", int(index))
    snr, snr_weight = sample_snr(rng, snr_range, snr_slope)
    hlr = rng.uniform(*hlr_range)
    # Intrinsic ellipticity: Gaussian components truncated to |e| < 0.8.
    while True:
        e = rng.normal(0.0, e_sigma, 2)
        if np.hypot(*e) < 0.8:
            break
    shape = galsim.Shear(g1=e[0], g2=e[1])
    offset = rng.uniform(-0.5, 0.5, 2) * pixel_scale
    S = stamp_size
    half = 2 * len(rotations)
    images = np.empty((2 * half, n_epoch, S, S))
    weights = np.empty_like(images)
    psfs = np.empty_like(images)
    draw = ({"scale": pixel_scale} if jacobian is None
            else {"wcs": galsim.JacobianWCS(*np.asarray(jacobian, float).ravel())})
    epochs = []
    for _ in range(n_epoch):
        fwhm = rng.uniform(*fwhm_range)
        beta = rng.uniform(*beta_range)
        pg = rng.uniform(-psf_g_max, psf_g_max, 2) + np.asarray(psf_g_mean, float)
        psf = galsim.Moffat(beta=beta, fwhm=fwhm).shear(g1=pg[0], g2=pg[1])
        psf_im = psf.drawImage(nx=S, ny=S, **draw).array
        noise = rng.standard_normal((S, S))
        epochs.append((psf, psf_im, noise))
    # Extra draws come after the standard ones, from a stream of their own, so that the
    # standard design's galaxies are unchanged by these options.
    extra = make_rng(seed, "group-extra", int(index))
    masks = np.zeros((n_epoch, S, S), bool)
    if mask_fraction > 0:
        for ep in range(n_epoch):
            masks[ep] = extra.uniform(size=(S, S)) < mask_fraction
            masks[ep][:, extra.integers(0, S)] = True
    psf_meas = [psf_im for _, psf_im, _ in epochs]
    if psf_star_snr is not None:
        psf_meas = [fitted_psf_image(psf_im, psf_star_snr, extra, jacobian, pixel_scale)
                    for _, psf_im, _ in epochs]
    base = galsim.Exponential(half_light_radius=hlr, flux=1.0).shear(shape)
    # Stamps k < half have noise +n, stamp k + half the same with -n.
    signs = np.tile([1, -1], 2 * len(rotations))
    rots = np.tile(np.repeat(np.asarray(rotations, int), 2), 2)
    nsigns = np.repeat([1, -1], half)
    sigma = None
    # Quarter turns (counter-clockwise) of the correction noise of each stamp.
    nrots = (rots // 90) % 4 if rotate_noise else np.zeros(rots.size, int)
    for k in range(half):
        gal = base.rotate(rots[k] * galsim.degrees) if rots[k] else base
        shift = offset
        if rotate_noise and rots[k]:
            # galsim's +90 degrees maps (x, y) to (-y, x): np.rot90(..., -1) of an image.
            for _ in range(nrots[k]):
                shift = (-shift[1], shift[0])
        gal = gal.shear(g1=signs[k] * shear[0], g2=signs[k] * shear[1]).shift(*shift)
        for ep, (psf, _, noise) in enumerate(epochs):
            if nrots[k]:
                noise = np.rot90(noise, -nrots[k])
            im = galsim.Convolve(gal, psf).drawImage(nx=S, ny=S, **draw).array
            if sigma is None:
                # Noise level giving the target optimal S/N over all epochs, fixed from the
                # first drawn stamp so that all stamps share it.
                sigma = np.sqrt(np.sum(im ** 2) * n_epoch) / snr
            for kk in (k, k + half):
                images[kk, ep] = im + (nsigns[kk] * sigma) * noise
                # Bad pixels carry junk (a cosmic-ray-like value) that must never be used.
                images[kk, ep][masks[ep]] = 1e4 * sigma
                weights[kk, ep] = 1.0 / sigma ** 2
                psfs[kk, ep] = psf_meas[ep]
    mask_out = np.broadcast_to(masks, images.shape)
    out = {"image": images, "weight": weights, "psf": psfs, "mask": mask_out, "sign": signs,
           "rot": rots, "nsign": nsigns, "nrot": nrots, "snr": snr, "snr_weight": snr_weight}
    if psf_star_snr is not None:
        out["psf_true"] = np.array([psf_im for _, psf_im, _ in epochs])
    return out


def fitted_psf_image(psf_im, star_snr, rng, jacobian=None, pixel_scale=0.187, n_gauss=3):
    """A PSF model as a pipeline would have it: a Gaussian mixture fitted to a noisy star.

    Parameters
    ----------
    psf_im : numpy.ndarray
        True PSF image (unit sum).
    star_snr : float
        Optimal S/N of the star the model is fitted to.
    rng : numpy.random.Generator
    jacobian : array_like (2, 2), optional
        Pixel -> sky matrix (default: square pixels of ``pixel_scale``).
    n_gauss : int
        Gaussians of the EM mixture.

    Returns
    -------
    numpy.ndarray
        The fitted mixture rendered on the same grid, unit sum.
    """
    from shapepipe.modules.ngmix.fitting import fit_psf_em
    from shapepipe.modules.ngmix.observation import Jacobian

    ny, nx = psf_im.shape
    matrix = (np.diag([pixel_scale, pixel_scale]) if jacobian is None
              else np.asarray(jacobian, float))
    jac = Jacobian((nx - 1) / 2.0, (ny - 1) / 2.0, matrix)
    sigma = np.sqrt(np.sum(psf_im ** 2)) / star_snr
    star = psf_im + sigma * rng.standard_normal(psf_im.shape)
    fit = fit_psf_em(star, jac, n_gauss=n_gauss)
    y, x = np.mgrid[0:ny, 0:nx]
    u, v = jac.uv(x, y)
    model = fit["gmix"].render(u, v, jac.det)
    return model / model.sum()


def make_stamp_set(n_gal, seed, shear, n_epoch=1, **kwargs):
    """Stamps of ``n_gal`` groups (of :func:`draw_group`) in the ``measure_shapes`` layout.

    Returns
    -------
    dict
        ``image``, ``weight``, ``psf`` (K n_gal, n_epoch, S, S), ``id`` (the stamps of one
        galaxy and orientation share an id, hence the same correction noise, which the
        measurement must multiply by ``nsign``; with ``rotate_noise`` both orientations
        share it and the measurement rotates it by ``nrot``), ``sign``, ``rot``, ``nsign``,
        ``nrot``, ``snr_weight``, ``group`` (galaxy index), ``pixel_scale``.
    """
    parts = [draw_group(i, seed, shear, n_epoch=n_epoch, **kwargs) for i in range(n_gal)]
    image = np.concatenate([p["image"] for p in parts])
    per_group = len(parts[0]["sign"]) if parts else 0
    group = np.repeat(np.arange(n_gal), per_group)
    rot = np.concatenate([p["rot"] for p in parts])
    shared_id = kwargs.get("rotate_noise", False)
    return {
        "image": image,
        "weight": np.concatenate([p["weight"] for p in parts]),
        "psf": np.concatenate([p["psf"] for p in parts]),
        "id": group * 2 + ((rot == 90) & (not shared_id)),
        "sign": np.concatenate([p["sign"] for p in parts]),
        "rot": rot,
        "nsign": np.concatenate([p["nsign"] for p in parts]),
        "nrot": np.concatenate([p["nrot"] for p in parts]),
        "snr_weight": np.repeat([p["snr_weight"] for p in parts], per_group),
        "group": group,
        "pixel_scale": kwargs.get("pixel_scale", 0.187),
    }


def group_sums(tables, stamps, shear, step=0.01):
    """Per-galaxy paired quantities from the catalogues of groups of eight stamps.

    For each group ``q`` and component ``i``: ``D_i = (g_i(+) - g_i(-)) / 2`` and
    ``S_i = (g_i(+) + g_i(-)) / 2`` averaged over orientations and noise signs, the
    metacal response matrix ``R_ij`` averaged the same way and ``P_i = sum_j R_ij gamma_j``,
    the response to the applied shear that metacal predicts (its off-diagonal terms
    fluctuate per object; including them removes that scatter).

    Parameters
    ----------
    tables : dict
        Metacal catalogue of the stamps.
    stamps : dict
        ``sign``, ``group`` and optionally ``snr_weight`` per stamp.

    Returns
    -------
    dict
        Arrays over groups: ``D1, D2, P1, P2, S1, S2, R11, R22, weight`` and ``flagged``
        (some stamp of the group has ``mcal_flags``).
    """
    ns = tables["noshear"]
    group = np.asarray(stamps["group"])
    n_q = group.max() + 1
    flagged = np.zeros(n_q, bool)
    np.logical_or.at(flagged, group, ns["mcal_flags"] != 0)
    count = np.bincount(group, minlength=n_q).astype(float)
    sign = np.asarray(stamps["sign"])

    def per_group(values):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.bincount(group, weights=values, minlength=n_q) / count

    out = {"flagged": flagged}
    weight = stamps.get("snr_weight")
    out["weight"] = (np.ones(n_q) if weight is None
                     else np.bincount(group, weights=weight, minlength=n_q) / count)
    resp = {}
    for i, ci in enumerate(("1", "2")):
        for j, cj in enumerate(("1", "2")):
            resp[i, j] = per_group((tables[cj + "p"]["g" + ci] - tables[cj + "m"]["g" + ci])
                                   / (2 * step))
    for i, comp in enumerate(("1", "2")):
        g = np.where(flagged[group], 0.0, ns["g" + comp])
        out["D" + comp] = per_group(sign * g)
        out["S" + comp] = per_group(g)
        out["R" + comp * 2] = resp[i, i]
        out["P" + comp] = resp[i, 0] * shear[0] + resp[i, 1] * shear[1]
    return out


def bias_from_groups(groups, shear):
    """Multiplicative and additive biases from :func:`group_sums` (weighted, unflagged).

    ``1 + m_i = sum w D_i / sum w P_i`` and ``c_i = sum w S_i / sum w R_ii``; 1-sigma
    errors from the scatter of the groups (delta method, ``sum w^2 (D - (1 + m) P)^2``).
    ``m`` is the bias of the response along the applied shear ``gamma``,
    ``1 + m = sum w D.gamma / sum w P.gamma``: with both components sheared it weighs m1
    and m2 and its error includes their covariance from galaxy to galaxy.

    Returns
    -------
    dict
        ``m, m_err, m1, m1_err, m2, m2_err, c1, c1_err, c2, c2_err, n_used, n_eff``
        (``n_eff`` the effective number of galaxies of the importance weights); ``m_i`` is
        NaN for a component whose applied shear is zero.
    """
    keep = ~groups["flagged"]
    w = groups["weight"][keep]
    n = int(keep.sum())
    out = {"n_used": n, "n_eff": float(w.sum() ** 2 / np.sum(w * w)) if n else 0.0}
    corr = n / (n - 1.0) if n > 1 else np.nan

    def ratio(num, den):
        sw_den = np.sum(w * den)
        value = np.sum(w * num) / sw_den
        err = np.sqrt(corr * np.sum(w * w * (num - value * den) ** 2)) / abs(sw_den)
        return value, err

    for i, comp in enumerate(("1", "2")):
        c, c_err = ratio(groups["S" + comp][keep], groups["R" + comp * 2][keep])
        out["c" + comp], out["c" + comp + "_err"] = c, c_err
        if shear[i] != 0:
            r, r_err = ratio(groups["D" + comp][keep], groups["P" + comp][keep])
            out["m" + comp], out["m" + comp + "_err"] = r - 1.0, r_err
        else:
            out["m" + comp] = out["m" + comp + "_err"] = np.nan
    along = [(groups["D" + c][keep] * g, groups["P" + c][keep] * g)
             for c, g in zip(("1", "2"), shear)]
    r, r_err = ratio(along[0][0] + along[1][0], along[0][1] + along[1][1])
    out["m"], out["m_err"] = r - 1.0, r_err
    return out


def paired_bias_difference(groups_a, groups_b, shear, weighted=True):
    """``m_a - m_b`` of two runs on the same galaxies (same seed), with its paired error.

    Galaxy k of both runs has the same shape, noise and mask, so the galaxy-to-galaxy
    scatter common to both cancels in the difference: the error is that of the difference
    itself (delta method over the galaxies unflagged in both), far below either run's.

    Parameters
    ----------
    groups_a, groups_b : dict
        :func:`group_sums` of the two runs, galaxy by galaxy in the same order.
    shear : (float, float)
        Applied shear.
    weighted : bool
        Importance weights (log-uniform S/N population) or unit ones (number counts).

    Returns
    -------
    dict
        ``dm, dm_err`` along the shear and ``n_used``.
    """
    n = min(len(groups_a["D1"]), len(groups_b["D1"]))
    keep = ~(groups_a["flagged"][:n] | groups_b["flagged"][:n])
    if weighted:
        if not np.allclose(groups_a["weight"][:n], groups_b["weight"][:n]):
            raise ValueError("the two runs' galaxies differ (weights): not the same seed?")
        w = groups_a["weight"][:n][keep]
    else:
        w = np.ones(int(keep.sum()))
    terms, value = [], 0.0
    for sign, g in ((1.0, groups_a), (-1.0, groups_b)):
        num = sum(g["D" + c][:n][keep] * s for c, s in zip(("1", "2"), shear))
        den = sum(g["P" + c][:n][keep] * s for c, s in zip(("1", "2"), shear))
        r = np.sum(w * num) / np.sum(w * den)
        value += sign * r
        terms.append(sign * w * (num - r * den) / np.sum(w * den))
    m = int(keep.sum())
    err = np.sqrt(m / (m - 1.0) * np.sum((terms[0] + terms[1]) ** 2)) if m > 1 else np.nan
    return {"dm": float(value), "dm_err": float(err), "n_used": m}


def shear_bias(tables, stamps, shear, step=0.01):
    """Multiplicative and additive biases of the stamps of :func:`make_stamp_set`.

    :func:`group_sums` then :func:`bias_from_groups`; objects with flags are dropped with
    their whole group.
    """
    return bias_from_groups(group_sums(tables, stamps, shear, step), shear)
