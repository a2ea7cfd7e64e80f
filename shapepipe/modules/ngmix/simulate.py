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


def draw_group(index, seed, shear, n_epoch=1, stamp_size=51, pixel_scale=0.187,
                 snr_range=(10.0, 100.0), hlr_range=(0.3, 0.8), fwhm_range=(0.6, 0.8),
                 beta_range=(3.0, 4.8), psf_g_max=0.03, e_sigma=0.26):
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

    Returns
    -------
    dict
        ``image``, ``weight``, ``psf`` (8, n_epoch, S, S), ``sign``, ``rot``, ``nsign`` (8,)
        and ``snr`` (target S/N of the galaxy over all epochs).
    """
    import galsim

    rng = make_rng(seed, "group", int(index))
    snr = np.exp(rng.uniform(*np.log(snr_range)))
    hlr = rng.uniform(*hlr_range)
    # Intrinsic ellipticity: Gaussian components truncated to |e| < 0.8.
    while True:
        e = rng.normal(0.0, e_sigma, 2)
        if np.hypot(*e) < 0.8:
            break
    shape = galsim.Shear(g1=e[0], g2=e[1])
    offset = rng.uniform(-0.5, 0.5, 2) * pixel_scale
    S = stamp_size
    images = np.empty((8, n_epoch, S, S))
    weights = np.empty((8, n_epoch, S, S))
    psfs = np.empty((8, n_epoch, S, S))
    epochs = []
    for _ in range(n_epoch):
        fwhm = rng.uniform(*fwhm_range)
        beta = rng.uniform(*beta_range)
        pg = rng.uniform(-psf_g_max, psf_g_max, 2)
        psf = galsim.Moffat(beta=beta, fwhm=fwhm).shear(g1=pg[0], g2=pg[1])
        psf_im = psf.drawImage(nx=S, ny=S, scale=pixel_scale).array
        noise = rng.standard_normal((S, S))
        epochs.append((psf, psf_im, noise))
    base = galsim.Exponential(half_light_radius=hlr, flux=1.0).shear(shape)
    signs = np.array([1, -1, 1, -1, 1, -1, 1, -1])
    rots = np.array([0, 0, 90, 90, 0, 0, 90, 90])
    nsigns = np.array([1, 1, 1, 1, -1, -1, -1, -1])
    sigma = None
    for k in range(4):
        gal = base.rotate(rots[k] * galsim.degrees) if rots[k] else base
        gal = gal.shear(g1=signs[k] * shear[0], g2=signs[k] * shear[1]).shift(*offset)
        for ep, (psf, psf_im, noise) in enumerate(epochs):
            im = galsim.Convolve(gal, psf).drawImage(nx=S, ny=S, scale=pixel_scale).array
            if sigma is None:
                # Noise level giving the target optimal S/N over all epochs, fixed from the
                # first drawn stamp so that all stamps share it.
                sigma = np.sqrt(np.sum(im ** 2) * n_epoch) / snr
            for kk in (k, k + 4):
                images[kk, ep] = im + (nsigns[kk] * sigma) * noise
                weights[kk, ep] = 1.0 / sigma ** 2
                psfs[kk, ep] = psf_im
    return {"image": images, "weight": weights, "psf": psfs, "sign": signs, "rot": rots,
            "nsign": nsigns, "snr": snr}


def make_stamp_set(n_gal, seed, shear, n_epoch=1, **kwargs):
    """Stamps of ``n_gal`` groups of eight in the ``measure_shapes`` npz layout.

    Returns
    -------
    dict
        ``image``, ``weight``, ``psf`` (8 n_gal, n_epoch, S, S), ``id`` (the stamps of one
        galaxy and orientation share an id, hence the same correction noise, which the
        measurement must multiply by ``nsign``), ``sign``, ``rot``, ``nsign``, ``group``
        (galaxy index), ``pixel_scale``.
    """
    parts = [draw_group(i, seed, shear, n_epoch=n_epoch, **kwargs) for i in range(n_gal)]
    image = np.concatenate([p["image"] for p in parts])
    group = np.repeat(np.arange(n_gal), 8)
    rot = np.concatenate([p["rot"] for p in parts])
    return {
        "image": image,
        "weight": np.concatenate([p["weight"] for p in parts]),
        "psf": np.concatenate([p["psf"] for p in parts]),
        "id": group * 2 + (rot == 90),
        "sign": np.concatenate([p["sign"] for p in parts]),
        "rot": rot,
        "nsign": np.concatenate([p["nsign"] for p in parts]),
        "group": group,
        "pixel_scale": kwargs.get("pixel_scale", 0.187),
    }


def shear_bias(tables, stamps, shear, step=0.01):
    """Multiplicative and additive biases from the catalogues of :func:`make_stamp_set`.

    For each group ``q`` and component ``i``: ``D_q = (g_i(+) - g_i(-)) / 2`` and
    ``S_q = (g_i(+) + g_i(-)) / 2`` averaged over orientations and noise signs, and
    ``P_q = sum_j R_ij gamma_j`` the response to the applied shear predicted by the metacal
    response matrix (its off-diagonal terms fluctuate per object; including them removes
    that scatter). Then ``1 + m_i = sum D / sum P`` and ``c_i = sum S / sum R_ii``; errors
    from the scatter of the groups (delta method). Objects with flags are dropped with
    their whole group.

    Returns
    -------
    dict
        ``m1, m1_err, m2, m2_err, c1, c1_err, c2, c2_err, n_used``; ``m`` is NaN for a
        component whose applied shear is zero.
    """
    ns = tables["noshear"]
    group = stamps["group"]
    n_q = group.max() + 1
    bad = np.zeros(n_q, bool)
    np.logical_or.at(bad, group, ns["mcal_flags"] != 0)
    keep = ~bad
    out = {"n_used": int(keep.sum())}
    sign = stamps["sign"]
    size = np.bincount(group, minlength=n_q)[keep] / 2.0

    def per_group(values):
        return np.bincount(group, weights=values, minlength=n_q)[keep] / (2.0 * size)

    resp = {}
    for i, ci in enumerate(("1", "2")):
        for j, cj in enumerate(("1", "2")):
            resp[i, j] = per_group((tables[cj + "p"]["g" + ci] - tables[cj + "m"]["g" + ci])
                                   / (2 * step))
    for i, comp in enumerate(("1", "2")):
        g = ns["g" + comp]
        diff = per_group(sign * g)
        summ = per_group(g)
        rii = resp[i, i]
        n = diff.size
        mean_r = rii.mean()
        c = summ.mean() / mean_r
        out["c" + comp] = c
        out["c" + comp + "_err"] = np.sqrt(np.var(summ - c * rii, ddof=1) / n) / mean_r
        if shear[i] != 0:
            pred = resp[i, 0] * shear[0] + resp[i, 1] * shear[1]
            ratio = diff.mean() / pred.mean()
            out["m" + comp] = ratio - 1.0
            out["m" + comp + "_err"] = (np.sqrt(np.var(diff - ratio * pred, ddof=1) / n)
                                        / abs(pred.mean()))
        else:
            out["m" + comp] = np.nan
            out["m" + comp + "_err"] = np.nan
    return out
