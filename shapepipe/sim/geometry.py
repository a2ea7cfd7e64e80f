"""Survey geometry: focal-plane layout, exposure pointings, CCD and tile WCS, CFIS tile numbers.

Every pixel coordinate here follows the FITS convention (first pixel centre = 1.0) unless a
name says ``_np`` (numpy, 0-based).
"""

import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

PIXEL_SCALE = 0.187  # arcsec / pixel (MegaCam)
MAGZP = 30.0
EXPTIME = 200.0
GAIN = 1.6  # e- / ADU
RDNOISE = 5.0  # e-
SATURATE = 60000.0  # ADU
FILTER = "r.MP9602"
FIRST_EXPOSURE = 2000001
DEFAULT_TILE = (270, 283)  # CFIS tile number xxx, yyy
FAINT_STAR_MAG = 21.0  # r; about Gaia's depth: the fainter stars are in no reference catalogue


@dataclass
class SurveyParams:
    """Sizes and layout of a simulated survey.

    Use :func:`small_params` or :func:`full_params` rather than building one by hand.
    """

    ccd_nx: int
    ccd_ny: int
    n_cols: int  # CCD columns in the main block of the mosaic
    n_rows: int  # CCD rows in the main block
    gap_x: int  # px between CCD columns
    gap_y: int  # px between CCD rows
    extra_ccds: int  # CCDs added above and below the main block (MegaCam: 4)
    dithers: list  # per-exposure pointing offsets (arcsec) from the tile centre
    tile_nx: int
    tile_ny: int
    tile_number: tuple = DEFAULT_TILE
    star_density: float = 7.0  # stars per arcmin^2 brighter than r = 20.5
    gal_density: float = 30.0  # galaxies per arcmin^2 brighter than r = 24.5
    gal_mag_max: float = 25.5
    star_mag_range: tuple = (11.5, 24.0)
    # Stars per arcmin^2 fainter than FAINT_STAR_MAG (to star_mag_range[1]); None: the power
    # law of star_density continues. The default density feeds PSF stars to small CCDs and is
    # several times a high-latitude field's; shear calibration sets the faint stars apart.
    faint_star_density: float = None
    cosmic_rate: float = 1.2e-5  # cosmic rays per pixel per exposure
    n_bad_columns: int = 2  # per CCD (on average)
    des_tiles: int = 3
    des_size: int = 1000
    psf_g_offset: tuple = (0.0, 0.0)  # mean PSF shear added everywhere (leakage fields)
    extra: dict = field(default_factory=dict)

    @property
    def n_exp(self):
        """Number of exposures."""
        return len(self.dithers)

    @property
    def exposures(self):
        """Exposure numbers."""
        return [FIRST_EXPOSURE + i for i in range(self.n_exp)]


def small_params():
    """Parameters of the default, small survey (3 exposures x 4 CCDs of 1024 x 1280)."""
    return SurveyParams(ccd_nx=1024, ccd_ny=1280, n_cols=2, n_rows=2, gap_x=35, gap_y=150,
                        extra_ccds=0, dithers=[(0.0, 0.0), (15.0, 30.0), (-15.0, -30.0)],
                        tile_nx=2400, tile_ny=3072)


def tiny_params():
    """A very small survey for unit tests of other modules: 2 exposures x 2 CCDs of 512 x 640.

    Renders in a few seconds; star density is raised so that every CCD still has PSF stars.
    """
    return SurveyParams(ccd_nx=512, ccd_ny=640, n_cols=2, n_rows=1, gap_x=20, gap_y=60,
                        extra_ccds=0, dithers=[(0.0, 0.0), (8.0, 12.0)],
                        tile_nx=1200, tile_ny=800, star_density=12.0)


def full_params():
    """Parameters of the full-size survey (3 exposures x 40 MegaCam CCDs, 10k x 10k tile)."""
    return SurveyParams(ccd_nx=2048, ccd_ny=4612, n_cols=9, n_rows=4, gap_x=70, gap_y=420,
                        extra_ccds=4, dithers=[(0.0, 0.0), (150.0, 400.0), (-150.0, -400.0)],
                        tile_nx=10000, tile_ny=10000)


