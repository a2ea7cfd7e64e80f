"""Split one multi-extension exposure file into single-CCD FITS files."""

import os

import numpy as np
from astropy.io import fits

from shapepipe.utils.atomic import atomic_path, write_fits

# Cards describing the layout of an extension; a primary HDU must not carry them (EXTNAME
# is kept: it is allowed in a primary header and names the CCD).
_EXTENSION_CARDS = ("XTENSION", "PCOUNT", "GCOUNT", "INHERIT", "CHECKSUM", "DATASUM")
# Cards of the exposure's primary HDU that describe that HDU only and must not be inherited.
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "NEXTEND", "BSCALE", "BZERO", "BLANK",
               "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", "", "END"}


class SplitError(ValueError):
    """An exposure file that cannot be split as configured."""


def _image_hdus(hdul, path, n_hdu=None):
    """Return the CCD extensions of an open exposure, checking the layout.

    ``n_hdu`` None accepts any positive number of extensions (every HDU after the primary).
    """
    ccds = hdul[1:]
    if n_hdu is not None and len(ccds) != n_hdu:
        raise SplitError(
            f"{path}: expected N_HDU = {n_hdu} CCD extensions after the primary HDU, "
            f"found {len(ccds)}"
        )
    if not ccds:
        raise SplitError(f"{path}: no CCD extension after the primary HDU, expected a "
                         "multi-extension exposure")
    for index, hdu in enumerate(ccds):
        if not isinstance(hdu, (fits.ImageHDU, fits.CompImageHDU)):
            raise SplitError(
                f"{path}: HDU {index + 1} (CCD {index}) is a {type(hdu).__name__}, "
                "expected an image extension"
            )
        naxis = hdu.header.get("ZNAXIS", hdu.header.get("NAXIS", 0))
        if naxis != 2:
            raise SplitError(
                f"{path}: HDU {index + 1} (CCD {index}) has NAXIS = {naxis}, expected a 2-d image"
            )
    return ccds


def count_ccds(path):
    """Number of CCD extensions of an exposure file (checked to be 2-d images).

    Only the headers are read (compressed data are not decompressed).

    Parameters
    ----------
    path : str
        Exposure file.

    Returns
    -------
    int

    Raises
    ------
    SplitError
        If the file cannot be read, has no extension after the primary HDU, or an
        extension is not a 2-d image.
    """
    try:
        with fits.open(path, memmap=True) as hdul:
            return len(_image_hdus(hdul, path))
    except OSError as exc:
        raise SplitError(f"{path}: cannot read as FITS ({exc})") from None


def check_ccd_counts(paths, n_hdu=None):
    """The common number of CCD extensions of the files of one exposure.

    Parameters
    ----------
    paths : list of str
        The exposure's files (image, weight, flag...).
    n_hdu : int, optional
        Expected number; None: every image HDU, the same number in every file.

    Returns
    -------
    int

    Raises
    ------
    SplitError
        If a file does not have ``n_hdu`` extensions, or (``n_hdu`` None) the files have
        different numbers; the message lists every file's count.
    """
    counts = [count_ccds(path) for path in paths]
    if n_hdu is not None:
        for path, count in zip(paths, counts):
            if count != n_hdu:
                raise SplitError(f"{path}: expected N_HDU = {n_hdu} CCD extensions after the "
                                 f"primary HDU, found {count}")
    elif len(set(counts)) > 1:
        listing = ", ".join(f"{os.path.basename(p)} {c}" for p, c in zip(paths, counts))
        raise SplitError(f"the files of one exposure have different numbers of CCD "
                         f"extensions ({listing}); expected the same number in each")
    return counts[0]


def _ccd_header(ccd_header, primary_header):
    """Header of a single-CCD file: the CCD's cards plus exposure cards it lacks."""
    header = ccd_header.copy()
    # Pixel values are written already scaled (astropy applies BZERO/BSCALE on read and
    # sets them again on write for unsigned types); stale scaling cards would corrupt them.
    for name in (*_EXTENSION_CARDS, "BSCALE", "BZERO"):
        header.remove(name, ignore_missing=True, remove_all=True)
    # The exposure-level cards (EXPTIME, FILTER, MJD-OBS...) go into every CCD file, as
    # FITS "INHERIT" readers would see them, but never override the CCD's own value.
    for card in primary_header.cards:
        if card.keyword in _STRUCTURAL or card.keyword in header:
            continue
        header.append(card, end=True)
    return header


