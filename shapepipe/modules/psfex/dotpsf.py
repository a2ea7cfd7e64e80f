"""The PSFEx ``.psf`` file format: reading, writing and evaluating the PSF model.

A ``.psf`` file holds, in a binary table HDU named ``PSF_DATA``, one row with a column
``PSF_MASK`` of shape ``(ncoeff, ny, nx)`` (FITS ``TDIM = (nx, ny, ncoeff)``): one image per
term of a polynomial in the normalised context variables

    u_i = (CONTEXT_i - POLZERO_i) / POLSCAL_i        (CONTEXT_i named by POLNAME_i)

The PSF at a position is ``sum_k poly_k(u) * PSF_MASK[k]``. Variables are gathered in
groups (``POLGRP_i``, 1-based) and each group ``g`` has a maximum total degree ``POLDEG_g``.
The order of the terms is PSFEx's (``poly_powers`` in its ``poly.c``): an odometer in which
the first variable advances fastest; for one group of (x, y) at degree 2 this gives
``1, x, x^2, y, x*y, y^2``.

The PSF images are sampled with a step of ``PSF_SAMP`` image pixels, the centre of the
model at (0-based) pixel ``(nx // 2, ny // 2)`` of the mask. The model is the
pixel-convolved ("effective") PSF, so values on the image pixel grid are obtained by
interpolation, not by integration.
"""

import math

import numpy as np
from astropy.io import fits

from shapepipe.modules.psfex.resample import lanczos_matrix
from shapepipe.utils.atomic import write_fits

#: Lanczos order of the resampling to the image grid: order 3 (PSFEx's) is off by 0.35% of
#: the peak for a 2.2-pixel-sigma PSF shifted by 0.3 pixel; order 7 by 0.08%.
INTERP_ORDER = 7

#: Failure codes of a model that cannot be used, as in ShapePipe's psfex_interp.
NOT_ENOUGH_STARS = "Fail_stars"
BAD_CHI2 = "Fail_chi2"
FILE_NOT_FOUND = "File_not_found"


def n_coefficients(groups, degrees):
    """Number of polynomial terms for the given groups (1-based) and group degrees."""
    n_per_group = np.bincount(np.asarray(groups, dtype=int) - 1, minlength=len(degrees))
    total = 1
    for n_vars, deg in zip(n_per_group, degrees):
        total *= math.comb(int(n_vars) + int(deg), int(deg))
    return total


def poly_powers(groups, degrees):
    """Exponents of every polynomial term, in PSFEx order.

    Parameters
    ----------
    groups : sequence of int
        Group (1-based) of each context variable.
    degrees : sequence of int
        Maximum total degree of each group.

    Returns
    -------
    numpy.ndarray
        Integer array ``(ncoeff, ndim)``: the power of each variable in each term.
    """
    groups = [int(g) - 1 for g in groups]
    ndim = len(groups)
    ncoeff = n_coefficients([g + 1 for g in groups], degrees)
    powers = np.zeros((ncoeff, ndim), dtype=int)
    if ndim == 0:
        return powers
    # Budget of degree left in each group; the first term after the constant is u_0 itself.
    left = [int(d) for d in degrees]
    if left[groups[0]]:
        left[groups[0]] -= 1
    expo = [0] * ndim
    expo[0] = 1
    for term in range(1, ncoeff):
        powers[term] = expo
        # Advance the odometer: raise the first variable whose group still has budget;
        # every variable passed over gives its power back to its group and resets.
        for d in range(ndim):
            g = groups[d]
            if left[g]:
                left[g] -= 1
                expo[d] += 1
                break
            left[g] = expo[d]
            expo[d] = 0
    return powers


