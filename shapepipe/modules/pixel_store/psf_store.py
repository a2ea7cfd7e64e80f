"""PSFStore: Gaussian-mixture PSFs at a grid of detector locations, in HDF5.

Layout (forcepho's), for each ``<group>`` = ``<band>`` or, where the PSF varies between
exposures, ``<band>/<expID>``:

- ``<group>/detector_locations``: ``(2, nloc)`` float64, row 0 the x and row 1 the y of each
  location (0-based pixel coordinates, x the first image index, as the PixelStore's images);
- ``<group>/parameters``: ``(nloc, nradii * ngauss)`` of :data:`PSF_DTYPE` (amp, xcen, ycen,
  Cxx, Cyy, Cxy as float32, sersic_bin as int32); centres and covariances in image pixels,
  amplitudes summing to 1 within each radius bin; ``nradii`` copies of the mixture with
  ``sersic_bin = 0 .. nradii-1`` (forcepho's layout for un-preconvolved PSFs);
- attribute ``n_psf_per_source`` = nradii * ngauss, and ``psf_file``, ``ngauss``, ``nradii``.

The mixtures are fitted to a PSF model (PSFEx ``.psf`` files of ``psfex_runner`` or
``psf_model_runner``, evaluated with the project's PSFEx reader) with the project's own
expectation-maximisation fit, :func:`shapepipe.modules.ngmix.fit_psf_em`.
"""

import os

import h5py
import numpy as np

from shapepipe.modules.ngmix import (
    GMix,
    Jacobian,
    adaptive_moments,
    fit_psf_em,
    levenberg_marquardt,
)
from shapepipe.modules.pixel_store.h5reader import H5Reader
from shapepipe.modules.psfex.dotpsf import read_psf
from shapepipe.utils.pixels import numpy_to_fits

__all__ = ["PSF_COLS", "PSF_DTYPE", "PSFStore", "fit_psf_mixture", "mixture_image",
           "grid_locations", "psf_mixtures_from_model"]

#: Column order of forcepho's PSF parameters (matches its GPU kernel).
PSF_COLS = ["amp", "xcen", "ycen", "Cxx", "Cyy", "Cxy"]
PSF_DTYPE = np.dtype([(c, np.float32) for c in PSF_COLS] + [("sersic_bin", np.int32)])


def _mixture_equations(x, y, data):
    """``func(p)`` for :func:`levenberg_marquardt`: residuals of a mixture on pixel centres.

    ``p`` holds (amp, xcen, ycen, Cxx, Cyy, Cxy) per Gaussian; derivatives are analytic.
    """
    def func(p):
        p = p.reshape(-1, 6)
        amp, mx, my, cxx, cyy, cxy = (p[:, i][:, None] for i in range(6))
        det = cxx * cyy - cxy * cxy
        if np.any(det <= 0) or np.any(cxx <= 0) or np.any(amp <= 0):
            return None
        dx, dy = x[None, :] - mx, y[None, :] - my
        # Inverse covariance times d, and the Gaussians.
        ax = (cyy * dx - cxy * dy) / det
        ay = (cxx * dy - cxy * dx) / det
        g = amp / (2 * np.pi * np.sqrt(det)) * np.exp(-0.5 * (dx * ax + dy * ay))
        r = g.sum(axis=0) - data
        jac = np.empty((p.shape[0], 6, x.size))
        jac[:, 0] = g / amp
        jac[:, 1] = g * ax
        jac[:, 2] = g * ay
        # dG/dC = G/2 (C^-1 d d^T C^-1 - C^-1); the off-diagonal term counts twice.
        jac[:, 3] = 0.5 * g * (ax * ax - cyy / det)
        jac[:, 4] = 0.5 * g * (ay * ay - cxx / det)
        jac[:, 5] = g * (ax * ay + cxy / det)
        jac = jac.reshape(-1, x.size)
        return float(r @ r), jac @ r, jac @ jac.T
    return func


