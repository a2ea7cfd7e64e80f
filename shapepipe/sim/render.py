"""Rendering of one CCD of one exposure: objects, sky, noise, saturation, cosmic rays, bad columns.

The science here is independent of the file layout: :func:`render_ccd` returns arrays and
headers; :mod:`shapepipe.sim.survey` writes them.
"""

import numpy as np

from shapepipe.sim import geometry as geo
from shapepipe.sim.psf import eval_model, model_row, moffat
from shapepipe.utils.rng import make_rng

FLAG_BAD = 1
FLAG_COSMIC = 2
FLAG_SATURATED = 4

SKY_LEVEL = 170.0  # ADU per pixel, dark r-band sky for MAGZP 30 and 0.187" pixels
MAX_STAMP_HALF = 300
HSM_STAMP = 49


def _gsparams():
    import galsim

    return galsim.GSParams(folding_threshold=5e-3, maxk_threshold=1e-3,
                           maximum_fft_size=8192)


def exposure_conditions(seed, exp_num):
    """Sky level and gradient, MJD and airmass of one exposure (deterministic)."""
    rng = make_rng(seed, "conditions", int(exp_num))
    i = int(exp_num) - geo.FIRST_EXPOSURE
    return {
        "sky": SKY_LEVEL * 10.0 ** (-0.4 * rng.uniform(-0.15, 0.15)),
        "grad": rng.normal(0.0, 0.02, 2),
        "mjd": 58000.0 + 0.003 * i + rng.uniform(0.0, 1e-3),
        "airmass": 1.0 + rng.uniform(0.0, 0.3),
    }


def star_stamp_half(flux, fwhm_px, beta, threshold):
    """Half-size (px) of a star stamp: radius where the Moffat falls below ``threshold`` (ADU)."""
    alpha = fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    peak = flux * (beta - 1.0) / (np.pi * alpha**2)
    ratio = np.maximum(peak / threshold, 1.0)
    r = alpha * np.sqrt(ratio ** (1.0 / beta) - 1.0)
    return np.clip(np.ceil(r + 2), 6, MAX_STAMP_HALF).astype(int)


def galaxy_stamp_half(flux, hlr_px, hlr_b_px, bulge_frac, e_abs, fwhm_px, threshold):
    """Half-size (px) of a galaxy stamp (exponential scale length times the S/B log ratio)."""
    axis = np.sqrt((1.0 + e_abs) / (1.0 - e_abs))
    h = hlr_px / 1.678 * axis  # exponential scale length along the major axis
    peak = flux / (2.0 * np.pi * np.maximum(h, 0.3) ** 2)
    r = h * np.log(np.maximum(peak / threshold, np.e)) + 3.0 * bulge_frac * hlr_b_px * axis
    return np.clip(np.ceil(r + 1.5 * fwhm_px + 3), 8, MAX_STAMP_HALF).astype(int)


def _add_stamp(array, stamp, x0, y0):
    """Add a stamp whose pixel [0, 0] is at 1-based (x0, y0) into ``array`` (clipped)."""
    ny, nx = array.shape
    sy, sx = stamp.shape
    xa, xb = max(x0, 1), min(x0 + sx - 1, nx)
    ya, yb = max(y0, 1), min(y0 + sy - 1, ny)
    if xa > xb or ya > yb:
        return
    array[ya - 1 : yb, xa - 1 : xb] += stamp[ya - y0 : yb - y0 + 1, xa - x0 : xb - x0 + 1]


def _draw(profile, x, y, half):
    """Draw a profile (pixel units) centred at 1-based (x, y) on a (2 half + 1)^2 stamp."""
    import galsim

    ic = int(np.floor(x + 0.5))
    jc = int(np.floor(y + 0.5))
    image = galsim.ImageF(2 * half + 1, 2 * half + 1, scale=1.0)
    profile.drawImage(image, offset=(x - ic, y - jc))
    return image.array, ic - half, jc - half


def galaxy_profile(flux, hlr_disk, hlr_bulge, bulge_frac, e1, e2, g1, g2, gsparams):
    """A bulge + disk galaxy on the sky (arcsec), intrinsic shape then shear applied."""
    import galsim

    disk = galsim.Exponential(half_light_radius=hlr_disk, gsparams=gsparams)
    if bulge_frac > 0:
        bulge = galsim.DeVaucouleurs(half_light_radius=hlr_bulge, gsparams=gsparams)
        prof = galsim.Add([disk.withFlux(1.0 - bulge_frac), bulge.withFlux(bulge_frac)],
                          gsparams=gsparams)
    else:
        prof = disk
    return prof.shear(g1=e1, g2=e2).shear(g1=g1, g2=g2).withFlux(flux)