class PSFModel:
    """A PSFEx-format PSF model.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(ncoeff, ny, nx)`` basis images.
    polnames : list of str
        Context variable of each dimension (``X_IMAGE``, ``YWIN_IMAGE``...).
    polzero, polscal : sequence of float
        Offset and scale of each context variable.
    groups : sequence of int
        Group (1-based) of each variable.
    degrees : sequence of int
        Degree of each group.
    samp : float
        Sampling step of the mask in image pixels (``PSF_SAMP``).
    header : dict, optional
        Other header keys (``LOADED``, ``ACCEPTED``, ``CHI2``, ``PSF_FWHM``...).
    """

    def __init__(self, mask, polnames, polzero, polscal, groups, degrees, samp=1.0, header=None):
        self.mask = np.asarray(mask, dtype=np.float64)
        if self.mask.ndim == 2:
            self.mask = self.mask[None]
        self.polnames = list(polnames)
        self.polzero = np.asarray(polzero, dtype=float)
        self.polscal = np.asarray(polscal, dtype=float)
        self.groups = [int(g) for g in groups]
        self.degrees = [int(d) for d in degrees]
        self.samp = float(samp)
        self.header = dict(header or {})
        self.powers = poly_powers(self.groups, self.degrees)
        if self.powers.shape[0] != self.mask.shape[0]:
            raise ValueError(
                f"PSF model: {self.mask.shape[0]} basis images but groups {self.groups} and "
                f"degrees {self.degrees} give {self.powers.shape[0]} polynomial terms"
            )

    @property
    def shape(self):
        """``(ny, nx)`` of the mask images."""
        return self.mask.shape[1:]

    def coefficients(self, context):
        """Polynomial terms at the given context values.

        Parameters
        ----------
        context : array_like
            ``(n, ndim)`` values of the context variables (for example positions).

        Returns
        -------
        numpy.ndarray
            ``(n, ncoeff)`` value of every term for every object.
        """
        context = np.atleast_2d(np.asarray(context, dtype=float))
        ndim = len(self.polnames)
        if ndim == 0:
            return np.ones((context.shape[0], 1))
        if context.shape[1] != ndim:
            raise ValueError(f"PSF model needs {ndim} context values, got {context.shape[1]}")
        u = (context - self.polzero) / self.polscal
        return poly_terms(u, self.powers)

    def evaluate(self, context):
        """PSF images on the model grid (step ``PSF_SAMP``) at the given context values.

        Returns
        -------
        numpy.ndarray
            ``(n, ny, nx)``.
        """
        coeffs = self.coefficients(context)
        return np.tensordot(coeffs, self.mask, axes=(1, 0))

    def pixel_stamps(self, context, size=None, offsets=None, normalise=True):
        """PSF images on the image pixel grid, optionally shifted by sub-pixel offsets.

        Parameters
        ----------
        context : array_like
            ``(n, ndim)`` context values.
        size : int, optional
            Side of the output stamps in image pixels; default: the mask's extent in image
            pixels (``round(nx * PSF_SAMP)``, made odd when resampling).
        offsets : array_like, optional
            ``(n, 2)`` (dx, dy) position of the PSF centre relative to the stamp's centre
            pixel ``size // 2``, in image pixels. Default: centred.
        normalise : bool
            Scale each stamp to unit sum.

        Returns
        -------
        numpy.ndarray
            ``(n, size, size)`` float64.
        """
        images = self.evaluate(context)
        n = images.shape[0]
        ny, nx = self.shape
        if size is None:
            if self.samp == 1.0:
                size = nx
            else:
                size = int(round(nx * self.samp))
                size += 1 - size % 2
        need_resample = self.samp != 1.0 or size != nx or size != ny or offsets is not None
        if need_resample:
            if offsets is None:
                offsets = np.zeros((n, 2))
            offsets = np.asarray(offsets, dtype=float).reshape(n, 2)
            # Output pixel j (0-based) sits at j - size//2 - offset image pixels from the
            # PSF centre, i.e. at that distance / samp mask pixels from the mask centre.
            out = np.arange(size) - size // 2
            x_src = (out[None, :] - offsets[:, :1]) / self.samp + nx // 2
            y_src = (out[None, :] - offsets[:, 1:]) / self.samp + ny // 2
            mx = lanczos_matrix(x_src, nx, INTERP_ORDER)  # (n, size, nx)
            my = lanczos_matrix(y_src, ny, INTERP_ORDER)  # (n, size, ny)
            images = np.matmul(np.matmul(my, images), mx.transpose(0, 2, 1))
        if normalise:
            total = images.sum(axis=(1, 2), keepdims=True)
            good = np.abs(total) > 0
            images = np.where(good, images / np.where(good, total, 1.0), images)
        return images


def poly_terms(u, powers):
    """Evaluate monomials ``prod_d u_d ** powers[k, d]`` for every row of ``u``.

    Parameters
    ----------
    u : numpy.ndarray
        ``(n, ndim)`` normalised context values.
    powers : numpy.ndarray
        ``(ncoeff, ndim)`` integer exponents.

    Returns
    -------
    numpy.ndarray
        ``(n, ncoeff)``.
    """
    u = np.asarray(u, dtype=float)
    max_pow = int(powers.max()) if powers.size else 0
    # Table of u_d ** p for p = 0..max_pow, gathered by the powers: no float pow per term.
    table = u[:, :, None] ** np.arange(max_pow + 1)[None, None, :]  # (n, ndim, P)
    dims = np.arange(powers.shape[1])
    terms = table[:, dims[None, :], powers]  # (n, ncoeff, ndim)
    return terms.prod(axis=2)