def fit_psf_mixture(stamp, n_gauss=3, maxiter=200, crop_sigmas=5.5):
    """Fit a Gaussian mixture to a PSF stamp, in pixel units.

    Two stages, both the project's own fitting code: an expectation-maximisation fit
    (:func:`shapepipe.modules.ngmix.fit_psf_em`) on the positive pixels gives the starting
    point; a least-squares fit of the mixture to every pixel value
    (:func:`shapepipe.modules.ngmix.levenberg_marquardt`, uniform weights) finishes it. EM
    alone weighs the far wings (and the positive half of a model's noise) like the core,
    which biases the size by several per cent; least squares is dominated by the core, as
    adaptive moments are.

    Parameters
    ----------
    stamp : numpy.ndarray
        ``(ny, nx)`` PSF image (numpy row = y), centred near pixel ``(nx // 2, ny // 2)``.
    n_gauss : int
        Number of Gaussians.
    maxiter : int
        Maximum model evaluations of the least-squares stage.
    crop_sigmas : float
        Half-side of the fitted box around the stamp centre, in adaptive-moment sigmas.

    Returns
    -------
    params : numpy.ndarray
        ``(n_gauss,)`` of :data:`PSF_DTYPE`: amplitudes normalised to sum to 1, centres
        relative to the stamp centre ``(nx // 2, ny // 2)``, covariances in pixel^2;
        ``sersic_bin = 0``; sorted by decreasing amplitude.
    flags : int
        0 if the least-squares fit converged, 1 if it did not (the EM or partly refined
        mixture is returned), 2 if the EM start failed too.
    """
    stamp = np.asarray(stamp, dtype=np.float64)
    ny, nx = stamp.shape
    cx, cy = nx // 2, ny // 2
    # Unit Jacobian: u = x - cx, v = y - cy in pixels, so the mixture comes out in pixels.
    jac = Jacobian.from_scale(cx, cy, 1.0)
    am = adaptive_moments(stamp, jac, tol=1e-5)
    # Fit the core: a box of +- crop_sigmas adaptive sigmas. Beyond it a PSF model is mostly
    # noise, and least squares over 51 x 51 pixels converges ~10x slower for nothing.
    half = min(cx, cy, nx - 1 - cx, ny - 1 - cy)
    if not am["flags"] and np.isfinite(am["T"]) and am["T"] > 0:
        half = int(np.clip(np.ceil(crop_sigmas * np.sqrt(am["T"] / 2)), 4, half))
    core = stamp[cy - half:cy + half + 1, cx - half:cx + half + 1]
    em = fit_psf_em(core, Jacobian.from_scale(half, half, 1.0), n_gauss=n_gauss, tol=1e-6)
    gm = em["gmix"]
    start = np.stack([gm.flux * core.sum(), gm.u + em["u0"], gm.v + em["v0"], gm.cuu, gm.cvv,
                      gm.cuv], axis=1).ravel()
    off = np.arange(-half, half + 1, dtype=float)
    func = _mixture_equations(np.tile(off, off.size), np.repeat(off, off.size), core.ravel())
    res = levenberg_marquardt(func, start, maxiter=maxiter, ftol=1e-6, newton_after=None)
    flags = 0 if res["converged"] else 1
    best = res["x"] if np.isfinite(res["chi2"]) else start
    if em["flags"] and flags:
        flags = 2
    best = best.reshape(-1, 6)
    order = np.argsort(best[:, 0])[::-1]
    best = best[order]
    params = np.zeros(len(best), dtype=PSF_DTYPE)
    params["amp"] = best[:, 0] / best[:, 0].sum()
    for i, name in enumerate(PSF_COLS[1:], start=1):
        params[name] = best[:, i]
    return params, flags