def render_signal(cat, wcs, psf_row, shape, shears, sky_sigma, margin=60, positions=None):
    """Noise-free images of the objects on one CCD, one per applied shear.

    Parameters
    ----------
    cat : dict
        Object columns (see :mod:`shapepipe.sim.catalog`).
    wcs : astropy.wcs.WCS
        The CCD WCS.
    psf_row : dict
        PSF model row (see :func:`shapepipe.sim.psf.model_row`).
    shape : tuple of int
        (ny, nx).
    shears : list of tuple
        Applied shears (g1, g2); galaxies are drawn once per shear, stars once.
    sky_sigma : float
        Background noise (ADU): stamps extend to where the profile drops below 0.1 of it.
    margin : int
        Objects this far (px) outside the CCD are still drawn (their light spills in).
    positions : list of (numpy.ndarray, numpy.ndarray), optional
        (RA, Dec) of every object in each image, one pair per shear (a scene shear moves
        the galaxies; stars must be the same in all). Default: the catalogue's RA, DEC.

    Returns
    -------
    images : list of numpy.ndarray
        float64 (ny, nx) images, one per shear.
    stars : dict
        ``index`` (into cat), ``x``, ``y`` of the stars drawn.
    """
    import galsim

    ny, nx = shape
    if positions is None:
        positions = [(cat["RA"], cat["DEC"])] * len(shears)
    if len(positions) != len(shears):
        raise ValueError(f"{len(positions)} position sets for {len(shears)} shears")
    pix = [geo.sky_to_pix(wcs, ra, dec) for ra, dec in positions]
    x, y = pix[0]  # the stars' positions (the same in every image)
    is_star = cat["IS_STAR"] == 1
    flux = 10.0 ** (-0.4 * (cat["MAG"].astype(float) - geo.MAGZP))
    # Bright stars spill far: widen their margin.
    marg = np.where(is_star & (cat["MAG"] < 16.0), MAX_STAMP_HALF, margin)
    inside = np.zeros(x.shape, bool)
    for px, py in pix:
        inside |= (px > -marg) & (px < nx + 1 + marg) & (py > -marg) & (py < ny + 1 + marg)
    idx = np.flatnonzero(inside)
    fwhm, beta, pg1, pg2 = eval_model(psf_row, x[idx], y[idx])
    fwhm_px = fwhm / geo.PIXEL_SCALE
    threshold = 0.1 * sky_sigma
    images = [np.zeros(shape, dtype=np.float64) for _ in shears]
    gsp = _gsparams()

    star_sel = is_star[idx]
    s_idx = idx[star_sel]
    half = star_stamp_half(flux[s_idx], fwhm_px[star_sel], beta[star_sel], threshold)
    star_pos = np.flatnonzero(star_sel)
    for k, p in enumerate(star_pos):
        i = idx[p]
        psf = moffat(fwhm[p], beta[p], pg1[p], pg2[p], gsparams=gsp).withFlux(flux[i])
        stamp, x0, y0 = _draw(psf, x[i], y[i], int(half[k]))
        for im in images:
            _add_stamp(im, stamp, x0, y0)

    gal_pos = np.flatnonzero(~star_sel)
    if gal_pos.size:
        g_idx = idx[gal_pos]
        jacs = [geo.local_jacobian(wcs, px[g_idx], py[g_idx]) for px, py in pix]
        # The PSF where each image has the galaxy (a scene shear moves it).
        gpsf = [eval_model(psf_row, px[g_idx], py[g_idx]) for px, py in pix]
        e_abs = np.hypot(cat["E1_INT"][g_idx], cat["E2_INT"][g_idx]).astype(float)
        e_abs = np.minimum(e_abs + max(np.hypot(*s) for s in shears), 0.95)
        ghalf = galaxy_stamp_half(flux[g_idx], cat["HLR_DISK"][g_idx] / geo.PIXEL_SCALE,
                                  cat["HLR_BULGE"][g_idx] / geo.PIXEL_SCALE,
                                  cat["BULGE_FRAC"][g_idx], e_abs, fwhm_px[gal_pos], threshold)
        for k, p in enumerate(gal_pos):
            i = idx[p]
            for im, (g1, g2), (px, py), jac, (pf, pb, q1, q2) in zip(images, shears, pix, jacs,
                                                                     gpsf):
                psf = moffat(pf[k], pb[k], q1[k], q2[k], gsparams=gsp)
                gal = galaxy_profile(flux[i], float(cat["HLR_DISK"][i]), float(cat["HLR_BULGE"][i]),
                                     float(cat["BULGE_FRAC"][i]), float(cat["E1_INT"][i]),
                                     float(cat["E2_INT"][i]), g1, g2, gsp)
                local = galsim.JacobianWCS(*jac[k])
                conv = galsim.Convolve(local.profileToImage(gal), psf, gsparams=gsp)
                stamp, x0, y0 = _draw(conv, px[i], py[i], int(ghalf[k]))
                _add_stamp(im, stamp, x0, y0)
    stars = {"index": s_idx, "x": x[s_idx], "y": y[s_idx], "n_drawn": int(idx.size)}
    return images, stars


