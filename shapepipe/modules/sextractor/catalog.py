"""Catalogue output in SExtractor's CATALOG_TYPE formats.

- ``FITS_LDAC``: primary HDU, ``LDAC_IMHEAD`` (the image header as one string cell) and
  ``LDAC_OBJECTS`` (what PSFEx and ShapePipe read);
- ``FITS_1.0``: a primary HDU carrying the extraction keywords (``SEX*``), then the table
  as ``OBJECTS``;
- ``ASCII_HEAD``: one ``# <column> <NAME> <description> [<unit>]`` line per parameter
  (the column number counts vector elements), then one line per object;
- ``ASCII``: the object lines only.

Object lines use SExtractor's C formats for each parameter (``%11.4f`` for X_IMAGE, ...),
one space between values, vector elements in order.
"""

import numpy as np
from astropy.io import fits

from shapepipe.modules.sextractor.columns import COLUMNS
from shapepipe.utils.atomic import atomic_path, write_text
from shapepipe.utils.ldac import blank_pad_imheads, imhead_hdu

CATALOG_TYPES = ("FITS_LDAC", "FITS_1.0", "ASCII_HEAD", "ASCII")

# Formats whose sign flag is not visible in the TDISP (SExtractor's param.h).
_PRINTF_OVERRIDES = {"DELTA_J2000": "%+11.7f", "DELTAWIN_J2000": "%+11.7f"}


def printf_format(name):
    """C format of one value of parameter ``name``, as SExtractor prints it."""
    if name in _PRINTF_OVERRIDES:
        return _PRINTF_OVERRIDES[name]
    disp = COLUMNS[name][2]
    kind, width = disp[0], disp[1:]
    conv = {"I": "d", "F": "f", "E": "e", "G": "g"}[kind]
    return f"%{width}{conv}"


def ascii_text(table, header=True):
    """The catalogue as SExtractor's ASCII (``header=False``) or ASCII_HEAD text.

    Parameters
    ----------
    table : numpy.ndarray
        Structured array, one field per parameter (vectors as sub-arrays).
    header : bool

    Returns
    -------
    str
    """
    lines = []
    names = table.dtype.names or ()
    if header:
        col = 1
        for name in names:
            _, unit, _, comment = COLUMNS[name]
            text = f"# {col:3d} {name[:22]:<22s} {comment[:58]:<58s}"
            lines.append(f"{text} [{unit}]" if unit else text)
            col += int(np.prod(table.dtype[name].shape)) if table.dtype[name].shape else 1
    # Column-wise formatting (numpy's % operator on arrays of strings), then joined per
    # row: no Python loop over objects.
    parts = []
    for name in names:
        values = np.asarray(table[name])
        flat = values.reshape(len(values), -1)
        fmt = printf_format(name)
        if fmt.endswith("d"):
            flat = flat.astype(np.int64)
        else:
            flat = flat.astype(np.float64)
        for k in range(flat.shape[1]):
            parts.append(np.char.mod(fmt, flat[:, k]))
    if parts and len(table):
        rows = parts[0]
        for p in parts[1:]:
            rows = np.char.add(np.char.add(rows, " "), p)
        lines.extend(rows.tolist())
    return "\n".join(lines) + ("\n" if lines else "")


def fits10_primary(extra):
    """Primary HDU of a FITS_1.0 catalogue with the extraction keywords ``extra``."""
    hdu = fits.PrimaryHDU()
    hdu.header["ORIGIN"] = "SExtractor"
    for key, value in extra.items():
        hdu.header[key] = value
    return hdu


def _append_table(path, hdu, table, extname):
    """Append a binary table HDU: ``hdu``'s header (rows set to ``table``'s), then the rows.

    ``table`` is a packed big-endian record array matching the header's columns, so its
    bytes are the FITS rows; written directly, without astropy's table copies.
    """
    header = hdu.header.copy()
    header["NAXIS1"] = table.dtype.itemsize
    header["NAXIS2"] = len(table)
    header["EXTNAME"] = extname
    # The rows' bytes as a view (no 35 MB copy for a CCD's VIGNET table).
    data = np.ascontiguousarray(table).reshape(-1).view(np.uint8)
    with open(path, "ab") as handle:
        handle.write(header.tostring(endcard=True, padding=True).encode("ascii"))
        handle.write(data)
        handle.write(b"\0" * (-data.nbytes % 2880))


def write_catalog(path, catalog_type, imhead, table_hdu, table, fits10_keys=None):
    """Write the catalogue atomically in ``catalog_type``.

    Parameters
    ----------
    path : str
    catalog_type : str
        One of ``CATALOG_TYPES``.
    imhead : astropy.io.fits.Header
        Image header (LDAC_IMHEAD of FITS_LDAC).
    table_hdu : astropy.io.fits.BinTableHDU
        Table HDU with the column definitions (its rows are not used).
    table : numpy.ndarray
        The objects: a packed big-endian record array with the same columns.
    fits10_keys : dict, optional
        Keywords of the FITS_1.0 primary header: key -> (value, comment).
    """
    if catalog_type == "FITS_LDAC":
        with atomic_path(path) as tmp:
            fits.HDUList([fits.PrimaryHDU(), imhead_hdu(imhead)]).writeto(tmp)
            blank_pad_imheads(tmp)
            _append_table(tmp, table_hdu, table, "LDAC_OBJECTS")
    elif catalog_type == "FITS_1.0":
        with atomic_path(path) as tmp:
            fits.HDUList([fits10_primary(fits10_keys or {})]).writeto(tmp)
            _append_table(tmp, table_hdu, table, "OBJECTS")
    elif catalog_type in ("ASCII_HEAD", "ASCII"):
        write_text(ascii_text(table, header=catalog_type == "ASCII_HEAD"), path)
    else:  # pragma: no cover - settings validate the type
        raise ValueError(f"CATALOG_TYPE {catalog_type}: supported types are "
                         f"{', '.join(CATALOG_TYPES)}")
