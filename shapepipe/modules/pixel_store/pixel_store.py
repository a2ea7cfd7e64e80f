"""PixelStore: images and inverse errors of many exposures in one HDF5 file, by super-pixel.

Layout (forcepho's):

- file attributes ``nside_full`` (int or (nx, ny)) and ``super_pixel_size`` (s);
- one dataset ``<band>/<expID>/data`` per exposure, of shape ``(nsuper_x, nsuper_y, 2 s^2)``:
  element ``[I, J, :s^2]`` is the s x s block ``im[I*s:(I+1)*s, J*s:(J+1)*s]`` flattened in C
  order and ``[I, J, s^2:]`` the same block of the inverse errors;
- dataset attributes ``counts_to_flux``, ``flux_units``, ``bitmask_applied``, the input names
  (``im``, ``err``, ``mask``, ``bkg``) and, beyond forcepho, ``nx``, ``ny`` (the image size
  before padding) and ``bkg_subtracted``.

Images are arrays of shape ``(nx, ny)`` as forcepho documents them: FITS data transposed, so
the first index is x. Masked pixels have ``ierr = 0`` and ``im = 0``; images whose size is not
a multiple of ``s`` are padded with ``im = ierr = 0``.
"""

import os
import warnings
from collections import namedtuple

import h5py
import numpy as np

from shapepipe.modules.pixel_store.h5reader import H5Reader

__all__ = ["ImageNameSet", "ImageSet", "PixelStore", "superpixelize", "flux_calibration"]

#: File names of one exposure (any may be None).
ImageNameSet = namedtuple("ImageNames", ["im", "err", "mask", "bkg"])
#: Arrays of one exposure, all of shape (nx, ny) (FITS data transposed), with its header,
#: band, exposure ID and an ImageNameSet (or a string) naming the inputs.
ImageSet = namedtuple("Images", ["im", "ierr", "mask", "bkg", "hdr", "band", "expID", "names"])

#: Header keywords read, in this order, as the AB zero point of one count.
ZEROPOINT_KEYS = ("ABMAG", "MAGZP", "PHOTZP")