def saturate(image, flag, level=geo.SATURATE):
    """Clip at ``level`` with charge-conserving vertical bleed trails; flag bit 4.

    The charge above ``level`` in each saturated run of a column flows up and down the column
    (half each way), filling pixels to ``level``.

    Parameters
    ----------
    image : numpy.ndarray
        (ny, nx) image in ADU, modified in place.
    flag : numpy.ndarray
        int16 flags, modified in place.
    level : float
        Full-well level (ADU).
    """
    sat = image >= level
    if not sat.any():
        return
    ny = image.shape[0]
    for col in np.flatnonzero(sat.any(axis=0)):
        column = image[:, col]
        rows = np.flatnonzero(column >= level)
        # Contiguous runs of saturated rows.
        breaks = np.flatnonzero(np.diff(rows) > 1)
        starts = np.concatenate([[rows[0]], rows[breaks + 1]])
        ends = np.concatenate([rows[breaks], [rows[-1]]])
        for a, b in zip(starts, ends):
            excess = float(np.sum(column[a : b + 1] - level))
            n_spill = excess / level
            n_up = int(np.ceil(n_spill / 2.0))
            n_dn = int(np.ceil(n_spill / 2.0))
            lo = max(a - n_dn, 0)
            hi = min(b + n_up, ny - 1)
            column[lo : hi + 1] = np.maximum(column[lo : hi + 1], level)
    sat = image >= level
    image[sat] = level
    flag[sat] |= FLAG_SATURATED


def cosmic_rays(rng, shape, rate):
    """Pixels hit by cosmic rays (short straight tracks) and their added values (ADU).

    Returns
    -------
    iy, ix : numpy.ndarray
        0-based pixel indices (may repeat).
    values : numpy.ndarray
        ADU added to each.
    """
    ny, nx = shape
    n = rng.poisson(rate * nx * ny)
    x0 = rng.uniform(0, nx, n)
    y0 = rng.uniform(0, ny, n)
    length = rng.uniform(1.0, 15.0, n)
    angle = rng.uniform(0.0, np.pi, n)
    amp = rng.uniform(300.0, 5000.0, n)
    n_steps = np.ceil(2 * length).astype(int) + 1
    which = np.repeat(np.arange(n), n_steps)
    t = np.concatenate([np.linspace(0.0, 1.0, k) for k in n_steps]) if n else np.zeros(0)
    px = x0[which] + t * length[which] * np.cos(angle[which])
    py = y0[which] + t * length[which] * np.sin(angle[which])
    ix = np.clip(px.astype(int), 0, nx - 1)
    iy = np.clip(py.astype(int), 0, ny - 1)
    # One deposit per pixel per track.
    key = np.unique(np.stack([which, iy, ix], axis=1), axis=0)
    return key[:, 1], key[:, 2], amp[key[:, 0]]


def bad_columns(rng, shape, mean_number):
    """Bad columns: list of (column, row_start, row_end) 0-based, inclusive."""
    ny, nx = shape
    out = []
    for _ in range(rng.poisson(mean_number)):
        col = int(rng.integers(0, nx))
        if rng.random() < 0.5:
            out.append((col, 0, ny - 1))
        else:
            start = int(rng.integers(0, ny))
            out.append((col, start, ny - 1))
    return out


def sky_model(params, cond, ccd, shape):
    """Background (ADU) of one CCD: level with a weak linear gradient over the focal plane."""
    dx, dy, _, _ = geo.ccd_layout(params)
    rn = geo.r_norm(params)
    ny, nx = shape
    u = (np.arange(nx) + dx[ccd]) / rn
    v = (np.arange(ny) + dy[ccd]) / rn
    return cond["sky"] * (1.0 + cond["grad"][0] * u[None, :] + cond["grad"][1] * v[:, None])


