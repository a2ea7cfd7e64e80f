"""A small simulated CCD (stars + galaxies + noise, weight and flag maps) for tests and benchmarks.

Rendered with GalSim: Moffat stars and exponential/de Vaucouleurs galaxies convolved with
the PSF, a sky background, Gaussian noise matching the weight map, a few bad columns (weight
0, flagged) and a TAN WCS with the CFIS pixel scale.
"""

import os

import galsim
import numpy as np
from astropy.io import fits

from shapepipe.utils.atomic import write_fits
from shapepipe.utils.rng import make_rng


def make_ccd(directory, nx=600, ny=800, n_stars=40, n_galaxies=120, seed=1, sky=400.0,
             noise=8.0, fwhm=0.7, pixel_scale=0.187, gain=1.6, saturate=60000.0, name="ccd",
             bad_columns=2):
    """Write ``<name>_image.fits``, ``<name>_weight.fits`` and ``<name>_flag.fits``.

    Parameters
    ----------
    directory : str
        Output directory (created if needed).
    nx, ny : int
        Image size.
    n_stars, n_galaxies : int
        Number of objects (positions uniform, avoiding a 10-pixel border).
    seed : int
        Random seed.
    sky, noise : float
        Background level and noise rms (ADU).
    fwhm, pixel_scale : float
        PSF FWHM and pixel scale (arcsec).
    gain, saturate : float
        Written as the GAIN and SATURATE header keywords.
    name : str
        File name prefix.
    bad_columns : int
        Number of bad columns (weight 0, flag 1).

    Returns
    -------
    dict
        Paths (``image``, ``weight``, ``flag``) and the truth arrays (``x``, ``y`` 1-based
        FITS pixel coordinates,
        ``flux``, ``is_star``).
    """
    os.makedirs(directory, exist_ok=True)
    rng = make_rng(seed, "sextractor-testdata", name)
    image = galsim.ImageF(nx, ny, scale=pixel_scale)
    psf = galsim.Moffat(beta=3.5, fwhm=fwhm).shear(g1=0.02, g2=-0.01)
    n = n_stars + n_galaxies
    x = rng.uniform(12, nx - 12, n)
    y = rng.uniform(12, ny - 12, n)
    is_star = np.zeros(n, dtype=bool)
    is_star[:n_stars] = True
    # Magnitude-like flux distribution: many faint, few bright.
    flux = np.where(is_star, 10 ** rng.uniform(3.3, 5.6, n), 10 ** rng.uniform(3.0, 4.8, n))
    for i in range(n):
        if is_star[i]:
            prof = psf.withFlux(flux[i])
        else:
            hlr = 0.25 + 0.6 * rng.random()
            e = rng.normal(0, 0.25, 2).clip(-0.6, 0.6)
            if rng.random() < 0.7:
                gal = galsim.Exponential(half_light_radius=hlr)
            else:
                gal = galsim.DeVaucouleurs(half_light_radius=hlr, trunc=8 * hlr)
            gal = gal.shear(g1=e[0], g2=e[1]).withFlux(flux[i])
            prof = galsim.Convolve(gal, psf)
        stamp = prof.drawImage(scale=pixel_scale, center=galsim.PositionD(x[i], y[i]),
                               nx=64 if not is_star[i] else 48, ny=64 if not is_star[i] else 48)
        bounds = stamp.bounds & image.bounds
        if bounds.isDefined():
            image[bounds] += stamp[bounds]
    data = image.array.astype(np.float64)
    data += sky + rng.normal(0.0, noise, data.shape)
    data = np.minimum(data, saturate)
    weight = np.full(data.shape, 1.0 / noise**2, dtype=np.float32)
    weight *= 1.0 + 0.05 * np.linspace(-1, 1, nx)[None, :]
    flag = np.zeros(data.shape, dtype=np.int16)
    cols = rng.choice(np.arange(20, nx - 20), size=bad_columns, replace=False)
    for c in cols:
        weight[:, c] = 0.0
        flag[:, c] = 1
        data[:, c] = 0.0
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRPIX1"], header["CRPIX2"] = nx / 2.0, ny / 2.0
    header["CRVAL1"], header["CRVAL2"] = 150.0, 2.0
    header["CD1_1"], header["CD1_2"] = -pixel_scale / 3600.0, 0.0
    header["CD2_1"], header["CD2_2"] = 0.0, pixel_scale / 3600.0
    header["RADESYS"], header["EQUINOX"] = "ICRS", 2000.0
    header["GAIN"] = gain
    header["SATURATE"] = saturate
    paths = {k: os.path.join(directory, f"{name}_{k}.fits") for k in ("image", "weight", "flag")}
    write_fits(fits.HDUList([fits.PrimaryHDU(data.astype(np.float32), header)]), paths["image"])
    write_fits(fits.HDUList([fits.PrimaryHDU(weight, header)]), paths["weight"])
    write_fits(fits.HDUList([fits.PrimaryHDU(flag, header)]), paths["flag"])
    # GalSim images are 1-based (first pixel centre at 1.0): x, y already follow the
    # FITS/SExtractor convention.
    return {**paths, "x": x, "y": y, "flux": flux, "is_star": is_star}
