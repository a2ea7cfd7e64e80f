"""Small synthetic star catalogues with a known, spatially varying Moffat PSF.

Used by the tests and the PSF benchmark: SExtractor-like FITS_LDAC catalogues (LDAC_IMHEAD +
LDAC_OBJECTS with VIGNET, XWIN_IMAGE, SNR_WIN, FLUX_APER...) that both PSFEx and the
built-in model accept. VIGNETs follow SExtractor's convention: the object at 0-based image
position ``x`` sits at ``x - round(x) + size // 2`` in the vignet.
"""

import galsim
import numpy as np
from astropy.io import fits

from shapepipe.utils.ldac import write_ldac
from shapepipe.utils.pixels import numpy_to_fits
from shapepipe.utils.rng import make_rng

CCD_SHAPE = (4612, 2048)  # (ny, nx) of a MegaCam CCD


class MoffatField:
    """A Moffat PSF whose FWHM and shear vary smoothly over a CCD.

    Parameters
    ----------
    fwhm : float
        FWHM at the CCD centre, in pixels.
    beta : float
        Moffat index.
    fwhm_grad : float
        Relative FWHM change from the centre to the CCD edge.
    g_amp : float
        Amplitude of the shear pattern.
    ccd_shape : tuple of int
        ``(ny, nx)`` of the CCD.
    """

    def __init__(self, fwhm=3.7, beta=3.5, fwhm_grad=0.06, g_amp=0.04, ccd_shape=CCD_SHAPE):
        self.fwhm = fwhm
        self.beta = beta
        self.fwhm_grad = fwhm_grad
        self.g_amp = g_amp
        self.ccd_shape = ccd_shape

    def params(self, x, y):
        """FWHM, g1, g2 at 1-based image positions (arrays)."""
        ny, nx = self.ccd_shape
        u = (np.asarray(x, float) - (nx + 1) / 2) / (nx / 2)
        v = (np.asarray(y, float) - (ny + 1) / 2) / (ny / 2)
        fwhm = self.fwhm * (1 + self.fwhm_grad * (0.6 * u + 0.4 * v * v))
        g1 = self.g_amp * (0.8 * u - 0.3 * v)
        g2 = self.g_amp * (0.5 * u * v + 0.3)
        return fwhm, g1, g2

    def profile(self, x, y):
        """The GalSim profile (unit flux) at one 1-based position."""
        fwhm, g1, g2 = self.params(x, y)
        return galsim.Moffat(beta=self.beta, fwhm=float(fwhm)).shear(g1=float(g1), g2=float(g2))

    def draw(self, x, y, size, offset=(0.0, 0.0)):
        """Pixelated unit-flux image of the PSF at (x, y), centred at ``size // 2 + offset``."""
        image = galsim.ImageD(size, size, scale=1.0)
        # GalSim centres even images half a pixel off the PSFEx/SExtractor centre pixel.
        shift = 0.0 if size % 2 else -0.5
        self.profile(x, y).drawImage(image, offset=(offset[0] + shift, offset[1] + shift))
        return image.array


