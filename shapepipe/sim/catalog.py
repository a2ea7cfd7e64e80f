"""The object list of a simulated field: stars and bulge+disk galaxies with intrinsic shapes."""

import numpy as np
from scipy.special import gammainc

from shapepipe.sim.geometry import FAINT_STAR_MAG, MAGZP, field_bounds, tile_center
from shapepipe.utils.lensing import tangent_to_sky
from shapepipe.utils.rng import make_rng

STAR_SLOPE = 0.2  # d log10 N / dm of the star counts
GAL_SLOPE = 0.32  # d log10 N / dm of the galaxy counts
GAL_MAG_MIN = 18.0
SIGMA_E = 0.26  # per-component intrinsic ellipticity dispersion (before truncation)
E_MAX = 0.9
# b_n of the Sersic profiles (half-light definition) for n = 1 and n = 4.
_B1 = 1.678346990
_B4 = 7.669249443

COLUMNS = ["ID", "RA", "DEC", "IS_STAR", "MAG", "FLUX", "HLR", "HLR_DISK", "HLR_BULGE",
           "BULGE_FRAC", "E1_INT", "E2_INT", "GALTYPE", "Z"]

# The redshifts come from their own generator, seeded from the survey seed plus this fixed
# offset, so adding them changed no earlier draw: every image, catalogue and truth value made
# before they existed is byte-identical.
REDSHIFT_SEED_OFFSET = 7919
# CANDELS morphological classes (Dimauro et al. 2018): a galaxy is a pure disk, a
# spheroid+disk, or a spheroid, by the bulge flux fraction it is rendered with.
SPHEROID_MIN_BULGE_FRAC = 0.5


def _power_law_mags(rng, n, slope, m_lo, m_hi):
    """n magnitudes with dN/dm proportional to 10**(slope m) on [m_lo, m_hi]."""
    a_lo = 10.0 ** (slope * m_lo)
    a_hi = 10.0 ** (slope * m_hi)
    u = rng.random(n)
    return np.log10(a_lo + u * (a_hi - a_lo)) / slope


def _expected_count(density_at, m_ref, slope, m_lo, m_hi, area_arcmin2):
    """Objects expected on [m_lo, m_hi] for a density ``density_at`` (per arcmin^2) below m_ref."""
    frac = (10.0 ** (slope * m_hi) - 10.0 ** (slope * m_lo)) / 10.0 ** (slope * m_ref)
    return density_at * frac * area_arcmin2


def composite_hlr(hlr_disk, hlr_bulge, bulge_frac, n_iter=60):
    """Half-light radius of a circular exponential disk + de Vaucouleurs bulge.

    Solved by bisection on the enclosed flux (exact for untruncated Sersic profiles):
    F(R) = B P(8, b4 (R/r_b)^(1/4)) + (1 - B) P(2, b1 R / r_d), P the regularised gamma.

    Parameters
    ----------
    hlr_disk, hlr_bulge, bulge_frac : array_like
        Disk and bulge half-light radii (any unit) and bulge flux fraction.

    Returns
    -------
    numpy.ndarray
        Half-light radius in the same unit.
    """
    rd = np.asarray(hlr_disk, float)
    rb = np.asarray(hlr_bulge, float)
    b = np.asarray(bulge_frac, float)
    lo = np.minimum(rd, rb) * 0.0 + 1e-6
    hi = np.maximum(rd, rb) * 1.0 + 1e-6
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        f = b * gammainc(8.0, _B4 * (mid / rb) ** 0.25) + (1 - b) * gammainc(2.0, _B1 * mid / rd)
        below = f < 0.5
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def draw_ellipticities(rng, n, sigma=SIGMA_E, e_max=E_MAX):
    """Intrinsic shapes (g1, g2): Gaussian per component, redrawn while |g| >= e_max."""
    e = rng.normal(0.0, sigma, size=(n, 2))
    bad = np.hypot(e[:, 0], e[:, 1]) >= e_max
    while bad.any():
        e[bad] = rng.normal(0.0, sigma, size=(bad.sum(), 2))
        bad = np.hypot(e[:, 0], e[:, 1]) >= e_max
    return e[:, 0], e[:, 1]


def galaxy_sizes(rng, mag):
    """Disk/bulge half-light radii (arcsec) and bulge fractions from a size-magnitude relation."""
    n = mag.size
    median = 0.9 * 10.0 ** (-0.12 * (mag - 20.0))
    hlr_disk = np.clip(median * 10.0 ** rng.normal(0.0, 0.15, n), 0.08, 4.0)
    has_bulge = rng.random(n) < 0.35
    bulge_frac = np.where(has_bulge, rng.uniform(0.1, 0.7, n), 0.0)
    hlr_bulge = np.where(has_bulge, hlr_disk * rng.uniform(0.3, 0.7, n), 0.0)
    hlr = np.where(has_bulge,
                   composite_hlr(hlr_disk, np.where(has_bulge, hlr_bulge, 1.0), bulge_frac),
                   hlr_disk)
    return hlr_disk, hlr_bulge, bulge_frac, hlr


def galaxy_types(bulge_frac):
    """CANDELS-like morphological type of bulge+disk galaxies from their bulge fraction.

    ``disk`` without bulge, ``sphd`` (spheroid + disk) for 0 < B/T < 0.5, ``sph`` above: the
    type describes the profile that is rendered, so it needs no random draw. The simulator
    renders no irregulars (``irr``).

    Parameters
    ----------
    bulge_frac : array_like
        Bulge flux fractions.

    Returns
    -------
    numpy.ndarray
        Types as ``<U4`` strings.
    """
    b = np.asarray(bulge_frac, float)
    return np.where(b <= 0.0, "disk", np.where(b < SPHEROID_MIN_BULGE_FRAC, "sphd", "sph"))