def mixture_image(params, shape, centre=None):
    """Render PSF parameters on a pixel grid (values at pixel centres, unit total flux).

    Parameters
    ----------
    params : numpy.ndarray
        :data:`PSF_DTYPE` entries of one radius bin.
    shape : (int, int)
        ``(ny, nx)`` of the image.
    centre : (float, float), optional
        (x, y) of the mixture's origin; default the stamp centre ``(nx // 2, ny // 2)``.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)``.
    """
    ny, nx = shape
    cx, cy = (nx // 2, ny // 2) if centre is None else centre
    gm = GMix(params["amp"], params["xcen"], params["ycen"], params["Cxx"], params["Cyy"],
              params["Cxy"])
    y, x = np.mgrid[0:ny, 0:nx]
    return gm.render(x - cx, y - cy)


def grid_locations(nx, ny, ngrid):
    """``(2, ngrid^2)`` centres of an ngrid x ngrid grid of cells over an (nx, ny) image."""
    xs = (np.arange(ngrid) + 0.5) * nx / ngrid - 0.5
    ys = (np.arange(ngrid) + 0.5) * ny / ngrid - 0.5
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    return np.stack([gx.ravel(), gy.ravel()])


def psf_mixtures_from_model(psf_path, locations, n_gauss=3, nradii=1, stamp_size=None):
    """Gaussian mixtures of a PSFEx-format model at detector locations.

    Parameters
    ----------
    psf_path : str
        The ``.psf`` file; its context must be the two image coordinates (X*_IMAGE,
        Y*_IMAGE, 1-based, as SExtractor writes them).
    locations : numpy.ndarray
        ``(2, nloc)`` 0-based x, y.
    n_gauss, nradii : int
        Gaussians per mixture, copies per location (``sersic_bin`` 0..nradii-1).
    stamp_size : int, optional
        Side of the model stamps in pixels (default: the model's).

    Returns
    -------
    params : numpy.ndarray
        ``(nloc, nradii * n_gauss)`` of :data:`PSF_DTYPE`.
    stamps : numpy.ndarray
        ``(nloc, size, size)`` the model images the mixtures were fitted to.
    flags : numpy.ndarray
        ``(nloc,)`` fit flags (0 = converged).
    """
    model = read_psf(psf_path)
    names = [n.upper() for n in model.polnames]
    if len(names) != 2 or not (names[0].startswith("X") and names[1].startswith("Y")):
        raise ValueError(f"{psf_path}: PSF context {model.polnames}: expected the two image "
                         "coordinates (e.g. XWIN_IMAGE, YWIN_IMAGE)")
    locations = np.asarray(locations, dtype=float)
    context = numpy_to_fits(locations.T)  # the model's context is 1-based
    stamps = model.pixel_stamps(context, size=stamp_size)
    nloc = locations.shape[1]
    params = np.zeros((nloc, nradii, n_gauss), dtype=PSF_DTYPE)
    flags = np.zeros(nloc, dtype=np.int32)
    for i in range(nloc):  # one EM fit per location (a few per CCD)
        fit, flags[i] = fit_psf_mixture(stamps[i], n_gauss)
        params[i] = fit[None, :]
    params["sersic_bin"] = np.arange(nradii)[None, :, None]
    return params.reshape(nloc, nradii * n_gauss), stamps, flags


class PSFStore(H5Reader):
    """Gaussian-mixture PSFs by band (and exposure), forcepho's ``PSFStore``.

    Parameters
    ----------
    h5file : str
        The HDF5 file.
    """

    def __init__(self, h5file):
        self.h5file = os.fspath(h5file)

    def add_psf(self, band, locations, params, expID=None, **attrs):
        """Write (or replace) the mixtures of a band, or of one exposure of a band.

        Parameters
        ----------
        band : str
            Band name.
        locations : numpy.ndarray
            ``(2, nloc)`` 0-based x, y.
        params : numpy.ndarray
            ``(nloc, n_psf_per_source)`` of :data:`PSF_DTYPE`.
        expID : str, optional
            Store under ``<band>/<expID>`` (PSF varying between exposures).
        **attrs
            Extra group attributes (strings or numbers).
        """
        locations = np.asarray(locations, dtype=np.float64)
        params = np.asarray(params)
        if params.dtype != PSF_DTYPE:
            raise ValueError(f"PSF parameters: dtype {params.dtype}, expected {PSF_DTYPE}")
        if locations.ndim != 2 or locations.shape[0] != 2 or params.ndim != 2 \
                or params.shape[0] != locations.shape[1]:
            raise ValueError(f"PSF store: locations {locations.shape} must be (2, nloc) and "
                             f"parameters {params.shape} (nloc, n_psf_per_source)")
        self.close()
        path = band if expID is None else f"{band}/{expID}"
        with h5py.File(self.h5file, "a") as h5:
            group = h5.require_group(path)
            # New datasets under temporary names, then swapped in: per-exposure groups below
            # a band (and the band's own datasets) are left alone.
            for name, data in (("detector_locations", locations), ("parameters", params)):
                tmp = f".{name}.tmp"
                if tmp in group:
                    del group[tmp]
                group.create_dataset(tmp, data=data)
            for name in ("detector_locations", "parameters"):
                if name in group:
                    del group[name]
                group.move(f".{name}.tmp", name)
            group.attrs["n_psf_per_source"] = params.shape[1]
            for key, value in attrs.items():
                group.attrs[key] = value

    def _group(self, band, expID=None):
        path = band if expID is None else f"{band}/{expID}"
        if path not in self.data or "parameters" not in self.data[path]:
            raise KeyError(f"{self.h5file}: no PSF parameters for {path}")
        return self.data[path]

    def lookup(self, band, xy=None, expID=None):
        """PSF parameters at the stored location nearest to ``xy``.

        Parameters
        ----------
        band : str
            Band (or ``"<band>/<expID>"``, as forcepho allows).
        xy : (float, float), optional
            0-based detector position; None gives the first location.
        expID : str, optional
            The exposure, where the PSF is stored per exposure.

        Returns
        -------
        numpy.ndarray
            ``(nradii * ngauss,)`` of :data:`PSF_DTYPE`.
        """
        group = self._group(band, expID)
        choose = 0
        if xy is not None:
            xp, yp = group["detector_locations"][:]
            choose = int(np.argmin(np.hypot(float(xy[0]) - xp, float(xy[1]) - yp)))
        return group["parameters"][choose]

    def get_local_psf(self, band, source=None, wcs=None, expID=None):
        """PSF parameters for a source: nearest location to its position in the exposure.

        Parameters
        ----------
        band : str
            Band.
        source : object with ``ra``, ``dec`` (degrees) or a (ra, dec) pair, optional
            The source; without it (or without ``wcs``) the first location is used.
        wcs : astropy.wcs.WCS, optional
            The exposure's celestial WCS (x = FITS axis 1, 0-based).
        expID : str, optional
            The exposure, where the PSF is stored per exposure.

        Returns
        -------
        numpy.ndarray
            ``(nradii * ngauss,)`` of :data:`PSF_DTYPE`.
        """
        xy = None
        if wcs is not None and source is not None:
            ra, dec = (source.ra, source.dec) if hasattr(source, "ra") else source
            xy = wcs.world_to_pixel_values(float(ra), float(dec))
        return self.lookup(band, xy=xy, expID=expID)