def make_star_catalogue(path, n_stars=200, size=25, psf=None, seed=1, snr_range=(50.0, 500.0),
                        noise_sigma=10.0, n_outliers=0, ccd_shape=CCD_SHAPE):
    """Write a FITS_LDAC star catalogue with VIGNETs of a known PSF.

    Parameters
    ----------
    path : str
        Output catalogue.
    n_stars : int
        Number of stars.
    size : int
        VIGNET side in pixels.
    psf : MoffatField, optional
        The PSF; default ``MoffatField()``.
    seed : int
        Random seed (positions, fluxes, noise).
    snr_range : tuple of float
        Range of the stars' S/N (log-uniform).
    noise_sigma : float
        Background noise per pixel.
    n_outliers : int
        How many stars are replaced by a blend of two stars (to test outlier rejection).
    ccd_shape : tuple of int
        ``(ny, nx)`` of the CCD.

    Returns
    -------
    dict
        Truth: ``x``, ``y`` (1-based), ``flux``, ``outlier`` (bool), and the ``psf``.
    """
    psf = psf or MoffatField(ccd_shape=ccd_shape)
    rng = make_rng(seed, "stars")
    ny, nx = ccd_shape
    margin = size
    x0 = rng.uniform(margin, nx - margin, n_stars)  # 0-based
    y0 = rng.uniform(margin, ny - margin, n_stars)
    x, y = numpy_to_fits(x0), numpy_to_fits(y0)
    snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]), n_stars))
    fwhm = psf.params(x, y)[0]
    # S/N of a PSF-weighted flux: flux / (sigma * sqrt(4 pi sigma_psf^2)).
    flux = snr * noise_sigma * np.sqrt(4 * np.pi) * fwhm / 2.355
    outlier = np.zeros(n_stars, bool)
    outlier[rng.choice(n_stars, n_outliers, replace=False)] = True
    vignets = np.empty((n_stars, size, size), np.float32)
    for i in range(n_stars):
        off = (x0[i] - np.round(x0[i]), y0[i] - np.round(y0[i]))
        img = flux[i] * psf.draw(x[i], y[i], size, off)
        if outlier[i]:
            img = img + 0.7 * flux[i] * psf.draw(x[i], y[i], size, (off[0] + 2.5, off[1] - 1.5))
        vignets[i] = img + rng.normal(0.0, noise_sigma, (size, size))
    # A few masked pixels, as SExtractor marks them (-1e30).
    bad = rng.random((n_stars, size, size)) < 0.002
    vignets[bad] = -1e30

    ap = np.where(vignets > -1e29, vignets, 0.0)
    yy, xx = np.mgrid[:size, :size] - size // 2
    aperture = (xx**2 + yy**2) <= (2 * fwhm.mean()) ** 2
    flux_ap = (ap * aperture).sum(axis=(1, 2))
    fluxerr = noise_sigma * np.sqrt(aperture.sum()) * np.ones(n_stars)
    wcs_hdr = fits.Header()
    wcs_hdr["NAXIS"] = 2
    wcs_hdr["NAXIS1"] = nx
    wcs_hdr["NAXIS2"] = ny
    wcs_hdr["CTYPE1"] = "RA---TAN"
    wcs_hdr["CTYPE2"] = "DEC--TAN"
    wcs_hdr["CRVAL1"] = 150.0
    wcs_hdr["CRVAL2"] = 2.0
    wcs_hdr["CRPIX1"] = nx / 2
    wcs_hdr["CRPIX2"] = ny / 2
    wcs_hdr["CD1_1"] = -0.187 / 3600
    wcs_hdr["CD1_2"] = 0.0
    wcs_hdr["CD2_1"] = 0.0
    wcs_hdr["CD2_2"] = 0.187 / 3600
    ra = 150.0 - (x - nx / 2) * 0.187 / 3600 / np.cos(np.radians(2.0))
    dec = 2.0 + (y - ny / 2) * 0.187 / 3600
    dtype = [
        ("NUMBER", ">i4"), ("X_IMAGE", ">f8"), ("Y_IMAGE", ">f8"), ("XWIN_IMAGE", ">f8"),
        ("YWIN_IMAGE", ">f8"), ("XWIN_WORLD", ">f8"), ("YWIN_WORLD", ">f8"),
        ("FLUX_APER", ">f4", (1,)), ("FLUXERR_APER", ">f4", (1,)), ("FLUX_AUTO", ">f4"),
        ("MAG_AUTO", ">f4"), ("SNR_WIN", ">f4"), ("FLUX_RADIUS", ">f4"), ("ELONGATION", ">f4"),
        ("FWHM_IMAGE", ">f4"), ("FLAGS", ">i2"), ("VIGNET", ">f4", (size, size)),
    ]
    table = np.zeros(n_stars, dtype=dtype)
    table["NUMBER"] = np.arange(1, n_stars + 1)
    table["X_IMAGE"] = table["XWIN_IMAGE"] = x
    table["Y_IMAGE"] = table["YWIN_IMAGE"] = y
    table["XWIN_WORLD"] = ra
    table["YWIN_WORLD"] = dec
    table["FLUX_APER"][:, 0] = flux_ap
    table["FLUXERR_APER"][:, 0] = fluxerr
    table["FLUX_AUTO"] = flux
    table["MAG_AUTO"] = 30.0 - 2.5 * np.log10(flux)
    table["SNR_WIN"] = snr
    table["FLUX_RADIUS"] = fwhm / 2
    table["ELONGATION"] = 1.05
    table["FWHM_IMAGE"] = fwhm
    table["VIGNET"] = vignets
    write_ldac(path, wcs_hdr, table)
    return {"x": x, "y": y, "flux": flux, "outlier": outlier, "psf": psf}
