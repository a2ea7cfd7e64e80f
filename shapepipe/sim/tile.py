"""Stacking exposures into a tile: bilinear resampling through the WCSs, inverse-variance mean."""

import numpy as np
from scipy.ndimage import map_coordinates

from shapepipe.sim import geometry as geo

GRID_STEP = 32  # px: the tile->CCD mapping is computed exactly on this grid, interpolated between


class TileStacker:
    """Accumulate background-subtracted CCDs onto a tile grid.

    The tile value is ``sum_e R_e(w_e I_e) / sum_e R_e(w_e)`` and its weight ``sum_e R_e(w_e)``,
    where ``R_e`` is bilinear resampling of exposure-CCD ``e`` onto the tile pixels. Pixels of
    weight 0 (flagged) therefore never leak into the tile: their neighbours fill in.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The tile WCS header (NAXIS1, NAXIS2 give the size).
    """

    def __init__(self, header):
        self.header = header
        self.wcs = geo.make_wcs(header)
        self.nx = int(header["NAXIS1"])
        self.ny = int(header["NAXIS2"])
        self.num = np.zeros((self.ny, self.nx), dtype=np.float32)
        self.den = np.zeros((self.ny, self.nx), dtype=np.float32)

    def add(self, image, weight, ccd_wcs):
        """Resample one background-subtracted CCD (with its inverse-variance weight) and add it.

        Parameters
        ----------
        image, weight : numpy.ndarray
            (ny, nx) CCD arrays (weight 0 on flagged pixels).
        ccd_wcs : astropy.wcs.WCS
            The CCD WCS.
        """
        box = self._footprint(image.shape, ccd_wcs)
        if box is None:
            return
        x0, x1, y0, y1 = box  # 1-based, inclusive
        xc, yc = self._mapping(ccd_wcs, x0, x1, y0, y1)
        coords = np.stack([yc - 1.0, xc - 1.0])  # numpy order, 0-based
        wim = (weight * image).astype(np.float32)
        num = map_coordinates(wim, coords, order=1, mode="constant", cval=0.0,
                              prefilter=False)
        den = map_coordinates(weight.astype(np.float32), coords, order=1, mode="constant",
                              cval=0.0, prefilter=False)
        self.num[y0 - 1 : y1, x0 - 1 : x1] += num
        self.den[y0 - 1 : y1, x0 - 1 : x1] += den

    def _footprint(self, shape, ccd_wcs):
        ny, nx = shape
        cx = np.array([0.5, nx + 0.5, nx + 0.5, 0.5])
        cy = np.array([0.5, 0.5, ny + 0.5, ny + 0.5])
        ra, dec = geo.pix_to_sky(ccd_wcs, cx, cy)
        tx, ty = geo.sky_to_pix(self.wcs, ra, dec)
        x0 = max(int(np.floor(tx.min())) - 1, 1)
        x1 = min(int(np.ceil(tx.max())) + 1, self.nx)
        y0 = max(int(np.floor(ty.min())) - 1, 1)
        y1 = min(int(np.ceil(ty.max())) + 1, self.ny)
        if x0 > x1 or y0 > y1:
            return None
        return x0, x1, y0, y1

    def _mapping(self, ccd_wcs, x0, x1, y0, y1):
        """CCD pixel coordinates (1-based) of every tile pixel of the box."""
        gx = np.arange(x0, x1 + GRID_STEP, GRID_STEP, dtype=float)
        gy = np.arange(y0, y1 + GRID_STEP, GRID_STEP, dtype=float)
        mx, my = np.meshgrid(gx, gy)
        ra, dec = geo.pix_to_sky(self.wcs, mx.ravel(), my.ravel())
        cx, cy = geo.sky_to_pix(ccd_wcs, ra, dec)
        cx = cx.reshape(mx.shape)
        cy = cy.reshape(mx.shape)
        fx = (np.arange(x0, x1 + 1, dtype=float) - x0) / GRID_STEP
        fy = (np.arange(y0, y1 + 1, dtype=float) - y0) / GRID_STEP
        fyy, fxx = np.meshgrid(fy, fx, indexing="ij")
        grid = np.stack([fyy, fxx])
        xc = map_coordinates(cx, grid, order=1, mode="nearest")
        yc = map_coordinates(cy, grid, order=1, mode="nearest")
        return xc, yc

    def result(self):
        """The tile image and weight (float32 arrays)."""
        image = np.zeros_like(self.num)
        good = self.den > 0
        image[good] = self.num[good] / self.den[good]
        return image, self.den.copy()