def read_psf(path):
    """Read a ``.psf`` file written by PSFEx or by ``psf_model``.

    Parameters
    ----------
    path : str
        The file.

    Returns
    -------
    PSFModel

    Raises
    ------
    ValueError
        If the file has no ``PSF_MASK`` column or inconsistent polynomial keys.
    """
    with fits.open(path, memmap=False) as hdul:
        hdu = None
        for candidate in hdul[1:]:
            if isinstance(candidate, fits.BinTableHDU) and "PSF_MASK" in candidate.columns.names:
                hdu = candidate
                break
        if hdu is None:
            raise ValueError(f"{path}: not a PSFEx .psf file (no table with a PSF_MASK column)")
        hdr = hdu.header
        mask = np.array(hdu.data["PSF_MASK"][0], dtype=np.float64)
        naxis = int(hdr.get("PSFNAXIS", mask.ndim))
        if naxis == 3:
            shape = (int(hdr["PSFAXIS3"]), int(hdr["PSFAXIS2"]), int(hdr["PSFAXIS1"]))
        elif naxis == 2:
            shape = (1, int(hdr["PSFAXIS2"]), int(hdr["PSFAXIS1"]))
        else:
            raise ValueError(f"{path}: PSFNAXIS = {naxis}, expected 2 or 3")
        mask = mask.reshape(shape)
        ndim = int(hdr.get("POLNAXIS", 0))
        polnames = [hdr[f"POLNAME{i + 1}"] for i in range(ndim)]
        polzero = [float(hdr[f"POLZERO{i + 1}"]) for i in range(ndim)]
        polscal = [float(hdr[f"POLSCAL{i + 1}"]) for i in range(ndim)]
        groups = [int(hdr[f"POLGRP{i + 1}"]) for i in range(ndim)]
        ngroup = int(hdr.get("POLNGRP", 0))
        degrees = [int(hdr[f"POLDEG{g + 1}"]) for g in range(ngroup)]
        extra = {}
        for key in ("LOADED", "ACCEPTED", "CHI2", "PSF_FWHM", "PSF_SAMP", "NSTARS", "SOFTNAME"):
            if key in hdr:
                extra[key] = hdr[key]
        samp = float(hdr.get("PSF_SAMP", 1.0))
    try:
        return PSFModel(mask, polnames, polzero, polscal, groups, degrees, samp, extra)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def write_psf(path, model, accepted, loaded, chi2, fwhm, extra_header=None):
    """Write a model in PSFEx's ``.psf`` layout (atomically).

    Parameters
    ----------
    path : str
        Output file.
    model : PSFModel
        The model.
    accepted, loaded : int
        Number of stars used in the fit and read from the catalogue.
    chi2 : float
        Reduced chi2 of the fit.
    fwhm : float
        FWHM of the model at the field centre, in image pixels.
    extra_header : dict, optional
        Additional header keys.
    """
    ncoeff, ny, nx = model.mask.shape
    col = fits.Column(
        name="PSF_MASK",
        format=f"{ncoeff * ny * nx}E",
        dim=f"({nx}, {ny}, {ncoeff})",
        array=model.mask.astype(np.float32)[None],
    )
    hdu = fits.BinTableHDU.from_columns([col])
    hdr = hdu.header
    hdr["EXTNAME"] = "PSF_DATA"
    hdr["LOADED"] = (int(loaded), "Number of loaded sources")
    hdr["ACCEPTED"] = (int(accepted), "Number of accepted sources")
    hdr["CHI2"] = (float(chi2), "Final reduced Chi2")
    hdr["POLNAXIS"] = (len(model.polnames), "Number of context parameters")
    for i, name in enumerate(model.polnames):
        hdr[f"POLGRP{i + 1}"] = (model.groups[i], "Polynom group for this context parameter")
        hdr[f"POLNAME{i + 1}"] = (name, "Name of this context parameter")
        hdr[f"POLZERO{i + 1}"] = (float(model.polzero[i]), "Offset value for this context param")
        hdr[f"POLSCAL{i + 1}"] = (float(model.polscal[i]), "Scale value for this context param")
    hdr["POLNGRP"] = (len(model.degrees), "Number of context groups")
    for g, deg in enumerate(model.degrees):
        hdr[f"POLDEG{g + 1}"] = (deg, "Polynom degree for this context group")
    hdr["PSF_FWHM"] = (float(fwhm), "PSF FWHM in image pixels")
    hdr["PSF_SAMP"] = (float(model.samp), "Sampling step of the PSF data")
    hdr["PSFNAXIS"] = (3, "Dimensionality of the PSF data")
    hdr["PSFAXIS1"] = (nx, "Number of element along this axis")
    hdr["PSFAXIS2"] = (ny, "Number of element along this axis")
    hdr["PSFAXIS3"] = (ncoeff, "Number of element along this axis")
    for key, value in (extra_header or {}).items():
        hdr[key] = value
    write_fits(fits.HDUList([fits.PrimaryHDU(), hdu]), path)


def check_model(model, star_thresh, chi2_thresh):
    """Return a failure code if the model should not be used, else None.

    Parameters
    ----------
    model : PSFModel
        The model (its header holds ``ACCEPTED`` and ``CHI2``).
    star_thresh : int
        Minimum number of accepted stars.
    chi2_thresh : float
        Maximum reduced chi2.
    """
    if int(model.header.get("ACCEPTED", 0)) < star_thresh:
        return NOT_ENOUGH_STARS
    if float(model.header.get("CHI2", 0.0)) > chi2_thresh:
        return BAD_CHI2
    return None
