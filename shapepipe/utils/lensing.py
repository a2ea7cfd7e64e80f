"""A constant shear applied to positions on the sky (a lensed scene).

A constant reduced shear acts on a whole scene, not only on each galaxy's shape: the
positions of the galaxies move too, about a fixed point of the sky, by the same matrix that
shears the profiles. Simulations that shear only the shapes keep the separations of
neighbours unsheared, so a blend responds less to the applied shear than metacalibration
(which shears the whole stamp) says it should.

The frame is GalSim's world frame in the tangent plane of the centre: +u west (decreasing
RA), +v north; the matrix is GalSim's ``Shear(g1, g2).getMatrix()``, so a position and a
profile sheared by the same (g1, g2) stay consistent.

A field-wide scene shear moves a galaxy by up to g times its distance from the centre (~15"
over a small simulated field at g = 0.02): paired +g / -g simulations then put the same
galaxy on different pixel noise, and the noise no longer cancels in their difference.
:func:`shear_groups` keeps what matters for measurement: galaxies closer than a linking
length are grouped (friends of friends) and each group is sheared about its own centre. The
separations within a group shear exactly as in the lensed scene; a group's overall position
(to which shear measurement is blind) does not move, so an isolated galaxy stays on its
pixels.
"""

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


def shear_matrix(g1, g2):
    """GalSim's area-preserving shear matrix ``[[1+g1, g2], [g2, 1-g1]] / sqrt(1-|g|^2)``.

    Parameters
    ----------
    g1, g2 : float
        Reduced shear, ``|g| < 1``.

    Returns
    -------
    numpy.ndarray
        (2, 2) matrix acting on (u, v). Its inverse is ``shear_matrix(-g1, -g2)``.
    """
    g1, g2 = float(g1), float(g2)
    gsq = g1 * g1 + g2 * g2
    if not gsq < 1.0:
        raise ValueError(f"shear ({g1}, {g2}): |g| must be < 1")
    return np.array([[1.0 + g1, g2], [g2, 1.0 - g1]]) / np.sqrt(1.0 - gsq)


def gnomonic(ra, dec, ra0, dec0):
    """Tangent-plane coordinates (u west, v north; radians) of (ra, dec) about (ra0, dec0).

    Parameters
    ----------
    ra, dec : array_like
        Positions (deg).
    ra0, dec0 : float
        Tangent point (deg).

    Returns
    -------
    u, v : numpy.ndarray
    """
    a = np.deg2rad(np.asarray(ra, float) - float(ra0))
    d = np.deg2rad(np.asarray(dec, float))
    d0 = np.deg2rad(float(dec0))
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a)
    xi = np.cos(d) * np.sin(a) / cos_c  # east
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a)) / cos_c
    return -xi, eta


def tangent_to_sky(ra0, dec0, xi_arcsec, eta_arcsec):
    """Gnomonic inverse projection: tangent-plane offsets (arcsec, +xi east) to RA, Dec (deg)."""
    xi = np.deg2rad(np.asarray(xi_arcsec, float) / 3600.0)
    eta = np.deg2rad(np.asarray(eta_arcsec, float) / 3600.0)
    a0 = np.deg2rad(ra0)
    d0 = np.deg2rad(dec0)
    denom = np.cos(d0) - eta * np.sin(d0)
    ra = a0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(d0) + eta * np.cos(d0), np.hypot(xi, denom))
    return np.rad2deg(ra) % 360.0, np.rad2deg(dec)


def _uv_to_sky(u, v, ra0, dec0):
    """(ra, dec) in degrees of tangent-plane coordinates (u west, v north; radians)."""
    return tangent_to_sky(ra0, dec0, -np.rad2deg(u) * 3600.0, np.rad2deg(v) * 3600.0)


def shear_positions(ra, dec, g1, g2, ra0, dec0):
    """Positions after a constant shear (g1, g2) of the scene about (ra0, dec0).

    Parameters
    ----------
    ra, dec : array_like
        Unsheared positions (deg).
    g1, g2 : float
        Reduced shear; ``shear_positions(..., -g1, -g2, ...)`` undoes it.
    ra0, dec0 : float
        The fixed point (deg), e.g. the centre of the simulated field.

    Returns
    -------
    ra, dec : numpy.ndarray
        Sheared positions (deg).
    """
    u, v = gnomonic(ra, dec, ra0, dec0)
    m = shear_matrix(g1, g2)
    return _uv_to_sky(m[0, 0] * u + m[0, 1] * v, m[1, 0] * u + m[1, 1] * v, ra0, dec0)


def friends_of_friends(u, v, link):
    """Group labels (0..n_groups-1) linking points closer than ``link`` (same units as u, v)."""
    n = len(u)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pairs = cKDTree(np.column_stack([u, v])).query_pairs(link, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def shear_groups(ra, dec, g1, g2, ra0, dec0, link_arcsec=8.0):
    """Positions after shearing each friends-of-friends group about its own centre.

    Parameters
    ----------
    ra, dec : array_like
        Unsheared positions (deg).
    g1, g2 : float
        Reduced shear.
    ra0, dec0 : float
        Tangent point of the projection (deg), e.g. the field centre.
    link_arcsec : float
        Linking length: galaxies closer than this are in one group (the separations that
        matter for blending and for neighbours within a measurement stamp).

    Returns
    -------
    ra, dec : numpy.ndarray
        Sheared positions (deg).
    labels : numpy.ndarray
        Group of every position (an isolated galaxy is a group of one and does not move).
    """
    u, v = gnomonic(ra, dec, ra0, dec0)
    rad = np.deg2rad(link_arcsec / 3600.0)
    labels = friends_of_friends(u, v, rad)
    n_groups = int(labels.max()) + 1 if labels.size else 0
    size = np.bincount(labels, minlength=n_groups)
    cu = np.bincount(labels, u, n_groups)[labels] / size[labels]
    cv = np.bincount(labels, v, n_groups)[labels] / size[labels]
    m = shear_matrix(g1, g2)
    du, dv = u - cu, v - cv
    ra_s = np.array(ra, dtype=np.float64)
    dec_s = np.array(dec, dtype=np.float64)
    moved = size[labels] > 1  # a group of one stays exactly where it was
    ra_s[moved], dec_s[moved] = _uv_to_sky(
        cu[moved] + m[0, 0] * du[moved] + m[0, 1] * dv[moved],
        cv[moved] + m[1, 0] * du[moved] + m[1, 1] * dv[moved], ra0, dec0)
    return ra_s, dec_s, labels