def superpixelize(im, ierr, super_pixel_size=8, pix_dtype=np.float32):
    """Reorder an image and its inverse errors into super-pixel order, without a Python loop.

    Parameters
    ----------
    im, ierr : numpy.ndarray
        ``(nx, ny)`` image and inverse errors. A size that is not a multiple of
        ``super_pixel_size`` is padded at the high end with ``im = ierr = 0``.
    super_pixel_size : int
        Side ``s`` of a super-pixel.
    pix_dtype : numpy dtype
        Type of the output.

    Returns
    -------
    numpy.ndarray
        ``(nsuper_x, nsuper_y, 2 s^2)``: for each super-pixel the s x s block of ``im``
        flattened in C order, then the same block of ``ierr``.
    """
    im = np.asarray(im)
    ierr = np.asarray(ierr)
    if im.ndim != 2 or im.shape != ierr.shape:
        raise ValueError(f"superpixelize: im {im.shape} and ierr {ierr.shape} must be the same "
                         "2-d shape (nx, ny)")
    s = int(super_pixel_size)
    nx, ny = im.shape
    nsx, nsy = -(-nx // s), -(-ny // s)
    out = np.empty((nsx, nsy, 2, s, s), dtype=pix_dtype)
    # Each row of s pixels moves as one opaque element (a void of s * itemsize bytes): the
    # same bytes as a float copy, s-fold fewer elements, ~20% faster.
    row = np.dtype((np.void, s * out.itemsize))
    for src, k in ((im, 0), (ierr, 1)):
        if src.shape != (nsx * s, nsy * s) or src.dtype != out.dtype \
                or not src.flags.c_contiguous:
            # Ragged edges, another type or a transposed view: one copy into a zero-padded
            # C-ordered frame (so padding pixels get im = ierr = 0).
            frame = np.zeros((nsx * s, nsy * s), dtype=out.dtype)
            frame[:nx, :ny] = src
            src = frame
        # (I, a, J) -> (I, J, a): block [I, J] row a is src[I*s + a, J*s:(J+1)*s].
        out.view(row).reshape(nsx, nsy, 2, s)[:, :, k] = \
            src.view(row).reshape(nsx, s, nsy).transpose(0, 2, 1)
    return out.reshape(nsx, nsy, 2 * s * s)


def unsuperpixelize(superpixels, super_pixel_size, shape=None):
    """Inverse of :func:`superpixelize`: ``(im, ierr)`` of shape (nx, ny).

    Parameters
    ----------
    superpixels : numpy.ndarray
        ``(nsuper_x, nsuper_y, 2 s^2)``.
    super_pixel_size : int
        ``s``.
    shape : tuple of int, optional
        ``(nx, ny)`` of the original image, to drop the padding.
    """
    s = int(super_pixel_size)
    nsx, nsy = superpixels.shape[:2]
    blocks = superpixels.reshape(nsx, nsy, 2, s, s).transpose(2, 0, 3, 1, 4)
    full = blocks.reshape(2, nsx * s, nsy * s)
    if shape is not None:
        full = full[:, :shape[0], :shape[1]]
    return full[0], full[1]


def flux_calibration(hdr):
    """Factor from counts to nJy and the unit name, from the header's AB zero point.

    The first of ``ABMAG``, ``MAGZP``, ``PHOTZP`` found is the AB magnitude of one count:
    ``f[Jy] = counts * 10**(0.4 * (8.9 - zp))``. Without a zero point, (1.0, "counts").
    """
    for key in ZEROPOINT_KEYS:
        if hdr is not None and key in hdr:
            zp = float(hdr[key])
            return 1e9 * 10 ** (0.4 * (8.9 - zp)), "nJy"
    warnings.warn(f"no zero point ({', '.join(ZEROPOINT_KEYS)}) in the header: no flux "
                  "calibration applied", stacklevel=2)
    return 1.0, "counts"


def pixel_coordinates(imsize, super_pixel_size):
    """0-based x and y of every pixel in super-pixel order.

    Parameters
    ----------
    imsize : (int, int)
        ``(nx, ny)``; padding pixels beyond it get their (out-of-image) coordinates.
    super_pixel_size : int
        ``s``.

    Returns
    -------
    xpix, ypix : numpy.ndarray
        ``(nsuper_x, nsuper_y, s^2)`` int32.
    """
    s = int(super_pixel_size)
    nsx, nsy = -(-int(imsize[0]) // s), -(-int(imsize[1]) // s)
    # Element k = a * s + b of super-pixel (I, J) is pixel (I * s + a, J * s + b).
    off = np.arange(s, dtype=np.int32)
    xpix = np.arange(nsx, dtype=np.int32)[:, None, None] * s + np.repeat(off, s)[None, None, :]
    ypix = np.arange(nsy, dtype=np.int32)[None, :, None] * s + np.tile(off, s)[None, None, :]
    shape = (nsx, nsy, s * s)
    return np.broadcast_to(xpix, shape).copy(), np.broadcast_to(ypix, shape).copy()


def _as_size(nside_full):
    size = np.atleast_1d(np.asarray(nside_full, dtype=np.int64))
    if size.size == 1:
        size = np.repeat(size, 2)
    if size.size != 2 or np.any(size <= 0):
        raise ValueError(f"nside_full = {nside_full}: expected a positive int or two (nx, ny)")
    return size


class PixelStore(H5Reader):
    """Super-pixel store of exposures in an HDF5 file (forcepho's ``PixelStore``).

    Parameters
    ----------
    h5file : str
        The HDF5 file; created if absent. If it exists, its ``nside_full`` and
        ``super_pixel_size`` attributes are used and the arguments ignored.
    nside_full : int or (int, int)
        Nominal image size (nx, ny); exposures of another size are accepted (their size is
        recorded in the dataset attributes ``nx``, ``ny``).
    super_pixel_size : int
        Side of a super-pixel in pixels.
    pix_dtype : numpy dtype
        Type of the stored pixels.

    Attributes
    ----------
    xpix, ypix : numpy.ndarray
        ``(nsuper_x, nsuper_y, s^2)`` 0-based x and y of every pixel of an image of the nominal
        size, in super-pixel order.
    data : h5py.File
        A read handle (opened on first use; :meth:`close` closes it).
    """

    def __init__(self, h5file, nside_full=2048, super_pixel_size=8, pix_dtype=np.float32):
        self.h5file = os.fspath(h5file)
        self.pix_dtype = np.dtype(pix_dtype)
        stored = None
        if os.path.exists(self.h5file):
            with h5py.File(self.h5file, "r") as h5:
                if "nside_full" in h5.attrs and "super_pixel_size" in h5.attrs:
                    stored = (h5.attrs["nside_full"], int(h5.attrs["super_pixel_size"]))
        if stored is None:
            if int(super_pixel_size) <= 0:
                raise ValueError(f"super_pixel_size = {super_pixel_size}: expected > 0")
            nside = np.asarray(nside_full, dtype=np.int64)
            _as_size(nside)
            with h5py.File(self.h5file, "a") as h5:
                h5.attrs["nside_full"] = nside
                h5.attrs["super_pixel_size"] = int(super_pixel_size)
            stored = (nside, int(super_pixel_size))
        self.nside_full, self.super_pixel_size = stored
        self.imsize = _as_size(self.nside_full)
        self.nside_super = -(-self.imsize // self.super_pixel_size)
        self._coords = None

    # -- geometry ---------------------------------------------------------------------------
    def pixel_coordinates(self, imsize=None):
        """``(xpix, ypix)`` of an image of size ``imsize`` (default: the nominal size)."""
        return pixel_coordinates(self.imsize if imsize is None else imsize,
                                 self.super_pixel_size)

    @property
    def xpix(self):
        if self._coords is None:
            self._coords = self.pixel_coordinates()
        return self._coords[0]

    @property
    def ypix(self):
        if self._coords is None:
            self._coords = self.pixel_coordinates()
        return self._coords[1]

    def superpixel_corners(self, imsize=None):
        """Pixel coordinates of the four corner pixels of every super-pixel.

        Returns
        -------
        numpy.ndarray
            ``(nsuper_x, nsuper_y, 4, 2)``: corners (low x, low y), (high x, low y),
            (high x, high y), (low x, high y) as 0-based (x, y) pixel indices.
        """
        size = self.imsize if imsize is None else _as_size(imsize)
        s = self.super_pixel_size
        nsx, nsy = -(-size // s)
        lo = np.stack(np.meshgrid(np.arange(nsx) * s, np.arange(nsy) * s, indexing="ij"),
                      axis=-1)  # (nsx, nsy, 2)
        offsets = np.array([(0, 0), (1, 0), (1, 1), (0, 1)]) * (s - 1)
        return lo[:, :, None, :] + offsets[None, None, :, :]

    def superpixelize(self, im, ierr, pix_dtype=None):
        """Reorder ``(nx, ny)`` image and inverse errors into super-pixel order.

        See :func:`superpixelize`; ``pix_dtype`` defaults to the store's.
        """
        return superpixelize(im, ierr, self.super_pixel_size,
                             self.pix_dtype if pix_dtype is None else pix_dtype)

    # -- writing ----------------------------------------------------------------------------
    def prepare(self, imset, bitmask=None, do_fluxcal=False):
        """Background-subtracted, masked, calibrated super-pixels of one exposure.

        Returns
        -------
        superpixels : numpy.ndarray
        attrs : dict
            The dataset attributes.
        """
        im = np.asarray(imset.im)
        work = np.result_type(im.dtype, np.float32)
        # Work on copies: the caller's arrays are never modified (forcepho edits them).
        im = np.array(im, dtype=work)
        ierr = np.array(imset.ierr, dtype=work)
        if im.ndim != 2 or ierr.shape != im.shape:
            raise ValueError(f"exposure {imset.expID}: im {im.shape} and ierr {ierr.shape} "
                             "must be the same 2-d shape (nx, ny)")
        if imset.bkg is not None:
            bkg = np.asarray(imset.bkg)
            if bkg.shape != im.shape:
                raise ValueError(f"exposure {imset.expID}: background {bkg.shape} and image "
                                 f"{im.shape} differ")
            im -= bkg
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(ierr) & np.isfinite(im) & (ierr >= 0))
        if imset.mask is not None:
            flags = np.asarray(imset.mask)
            if flags.shape != im.shape:
                raise ValueError(f"exposure {imset.expID}: mask {flags.shape} and image "
                                 f"{im.shape} differ")
            if flags.dtype == bool:
                bad |= flags
            elif bitmask is None:
                bad |= flags != 0
            else:
                bad |= (flags & int(bitmask)) != 0
        ierr[bad] = 0
        im[bad] = 0
        if do_fluxcal:
            conv, units = flux_calibration(imset.hdr)
            im *= conv
            ierr *= 1.0 / conv
        else:
            conv, units = 1.0, "image"
        if do_fluxcal and not (np.all(np.isfinite(im)) and np.all(np.isfinite(ierr))):
            # Masking leaves only finite values; a huge calibration factor could overflow.
            raise ValueError(f"exposure {imset.expID}: non-finite values after the flux "
                             f"calibration (factor {conv})")
        superpixels = self.superpixelize(im, ierr)
        attrs = {"counts_to_flux": conv, "flux_units": units,
                 "bitmask_applied": -1 if bitmask is None else int(bitmask),
                 "nx": im.shape[0], "ny": im.shape[1],
                 "bkg_subtracted": imset.bkg is not None, "n_masked": int(bad.sum())}
        names = imset.names
        if isinstance(names, str):
            attrs["image_name"] = names
        elif names is not None and hasattr(names, "_fields"):
            for field, value in zip(names._fields, names):
                if isinstance(value, str):
                    attrs[field] = value
        return superpixels, attrs

    def add_exposure(self, imset, bitmask=None, do_fluxcal=False):
        """Add (or replace) one exposure.

        Subtracts ``imset.bkg`` if given; masks pixels with non-finite image or inverse
        error, negative inverse error, or flags selected by ``bitmask`` (any non-zero flag
        when ``bitmask`` is None; a boolean mask is used as is): ``ierr = im = 0`` there;
        converts counts to nJy from the header's zero point if ``do_fluxcal``.

        Re-adding an exposure writes the new data under a temporary name in the file and
        swaps it in, so a reader never sees a group without its data.

        Parameters
        ----------
        imset : ImageSet
            Arrays of shape (nx, ny).
        bitmask : int, optional
            Flag bits that mask a pixel.
        do_fluxcal : bool
            Calibrate to nJy.
        """
        superpixels, attrs = self.prepare(imset, bitmask, do_fluxcal)
        self.close()  # the read handle would block writing
        self.write_superpixels(imset.band, imset.expID, superpixels, attrs)

    def write_superpixels(self, band, expID, superpixels, attrs):
        """Write a prepared dataset as ``<band>/<expID>/data`` (replacing it atomically)."""
        path = f"{band}/{expID}"
        with h5py.File(self.h5file, "r+") as h5:
            parent, _, leaf = path.rpartition("/")
            group = h5.require_group(parent)
            tmp = f".{leaf}.tmp"
            if tmp in group:
                del group[tmp]
            exp = group.create_group(tmp)
            dset = exp.create_dataset("data", data=superpixels)
            for key, value in attrs.items():
                dset.attrs[key] = value
            if leaf in group:
                del group[leaf]
            group.move(tmp, leaf)

    # -- reading ----------------------------------------------------------------------------
    def exposures(self):
        """List of ``(band, expID)`` in the store."""
        out = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.endswith("/data"):
                band, _, exp = name[:-5].partition("/")
                out.append((band, exp))
        self.data.visititems(visit)
        return out

    def get_image(self, band, expID):
        """``(im, ierr)`` of one exposure, of shape (nx, ny), padding removed."""
        dset = self.data[f"{band}/{expID}/data"]
        shape = (int(dset.attrs.get("nx", dset.shape[0] * self.super_pixel_size)),
                 int(dset.attrs.get("ny", dset.shape[1] * self.super_pixel_size)))
        return unsuperpixelize(dset[...], self.super_pixel_size, shape)

    def superpixels_in_circle(self, band, expID, x, y, radius):
        """Super-pixels of one exposure that touch a circle in pixel coordinates.

        Only the bounding box of the circle is read from the file.

        Parameters
        ----------
        band, expID : str
            The exposure.
        x, y : float
            Centre, 0-based pixel coordinates (x the first image index).
        radius : float
            Radius in pixels.

        Returns
        -------
        dict
            ``data`` (n, 2 s^2), ``xpix``, ``ypix`` (n, s^2) and ``index`` (n, 2) super-pixel
            indices (I, J); empty arrays when the circle misses the image.
        """
        dset = self.data[f"{band}/{expID}/data"]
        s = self.super_pixel_size
        nsx, nsy = dset.shape[:2]
        # Super-pixel I covers pixel centres I*s .. I*s+s-1, i.e. [I*s - 0.5, I*s + s - 0.5].
        i0 = max(int(np.floor((x - radius + 0.5) / s)), 0)
        i1 = min(int(np.floor((x + radius + 0.5) / s)) + 1, nsx)
        j0 = max(int(np.floor((y - radius + 0.5) / s)), 0)
        j1 = min(int(np.floor((y + radius + 0.5) / s)) + 1, nsy)
        width = 2 * s * s
        if i0 >= i1 or j0 >= j1:
            return {"data": np.zeros((0, width), dset.dtype),
                    "xpix": np.zeros((0, s * s), np.int32),
                    "ypix": np.zeros((0, s * s), np.int32), "index": np.zeros((0, 2), int)}
        block = dset[i0:i1, j0:j1]
        ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1), indexing="ij")
        # Distance from the centre to the nearest point of each super-pixel's box.
        dx = np.maximum(np.maximum(ii * s - 0.5 - x, x - (ii * s + s - 0.5)), 0)
        dy = np.maximum(np.maximum(jj * s - 0.5 - y, y - (jj * s + s - 0.5)), 0)
        keep = dx * dx + dy * dy <= radius * radius
        off = np.arange(s)
        xpix = ii[keep][:, None] * s + np.repeat(off, s)[None, :]
        ypix = jj[keep][:, None] * s + np.tile(off, s)[None, :]
        return {"data": block[keep], "xpix": xpix.astype(np.int32),
                "ypix": ypix.astype(np.int32), "index": np.stack([ii[keep], jj[keep]], axis=1)}

    def superpixels_near(self, band, expID, wcs, sky, radius_arcsec):
        """Super-pixels of one exposure that touch a circle on the sky.

        Parameters
        ----------
        band, expID : str
            The exposure.
        wcs : astropy.wcs.WCS
            Its celestial WCS (FITS axis 1 = x, the first index of the stored images).
        sky : (float, float)
            RA, Dec in degrees.
        radius_arcsec : float
            Radius.

        Returns
        -------
        dict
            As :meth:`superpixels_in_circle`.
        """
        x, y = wcs.all_world2pix([[float(sky[0]), float(sky[1])]], 0)[0]
        scale = np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
        if not (np.isfinite(x) and np.isfinite(y)):
            x, y = -1e9, -1e9  # not projectable (opposite hemisphere): nothing covers it
        return self.superpixels_in_circle(band, expID, x, y, radius_arcsec / scale)