def render_ccd(params, seed, i_exp, ccd, cat, shears=((0.0, 0.0),), hsm=True, positions=None,
               noise_sign=1.0):
    """Render one CCD of one exposure.

    Parameters
    ----------
    params : shapepipe.sim.geometry.SurveyParams
        Survey layout.
    seed : int
        Survey seed.
    i_exp : int
        Exposure index (0-based); the exposure number is ``params.exposures[i_exp]``.
    ccd : int
        CCD index (0-based).
    cat : dict
        Object catalogue (:func:`shapepipe.sim.catalog.make_catalog`).
    shears : sequence of tuple
        One (g1, g2) per field to render. With two or more (paired fields), every field gets the
        same noise array, drawn (Gaussian approximation of Poisson) from the mean of the fields'
        expected counts. With one, the noise is Poisson + Gaussian read noise.
    hsm : bool
        Also measure the noiseless PSF with HSM at every star (``psf_stars`` truth).
    positions : list of (numpy.ndarray, numpy.ndarray), optional
        (RA, Dec) of the objects in each field (scene shear), see :func:`render_signal`.
    noise_sign : {1.0, -1.0}
        With paired fields, -1 draws the same noise array with its sign flipped (the rotated
        twin of a shear-calibration sky: with opposite noise, the first-order noise terms
        cancel in the mean of the twins too).

    Returns
    -------
    dict
        ``images`` (list of float32 arrays, one per shear), ``weight`` (float32), ``flag``
        (int16), ``sky`` (float32 background model), ``header`` (CCD header with WCS and
        survey keywords), ``psf_stars`` (dict of truth columns), ``n_drawn`` (objects drawn,
        each once per shear).
    """
    exp_num = params.exposures[i_exp]
    shape = (params.ccd_ny, params.ccd_nx)
    header = geo.ccd_header(params, i_exp, ccd)
    wcs = geo.make_wcs(header)
    cond = exposure_conditions(seed, exp_num)
    sky = sky_model(params, cond, ccd, shape)
    var_bg_e = sky * geo.GAIN + geo.RDNOISE**2  # e-^2
    sky_sigma = float(np.sqrt(np.mean(var_bg_e))) / geo.GAIN
    row = model_row(params, seed, exp_num, ccd)
    signals, stars = render_signal(cat, wcs, row, shape, list(shears), sky_sigma,
                                   positions=positions)

    rng = make_rng(seed, "noise", int(exp_num), int(ccd))
    flag = np.zeros(shape, dtype=np.int16)
    images = []
    if noise_sign not in (1.0, -1.0):
        raise ValueError(f"noise_sign must be 1 or -1, got {noise_sign}")
    if noise_sign < 0 and len(signals) == 1:
        raise ValueError("noise_sign = -1 needs paired fields (Gaussian noise); one field has "
                         "Poisson noise")
    if len(signals) == 1:
        mu_e = (signals[0] + sky) * geo.GAIN
        counts = rng.poisson(np.maximum(mu_e, 0.0)).astype(np.float64)
        counts += rng.normal(0.0, geo.RDNOISE, shape)
        images.append(counts / geo.GAIN)
    else:
        mean_mu_e = (np.mean(signals, axis=0) + sky) * geo.GAIN
        noise_e = noise_sign * rng.standard_normal(shape) * np.sqrt(np.maximum(mean_mu_e, 0.0)
                                                       + geo.RDNOISE**2)
        for s in signals:
            images.append((s + sky) + noise_e / geo.GAIN)
    del signals

    cr_rng = make_rng(seed, "cosmics", int(exp_num), int(ccd))
    iy, ix, val = cosmic_rays(cr_rng, shape, params.cosmic_rate)
    bad = bad_columns(make_rng(seed, "badcol", int(ccd)), shape, params.n_bad_columns)
    flags = []
    for im in images:
        f = flag.copy()
        np.add.at(im, (iy, ix), val)
        f[iy, ix] |= FLAG_COSMIC
        saturate(im, f)
        for col, r0, r1 in bad:
            im[r0 : r1 + 1, col] = 0.0
            f[r0 : r1 + 1, col] |= FLAG_BAD
        flags.append(f)
    # Every field shares cosmic rays and bad columns; saturation comes from stars, identical too.
    flag = flags[0]
    for f in flags[1:]:
        flag |= f
    weight = (geo.GAIN**2 / var_bg_e).astype(np.float32)
    weight[flag != 0] = 0.0

    header = _ccd_keywords(header, params, exp_num, ccd, cond, sky, sky_sigma)
    psf_stars = _psf_star_truth(cat, stars, row, exp_num, ccd, shape, flag, hsm)
    return {
        "images": [im.astype(np.float32) for im in images],
        "weight": weight,
        "flag": flag,
        "sky": sky.astype(np.float32),
        "header": header,
        "psf_stars": psf_stars,
        "n_drawn": stars["n_drawn"],
    }


