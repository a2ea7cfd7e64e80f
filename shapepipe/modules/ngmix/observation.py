"""Observations: one epoch of one object (image, weight, mask, local Jacobian, PSF image)."""

import numpy as np


class Jacobian:
    """Local affine map from pixel to sky coordinates around an object.

    ``[u, v] = matrix @ [x - x0, y - y0]`` with ``x`` the numpy column index, ``y`` the row
    index (both 0-based) and ``u, v`` in arcsec.

    Parameters
    ----------
    x0, y0 : float
        Reference pixel (0-based numpy coordinates), usually the object position.
    matrix : array_like, shape (2, 2)
        ``[[du/dx, du/dy], [dv/dx, dv/dy]]`` in arcsec per pixel.
    """

    def __init__(self, x0, y0, matrix):
        self.x0 = float(x0)
        self.y0 = float(y0)
        self.matrix = np.asarray(matrix, dtype=float).reshape(2, 2)
        det = np.linalg.det(self.matrix)
        if not np.isfinite(det) or det == 0:
            raise ValueError(f"singular Jacobian matrix {self.matrix.tolist()}")
        self.det = abs(det)
        self.inverse = np.linalg.inv(self.matrix)

    @classmethod
    def from_scale(cls, x0, y0, scale):
        """A diagonal Jacobian with ``scale`` arcsec per pixel (u along x, v along y)."""
        return cls(x0, y0, [[scale, 0.0], [0.0, scale]])

    @classmethod
    def from_wcs(cls, wcs, x0, y0):
        """Jacobian of an astropy WCS at numpy pixel ``(x0, y0)`` (local tangent plane).

        ``u = -dRA cos(Dec)`` (west) and ``v = dDec`` (north), as GalSim's local
        Jacobians: for a north-up, east-left image ``u`` follows ``x``.
        Finite differences of 1 pixel are used; the result is exact for TAN projections
        to well below 1e-6 over a stamp.
        """
        pix = np.array([[x0, y0], [x0 + 0.5, y0], [x0 - 0.5, y0], [x0, y0 + 0.5], [x0, y0 - 0.5]])
        world = wcs.all_pix2world(pix, 0)
        ra0, dec0 = np.deg2rad(world[0])
        ra = np.deg2rad(world[:, 0])
        dec = np.deg2rad(world[:, 1])
        # Gnomonic projection about the object: exact local tangent-plane coordinates.
        cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
        xi = np.cos(dec) * np.sin(ra - ra0) / cosc
        eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
        arcsec = 180.0 / np.pi * 3600.0
        u = -xi * arcsec
        v = eta * arcsec
        mat = np.array([[u[1] - u[2], u[3] - u[4]], [v[1] - v[2], v[3] - v[4]]])
        return cls(x0, y0, mat)

    @property
    def scale(self):
        """Linear pixel scale ``sqrt(|det J|)`` in arcsec."""
        return float(np.sqrt(self.det))

    def uv(self, x, y):
        """Sky coordinates of numpy pixel coordinates."""
        dx = np.asarray(x, dtype=float) - self.x0
        dy = np.asarray(y, dtype=float) - self.y0
        m = self.matrix
        return m[0, 0] * dx + m[0, 1] * dy, m[1, 0] * dx + m[1, 1] * dy

    def xy(self, u, v):
        """Numpy pixel coordinates of sky coordinates."""
        mi = self.inverse
        u = np.asarray(u, dtype=float)
        v = np.asarray(v, dtype=float)
        return self.x0 + mi[0, 0] * u + mi[0, 1] * v, self.y0 + mi[1, 0] * u + mi[1, 1] * v

    def with_centre(self, x0, y0):
        return Jacobian(x0, y0, self.matrix)


