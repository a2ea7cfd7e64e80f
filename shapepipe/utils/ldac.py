"""FITS_LDAC catalogues, as written by SExtractor and read by PSFEx.

Layout: an empty primary HDU, then for each image an ``LDAC_IMHEAD`` table holding the
image header in one row of 80-character cards (column ``Field Header Card``), followed by
an ``LDAC_OBJECTS`` table with the measurements.
"""

import numpy as np
from astropy.io import fits

from shapepipe.utils.atomic import atomic_path

CARD_COLUMN = "Field Header Card"


def imhead_hdu(header):
    """Build the ``LDAC_IMHEAD`` table HDU for an image header.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The image header.

    Returns
    -------
    astropy.io.fits.BinTableHDU
    """
    text = header.tostring(endcard=True, padding=False)
    n_cards = len(text) // 80
    column = fits.Column(
        name=CARD_COLUMN,
        format=f"{n_cards * 80}A",
        dim=f"(80, {n_cards})",
        array=np.array([[text[i : i + 80] for i in range(0, len(text), 80)]]),
    )
    hdu = fits.BinTableHDU.from_columns([column])
    hdu.header["EXTNAME"] = "LDAC_IMHEAD"
    return hdu


def objects_hdu(table):
    """Build the ``LDAC_OBJECTS`` HDU from a numpy structured array or BinTableHDU."""
    if isinstance(table, fits.BinTableHDU):
        hdu = table
    else:
        hdu = fits.BinTableHDU(data=table)
    hdu.header["EXTNAME"] = "LDAC_OBJECTS"
    return hdu


def write_ldac(path, header, table, overwrite=True):
    """Write a single-image FITS_LDAC catalogue atomically.

    Parameters
    ----------
    path : str
        Output file.
    header : astropy.io.fits.Header
        Header of the image the objects were measured on.
    table : numpy structured array or astropy.io.fits.BinTableHDU
        The objects; a BinTableHDU keeps its column units (``TUNITn``).
    overwrite : bool
        Whether an existing file may be replaced.
    """
    hdul = fits.HDUList([fits.PrimaryHDU(), imhead_hdu(header), objects_hdu(table)])
    with atomic_path(path, overwrite=overwrite) as tmp:
        hdul.writeto(tmp)
        blank_pad_imheads(tmp)


def blank_pad_imheads(path):
    """Pad the header cards of every ``LDAC_IMHEAD`` HDU of a file with blanks, in place.

    astropy writes the trailing blanks of string columns as NUL bytes; SExtractor pads
    with blanks, and PSFEx 3.21 crashes (segmentation fault) on NUL-padded cards.

    Parameters
    ----------
    path : str
        A FITS_LDAC file (typically the temporary file before its rename).
    """
    with fits.open(path) as hdul:
        spans = [
            (hdul.fileinfo(i)["datLoc"], hdu.header["NAXIS1"] * hdu.header["NAXIS2"])
            for i, hdu in enumerate(hdul)
            if hdu.name == "LDAC_IMHEAD"
        ]
    with open(path, "r+b") as handle:
        for start, size in spans:
            handle.seek(start)
            block = handle.read(size)
            handle.seek(start)
            handle.write(block.replace(b"\0", b" "))


def read_imhead(hdu):
    """Return the image header stored in an ``LDAC_IMHEAD`` HDU."""
    cards = hdu.data[CARD_COLUMN][0]
    if isinstance(cards, np.ndarray):
        text = "".join(str(card).ljust(80) for card in cards)
    else:
        text = str(cards)
    return fits.Header.fromstring(text)


def read_ldac(path, ext=0):
    """Read one image's objects and header from a FITS_LDAC catalogue.

    Parameters
    ----------
    path : str
        Catalogue file.
    ext : int
        Which image of a multi-image catalogue (0 for the first).

    Returns
    -------
    data : astropy.io.fits.FITS_rec
        The ``LDAC_OBJECTS`` table.
    header : astropy.io.fits.Header
        The image header from ``LDAC_IMHEAD``.
    """
    with fits.open(path, memmap=False) as hdul:
        imheads = [h for h in hdul if h.name == "LDAC_IMHEAD"]
        objects = [h for h in hdul if h.name == "LDAC_OBJECTS"]
        if not objects:
            raise ValueError(f"{path}: not a FITS_LDAC catalogue (no LDAC_OBJECTS HDU)")
        header = read_imhead(imheads[ext]) if imheads else fits.Header()
        return objects[ext].data.copy(), header