def galaxy_redshifts(seed, mag):
    """Redshifts of galaxies of r magnitudes ``mag``, from the survey seed's redshift stream.

    p(z | m) ~ z^2 exp(-(z / z0)^1.5) with median z_m = 0.25 + 0.1 (m - 18), z0 = z_m / 1.412
    (a Smail-type n(z) whose median grows with magnitude, ~0.9 at r = 24.5). With
    t = (z / z0)^1.5, t follows Gamma(2): sampled in one vectorised call.

    Parameters
    ----------
    seed : int
        Survey seed (the generator is seeded with ``seed + REDSHIFT_SEED_OFFSET``).
    mag : numpy.ndarray
        Galaxy magnitudes, in catalogue order.

    Returns
    -------
    numpy.ndarray
        float64 redshifts, > 0.
    """
    rng = make_rng(int(seed) + REDSHIFT_SEED_OFFSET, "redshift")
    z_median = 0.25 + 0.1 * (np.asarray(mag, float) - GAL_MAG_MIN)
    z0 = z_median / 1.412
    t = rng.gamma(2.0, 1.0, size=z0.shape)
    return np.maximum(z0 * t ** (1.0 / 1.5), 1e-3)


def make_catalog(params, seed, bounds=None, center=None):
    """Stars and galaxies of the field, as a dict of numpy columns (see FORMATS.md).

    Parameters
    ----------
    params : shapepipe.sim.geometry.SurveyParams
        Densities and magnitude ranges.
    seed : int
        Survey seed.
    bounds : tuple of float, optional
        Tangent-plane box (xmin, xmax, ymin, ymax) in arcsec (+x east); default: the field.
    center : tuple of float, optional
        (RA, Dec) of the tangent point; default: the tile centre.

    Returns
    -------
    dict
        Columns of :data:`COLUMNS`, stars first.
    """
    rng = make_rng(seed, "catalog")
    if bounds is None:
        bounds = field_bounds(params)
    if center is None:
        center = tile_center(*params.tile_number)
    xmin, xmax, ymin, ymax = bounds
    area = (xmax - xmin) * (ymax - ymin) / 3600.0  # arcmin^2

    m_lo, m_hi = params.star_mag_range
    if params.faint_star_density is None:
        n_star = rng.poisson(_expected_count(params.star_density, 20.5, STAR_SLOPE, m_lo, m_hi,
                                             area))
    else:
        m_cut = min(max(FAINT_STAR_MAG, m_lo), m_hi)
        n_bright = rng.poisson(_expected_count(params.star_density, 20.5, STAR_SLOPE, m_lo,
                                               m_cut, area))
        n_faint = rng.poisson(params.faint_star_density * area) if m_hi > m_cut else 0
        n_star = n_bright + n_faint
    n_gal = rng.poisson(_expected_count(params.gal_density, 24.5, GAL_SLOPE, GAL_MAG_MIN,
                                        params.gal_mag_max, area))
    if params.faint_star_density is None:
        star_mag = _power_law_mags(rng, n_star, STAR_SLOPE, m_lo, m_hi)
    else:
        star_mag = np.concatenate([_power_law_mags(rng, n_bright, STAR_SLOPE, m_lo, m_cut),
                                   _power_law_mags(rng, n_faint, STAR_SLOPE, m_cut, m_hi)])
    gal_mag = _power_law_mags(rng, n_gal, GAL_SLOPE, GAL_MAG_MIN, params.gal_mag_max)
    n = n_star + n_gal
    xi = rng.uniform(xmin, xmax, n)
    eta = rng.uniform(ymin, ymax, n)
    ra, dec = tangent_to_sky(center[0], center[1], xi, eta)
    hlr_disk, hlr_bulge, bulge_frac, hlr = galaxy_sizes(rng, gal_mag)
    e1, e2 = draw_ellipticities(rng, n_gal)

    zeros = np.zeros(n_star)
    mag = np.concatenate([star_mag, gal_mag])
    # Drawn after (and apart from) everything above: see REDSHIFT_SEED_OFFSET.
    gal_z = galaxy_redshifts(seed, gal_mag)
    return {
        "ID": np.arange(1, n + 1, dtype=np.int64),
        "RA": ra,
        "DEC": dec,
        "IS_STAR": np.concatenate([np.ones(n_star), np.zeros(n_gal)]).astype(np.int16),
        "MAG": mag.astype(np.float32),
        "FLUX": (10.0 ** (-0.4 * (mag - MAGZP))).astype(np.float32),
        "HLR": np.concatenate([zeros, hlr]).astype(np.float32),
        "HLR_DISK": np.concatenate([zeros, hlr_disk]).astype(np.float32),
        "HLR_BULGE": np.concatenate([zeros, hlr_bulge]).astype(np.float32),
        "BULGE_FRAC": np.concatenate([zeros, bulge_frac]).astype(np.float32),
        "E1_INT": np.concatenate([zeros, e1]).astype(np.float32),
        "E2_INT": np.concatenate([zeros, e2]).astype(np.float32),
        "GALTYPE": np.concatenate([np.full(n_star, "star"), galaxy_types(bulge_frac)]),
        "Z": np.concatenate([zeros, gal_z]).astype(np.float32),
    }


def select(cat, mask):
    """Rows of a column dict where ``mask`` is true."""
    return {k: v[mask] for k, v in cat.items()}