def tan_pv_to_tpv(header):
    """Relabel a SCAMP ``TAN`` + ``PVi_j`` header as ``TPV`` (in place); return whether done.

    SCAMP (and CFHT's MegaPipe) write the TPV polynomial distortion as ``PV1_*``/``PV2_*``
    cards under ``CTYPE = 'RA---TAN'``; SExtractor applies them but astropy/WCSLIB ignore
    them unless the projection is called ``TPV``. ShapePipe converted them to SIP; the TPV
    name lets WCSLIB evaluate the same polynomial exactly, with no fit.
    """
    ctype1, ctype2 = str(header.get("CTYPE1", "")), str(header.get("CTYPE2", ""))
    if not (ctype1.endswith("-TAN") and ctype2.endswith("-TAN")):
        return False
    has_pv = any(f"PV{axis}_{k}" in header for axis in (1, 2) for k in range(1, 40))
    if not has_pv:
        return False
    header["CTYPE1"] = ctype1[:-4] + "-TPV"
    header["CTYPE2"] = ctype2[:-4] + "-TPV"
    return True


def split_exposure(path, suffix, exp_number, output_dir, n_hdu=None, as_int=None):
    """Write one FITS file per CCD of a multi-extension exposure.

    Parameters
    ----------
    path : str
        Exposure file (``.fits``, ``.fits.fz``, ``.fitsfz``; tile-compressed extensions
        are decompressed).
    suffix : str
        Output name prefix (``image``, ``weight``, ``flag``...).
    exp_number : str
        Number part of the exposure name, e.g. ``-2000001``.
    output_dir : str
        Directory to write into.
    n_hdu : int, optional
        Expected number of CCD extensions; None (default) splits every extension after
        the primary HDU.
    as_int : bool, optional
        Store the pixels as integers (flag maps). Default: True when ``"flag"`` is in
        ``suffix``.

    Returns
    -------
    files : list of str
        The written files, CCD order: ``<output_dir>/<suffix><exp_number>-<ccd>.fits``.
    headers : list of astropy.io.fits.Header
        The header of each written file.

    Raises
    ------
    SplitError
        If the file does not hold exactly ``n_hdu`` (or, with None, at least one) 2-d image
        extensions, or a flag map holds non-integer values.
    """
    if as_int is None:
        as_int = "flag" in suffix.lower()
    files, headers = [], []
    # memmap keeps plain FITS reads lazy; compressed HDUs are decompressed one at a time.
    with fits.open(path, memmap=True) as hdul:
        primary = hdul[0].header
        for ccd, hdu in enumerate(_image_hdus(hdul, path, n_hdu)):
            data = hdu.data
            if as_int:
                data = _to_int(data, path, ccd)
            elif data.dtype.kind == "f" and data.dtype.itemsize < 4:
                data = data.astype(np.float32)
            header = _ccd_header(hdu.header, primary)
            tan_pv_to_tpv(header)
            if data.dtype.kind == "f":
                header.remove("BLANK", ignore_missing=True, remove_all=True)
            out = os.path.join(output_dir, f"{suffix}{exp_number}-{ccd}.fits")
            out_hdu = fits.PrimaryHDU(data=np.asarray(data), header=header)
            write_fits(fits.HDUList([out_hdu]), out)
            files.append(out)
            headers.append(out_hdu.header)
            # Drop the decompressed pixels: astropy caches them on the HDU, and a full
            # 40-CCD exposure would otherwise stay in memory (1.5 GB per file).
            del out_hdu, data
            del hdu.data
    return files, headers


def _to_int(data, path, ccd):
    """Convert a flag map to the smallest standard FITS integer type holding it."""
    if data.dtype.kind in "iu":
        values = data
    else:
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise SplitError(f"{path}: CCD {ccd}: flag map holds non-integer values")
        values = data
    low = int(values.min()) if values.size else 0
    high = int(values.max()) if values.size else 0
    for dtype in (np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return values.astype(dtype, copy=False)
    raise SplitError(f"{path}: CCD {ccd}: flag values out of the 64-bit integer range")


def save_headers(headers, path):
    """Write the per-exposure headers file read by ``merge_headers`` (no pickle).

    Parameters
    ----------
    headers : list of astropy.io.fits.Header
        One header per CCD, in CCD order.
    path : str
        Output file ``headers-<exp>.npy``.
    """
    texts = [header.tostring(endcard=False, padding=False) for header in headers]
    array = np.array([t.encode("ascii", errors="replace") for t in texts], dtype="S")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


def load_headers(path):
    """Read a headers file written by :func:`save_headers`.

    Parameters
    ----------
    path : str
        The ``headers-<exp>.npy`` file.

    Returns
    -------
    list of astropy.io.fits.Header
        One header per CCD.
    """
    array = np.load(path, allow_pickle=False)
    return [
        fits.Header.fromstring(item.decode("ascii") if isinstance(item, bytes) else str(item))
        for item in array
    ]