def _ccd_keywords(header, params, exp_num, ccd, cond, sky, sky_sigma):
    dx, dy, width, height = geo.ccd_layout(params)
    nx, ny = params.ccd_nx, params.ccd_ny
    h = header.copy()
    h["EXTNAME"] = f"ccd{ccd:02d}"
    h["CCDNUM"] = (ccd, "CCD index, 0-based")
    h["EXPNUM"] = (exp_num, "exposure number")
    h["GAIN"] = (geo.GAIN, "e-/ADU")
    h["RDNOISE"] = (geo.RDNOISE, "read noise (e-)")
    h["SATURATE"] = (geo.SATURATE, "saturation level (ADU)")
    h["EXPTIME"] = (geo.EXPTIME, "exposure time (s)")
    h["FILTER"] = geo.FILTER
    h["MJD-OBS"] = (round(cond["mjd"], 8), "start of exposure (MJD)")
    h["AIRMASS"] = round(cond["airmass"], 4)
    h["MAGZP"] = (geo.MAGZP, "mag of 1 ADU in this exposure")
    h["PHOTZP"] = (geo.MAGZP, "mag of 1 ADU in this exposure")
    h["DATASEC"] = f"[1:{nx},1:{ny}]"
    # DETSEC in 1-based mosaic pixels, origin at the lower-left corner of the mosaic.
    x1 = int(round(dx[ccd] - dx.min())) + 1
    y1 = int(round(dy[ccd] - dy.min())) + 1
    h["DETSEC"] = f"[{x1}:{x1 + nx - 1},{y1}:{y1 + ny - 1}]"
    h["DETSIZE"] = f"[1:{int(width)},1:{int(height)}]"
    h["SKYLEVEL"] = (round(float(np.mean(sky)), 4), "true mean background (ADU), not subtracted")
    h["SKYSIGMA"] = (round(sky_sigma, 4), "background noise rms (ADU)")
    return h


def _psf_star_truth(cat, stars, row, exp_num, ccd, shape, flag, hsm):
    import galsim

    ny, nx = shape
    sx, sy = stars["x"], stars["y"]
    on = (sx >= 0.5) & (sx < nx + 0.5) & (sy >= 0.5) & (sy < ny + 0.5)
    idx = stars["index"][on]
    x = stars["x"][on]
    y = stars["y"][on]
    fwhm, beta, g1, g2 = eval_model(row, x, y)
    n = idx.size
    sigma = np.full(n, np.nan)
    hg1 = np.full(n, np.nan)
    hg2 = np.full(n, np.nan)
    if hsm:
        for k in range(n):
            psf = moffat(fwhm[k], beta[k], g1[k], g2[k])
            img = galsim.ImageF(HSM_STAMP, HSM_STAMP, scale=1.0)
            psf.drawImage(img, offset=(x[k] - np.floor(x[k] + 0.5), y[k] - np.floor(y[k] + 0.5)))
            res = img.FindAdaptiveMom(strict=False)
            if res.moments_status == 0:
                sigma[k] = res.moments_sigma
                hg1[k] = res.observed_shape.g1
                hg2[k] = res.observed_shape.g2
    ix = np.clip(np.floor(x - 0.5).astype(int), 0, nx - 1)
    iy = np.clip(np.floor(y - 0.5).astype(int), 0, ny - 1)
    saturated = np.zeros(n, dtype=np.int16)
    for ddx in (-1, 0, 1):
        for ddy in (-1, 0, 1):
            f = flag[np.clip(iy + ddy, 0, ny - 1), np.clip(ix + ddx, 0, nx - 1)]
            saturated |= ((f & FLAG_SATURATED) != 0).astype(np.int16)
    return {
        "EXP_NUM": np.full(n, exp_num, dtype=np.int32),
        "CCD": np.full(n, ccd, dtype=np.int16),
        "ID": cat["ID"][idx],
        "X": x,
        "Y": y,
        "RA": cat["RA"][idx],
        "DEC": cat["DEC"][idx],
        "MAG": cat["MAG"][idx],
        "FWHM": fwhm.astype(np.float32),
        "BETA": beta.astype(np.float32),
        "G1": g1.astype(np.float32),
        "G2": g2.astype(np.float32),
        "HSM_SIGMA": sigma.astype(np.float32),
        "HSM_G1": hg1.astype(np.float32),
        "HSM_G2": hg2.astype(np.float32),
        "SATURATED": saturated,
    }