def ccd_layout(params):
    """Position of every CCD in the focal plane.

    Parameters
    ----------
    params : SurveyParams

    Returns
    -------
    dx, dy : numpy.ndarray
        Offset (px) of each CCD's pixel (1, 1) from the optical axis: focal-plane pixel
        coordinate ``u = x - 1 + dx``.
    width, height : int
        Size of the whole mosaic (px), gaps included.
    """
    nx, ny = params.ccd_nx, params.ccd_ny
    width = params.n_cols * nx + (params.n_cols - 1) * params.gap_x
    height = params.n_rows * ny + (params.n_rows - 1) * params.gap_y
    x0 = [c * (nx + params.gap_x) for r in range(params.n_rows) for c in range(params.n_cols)]
    y0 = [r * (ny + params.gap_y) for r in range(params.n_rows) for c in range(params.n_cols)]
    if params.extra_ccds:
        # MegaCam's extra CCDs: half above, half below the main block, centred.
        n_half = params.extra_ccds // 2
        row_w = n_half * nx + (n_half - 1) * params.gap_x
        for side in (-1, 1):
            for c in range(n_half):
                x0.append((width - row_w) // 2 + c * (nx + params.gap_x))
                y0.append(-(ny + params.gap_y) if side < 0 else height + params.gap_y)
        height_all = height + 2 * (ny + params.gap_y)
    else:
        height_all = height
    x0 = np.asarray(x0, dtype=float)
    y0 = np.asarray(y0, dtype=float)
    # Optical axis at the centre of the main block.
    dx = x0 - width / 2.0
    dy = y0 - height / 2.0
    return dx, dy, width, height_all


def r_norm(params):
    """Normalisation radius (px) of the focal-plane coordinates used by the PSF model."""
    _, _, width, height = ccd_layout(params)
    return 0.5 * max(width, height)


def tile_center(xxx, yyy):
    """RA, Dec (deg) of the centre of CFIS tile ``xxx-yyy``.

    CFIS numbering: ``Dec = yyy / 2 - 90``, ``RA = xxx / 2 / cos(Dec)``.
    """
    dec = yyy / 2.0 - 90.0
    ra = xxx / 2.0 / np.cos(np.deg2rad(dec))
    return float(ra), float(dec)


def tile_number_from_coord(ra, dec):
    """CFIS tile number ``(xxx, yyy)`` whose centre is nearest to (ra, dec) (deg)."""
    yyy = int(np.rint((dec + 90.0) * 2.0))
    cos_dec = np.cos(np.deg2rad(yyy / 2.0 - 90.0))
    xxx = int(np.rint(ra * cos_dec * 2.0))
    return xxx, yyy


def tile_name(number):
    """File-name number string of a tile, e.g. ``'270-283'``."""
    return f"{number[0]:03d}-{number[1]:03d}"


def pointing(params, i_exp):
    """RA, Dec (deg) of the optical axis of exposure ``i_exp`` (0-based)."""
    ra_c, dec_c = tile_center(*params.tile_number)
    off_x, off_y = params.dithers[i_exp]
    # Offsets are along the tangent plane: +x (east, increasing RA) and +y (north).
    dec = dec_c + off_y / 3600.0
    ra = ra_c + off_x / 3600.0 / np.cos(np.deg2rad(dec_c))
    return float(ra), float(dec)


def tan_header(crval, crpix, naxis, scale=PIXEL_SCALE):
    """A TAN WCS header, north up, east left.

    Parameters
    ----------
    crval : tuple of float
        (RA, Dec) of the tangent point (deg).
    crpix : tuple of float
        1-based pixel of the tangent point.
    naxis : tuple of int
        (NAXIS1, NAXIS2).
    scale : float
        Pixel scale (arcsec).

    Returns
    -------
    astropy.io.fits.Header
    """
    h = fits.Header()
    h["NAXIS"] = 2
    h["NAXIS1"] = int(naxis[0])
    h["NAXIS2"] = int(naxis[1])
    h["CTYPE1"] = "RA---TAN"
    h["CTYPE2"] = "DEC--TAN"
    h["CUNIT1"] = "deg"
    h["CUNIT2"] = "deg"
    h["CRVAL1"] = float(crval[0])
    h["CRVAL2"] = float(crval[1])
    h["CRPIX1"] = float(crpix[0])
    h["CRPIX2"] = float(crpix[1])
    s = scale / 3600.0
    h["CD1_1"] = -s
    h["CD1_2"] = 0.0
    h["CD2_1"] = 0.0
    h["CD2_2"] = s
    h["RADESYS"] = "ICRS"
    h["EQUINOX"] = 2000.0
    return h


def ccd_header(params, i_exp, ccd):
    """WCS header of CCD ``ccd`` in exposure ``i_exp`` (both 0-based)."""
    dx, dy, _, _ = ccd_layout(params)
    crpix = (1.0 - dx[ccd], 1.0 - dy[ccd])
    return tan_header(pointing(params, i_exp), crpix, (params.ccd_nx, params.ccd_ny))


def tile_header(params):
    """WCS header of the tile (tangent point at its centre)."""
    crval = tile_center(*params.tile_number)
    crpix = ((params.tile_nx + 1) / 2.0, (params.tile_ny + 1) / 2.0)
    return tan_header(crval, crpix, (params.tile_nx, params.tile_ny))


def make_wcs(header):
    """``astropy.wcs.WCS`` of a header built here (quietly: no 'datfix' chatter about MJD-OBS)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, relax=False)


def sky_to_pix(wcs, ra, dec):
    """World (deg) to 1-based FITS pixel coordinates."""
    x, y = wcs.wcs_world2pix(np.asarray(ra, float), np.asarray(dec, float), 1)
    return x, y


def pix_to_sky(wcs, x, y):
    """1-based FITS pixel coordinates to world (deg)."""
    ra, dec = wcs.wcs_pix2world(np.asarray(x, float), np.asarray(y, float), 1)
    return ra, dec


def local_jacobian(wcs, x, y):
    """Local Jacobian d(u, v)/d(x, y) in arcsec/px at 1-based pixel positions.

    (u, v) is GalSim's world frame: +u towards decreasing RA (west), +v north.

    Returns
    -------
    numpy.ndarray
        Shape (n, 4): dudx, dudy, dvdx, dvdy.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    h = 0.5
    ra0, dec0 = pix_to_sky(wcs, x, y)
    cosd = np.cos(np.deg2rad(dec0))
    out = np.empty((x.size, 4))
    for k, (ex, ey) in enumerate(((h, 0.0), (0.0, h))):
        rap, decp = pix_to_sky(wcs, x + ex, y + ey)
        ram, decm = pix_to_sky(wcs, x - ex, y - ey)
        dra = ((rap - ram + 180.0) % 360.0) - 180.0
        du = -dra * cosd * 3600.0 / (2 * h)
        dv = (decp - decm) * 3600.0 / (2 * h)
        out[:, k] = du  # k=0: dudx, k=1: dudy
        out[:, 2 + k] = dv
    return out


def field_bounds(params, margin_arcsec=20.0):
    """Tangent-plane box (arcsec, around the tile centre) covering every exposure and the tile.

    Returns
    -------
    tuple of float
        (xmin, xmax, ymin, ymax) in arcsec, +x east, +y north.
    """
    dx, dy, _, _ = ccd_layout(params)
    x_lo = dx.min() * PIXEL_SCALE
    x_hi = (dx.max() + params.ccd_nx) * PIXEL_SCALE
    y_lo = dy.min() * PIXEL_SCALE
    y_hi = (dy.max() + params.ccd_ny) * PIXEL_SCALE
    offs = np.asarray(params.dithers, dtype=float)
    # +x on the CCD is west (RA decreasing): the east offset of a CCD edge is -x.
    xmin = min(-x_hi + offs[:, 0].min(), -params.tile_nx / 2 * PIXEL_SCALE) - margin_arcsec
    xmax = max(-x_lo + offs[:, 0].max(), params.tile_nx / 2 * PIXEL_SCALE) + margin_arcsec
    ymin = min(y_lo + offs[:, 1].min(), -params.tile_ny / 2 * PIXEL_SCALE) - margin_arcsec
    ymax = max(y_hi + offs[:, 1].max(), params.tile_ny / 2 * PIXEL_SCALE) + margin_arcsec
    return xmin, xmax, ymin, ymax
