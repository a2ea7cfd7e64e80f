"""A constant shear applied to positions on the sky (a lensed scene).

A constant reduced shear acts on a whole scene, not only on each galaxy's shape: the
positions of the galaxies move too, about a fixed point of the sky, by the same matrix that
shears the profiles. Simulations that shear only the shapes keep the separations of
neighbours unsheared, so a blend responds less to the applied shear than metacalibration
(which shears the whole stamp) says it should.

The frame is GalSim's world frame in the tangent plane of the centre: +u west (decreasing
RA), +v north; the matrix is GalSim's ``Shear(g1, g2).getMatrix()``, so a position and a
profile sheared by the same (g1, g2) stay consistent.
"""

import numpy as np


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


def inverse_gnomonic(u, v, ra0, dec0):
    """(ra, dec) in degrees of tangent-plane coordinates (u west, v north; radians)."""
    xi = -np.asarray(u, float)
    eta = np.asarray(v, float)
    d0 = np.deg2rad(float(dec0))
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    sin_c, cos_c = np.sin(c), np.cos(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(cos_c * np.sin(d0) + np.where(rho > 0, eta * sin_c / rho, 0.0)
                        * np.cos(d0))
    ra = float(ra0) + np.rad2deg(np.arctan2(xi * sin_c, rho * np.cos(d0) * cos_c
                                            - eta * np.sin(d0) * sin_c))
    return np.mod(ra, 360.0), np.rad2deg(dec)


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
    return inverse_gnomonic(m[0, 0] * u + m[0, 1] * v, m[1, 0] * u + m[1, 1] * v, ra0, dec0)