class Observation:
    """One epoch of one object.

    Parameters
    ----------
    image : numpy.ndarray, shape (ny, nx)
        Background-subtracted pixel values.
    weight : numpy.ndarray
        Inverse variance per pixel (0 = ignore the pixel).
    jacobian : Jacobian
        Pixel -> sky map with its reference point at the object position.
    psf : numpy.ndarray, optional
        PSF image at the same pixel grid (same Jacobian matrix), centred in its stamp; it is
        normalised to unit sum here.
    mask : numpy.ndarray, optional
        Bad pixels (non-zero); their weight is set to zero.
    """

    def __init__(self, image, weight, jacobian, psf=None, mask=None):
        self.image = np.ascontiguousarray(image, dtype=float)
        weight = np.array(weight, dtype=float)
        if weight.shape != self.image.shape:
            raise ValueError(f"weight shape {weight.shape} differs from image shape "
                             f"{self.image.shape}")
        bad = ~np.isfinite(weight) | (weight < 0) | ~np.isfinite(self.image)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != self.image.shape:
                raise ValueError(f"mask shape {mask.shape} differs from image shape "
                                 f"{self.image.shape}")
            bad |= mask != 0
        weight[bad] = 0.0
        self.weight = weight
        self.image = np.where(bad, 0.0, self.image)
        self.jacobian = jacobian
        self.psf = None
        if psf is not None:
            psf = np.asarray(psf, dtype=float)
            total = psf.sum()
            if not np.isfinite(total) or total <= 0:
                raise ValueError("PSF image has a non-positive or non-finite sum")
            self.psf = psf / total
        ny, nx = self.image.shape
        y, x = np.mgrid[0:ny, 0:nx]
        self._u, self._v = jacobian.uv(x.ravel(), y.ravel())

    @property
    def shape(self):
        return self.image.shape

    def psf_jacobian(self):
        """Jacobian of the PSF stamp: same matrix, reference at the stamp centre."""
        ny, nx = self.psf.shape
        return Jacobian((nx - 1) / 2.0, (ny - 1) / 2.0, self.jacobian.matrix)

    def pixels(self):
        """Good pixels as flat arrays ``(u, v, image, weight, area)``."""
        w = self.weight.ravel()
        good = w > 0
        return (self._u[good], self._v[good], self.image.ravel()[good], w[good],
                self.jacobian.det)

    def copy_with(self, image=None, weight=None, psf=None):
        """A new observation sharing the Jacobian, with some arrays replaced."""
        return Observation(self.image if image is None else image,
                           self.weight if weight is None else weight,
                           self.jacobian, psf=self.psf if psf is None else psf)


def make_stamp_obs(image, weight, psf, pixel_scale, mask=None):
    """Observation of an object near the centre of a square stamp with a plain pixel scale."""
    ny, nx = np.shape(image)
    jac = Jacobian.from_scale((nx - 1) / 2.0, (ny - 1) / 2.0, pixel_scale)
    return Observation(image, weight, jac, psf=psf, mask=mask)


def make_wcs_obs(image, weight, psf, wcs, x_image, y_image, centre=None, mask=None):
    """Observation of a stamp cut from an image with an astropy WCS (one epoch).

    Parameters
    ----------
    image, weight, psf : numpy.ndarray
        Stamp pixels, inverse variance, PSF image at the object (same pixel grid).
    wcs : astropy.wcs.WCS
        WCS of the full image (CCD or tile).
    x_image, y_image : float
        Object position in the full image, 0-based numpy coordinates (convert catalogue
        positions with ``shapepipe.utils.pixels.fits_to_numpy``).
    centre : (float, float), optional
        Object position inside the stamp ``(x, y)``, 0-based (default: the stamp centre).
    mask : numpy.ndarray, optional
        Bad pixels (non-zero).
    """
    ny, nx = np.shape(image)
    if centre is None:
        centre = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    local = Jacobian.from_wcs(wcs, x_image, y_image)
    return Observation(image, weight, Jacobian(centre[0], centre[1], local.matrix), psf=psf,
                       mask=mask)
