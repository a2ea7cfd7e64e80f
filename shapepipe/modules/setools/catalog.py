"""Catalog input and output for SETools (the object table a selection file is applied to).

Input: a FITS_LDAC catalogue (objects in the ``LDAC_OBJECTS`` HDU, usually HDU 2, after
``LDAC_IMHEAD``) or a plain FITS table (HDU 1). A selection is written with the same
HDU layout as the input, the object table replaced by the selected rows, so that a
selection of a SExtractor catalogue stays a FITS_LDAC catalogue PSFEx reads.

The other HDUs (``LDAC_IMHEAD``, tile ``EPOCH_<i>`` tables...) are copied byte for byte
from the input file: going through astropy's table objects would strip the trailing
blanks of the 80-character header cards in ``LDAC_IMHEAD`` and pad them with NULs,
which makes PSFEx 3.21 crash (segmentation fault) when it reads the catalogue.
"""

import os

import numpy as np
from astropy.io import fits

from shapepipe.modules.setools.expression import ExpressionError
from shapepipe.utils.atomic import write_fits

__all__ = ["ObjectTable"]


class ObjectTable:
    """An object table, and where its other HDUs come from.

    Parameters
    ----------
    data : numpy structured array or astropy.io.fits.FITS_rec
        The objects.
    header : astropy.io.fits.Header, optional
        Header of the object table (column units, comments, EXTNAME...).
    path : str, optional
        Where the catalogue was read from (for messages).
    source : str, optional
        File whose other HDUs (primary, ``LDAC_IMHEAD``...) are copied verbatim into
        selections. Without it, a selection is a primary HDU and an ``LDAC_OBJECTS``
        table.
    """

    def __init__(self, data, header=None, path=None, source=None):
        self.data = data
        self.header = header if header is not None else fits.Header()
        self.path = path or "<catalogue>"
        self.source = source
        self._columns = {}
        self.names = list(data.dtype.names or ())
        self._upper = {}
        for name in self.names:
            self._upper.setdefault(name.upper(), []).append(name)

    @classmethod
    def read(cls, path):
        """Read a FITS_LDAC catalogue or a FITS table.

        Parameters
        ----------
        path : str
            The file.

        Returns
        -------
        ObjectTable

        Raises
        ------
        ValueError
            If the file has no table HDU.
        """
        path = os.fspath(path)
        with fits.open(path, memmap=False) as hdul:
            index = _objects_index(hdul)
            if index is None:
                raise ValueError(f"{path}: no LDAC_OBJECTS HDU and no FITS table found")
            table = hdul[index]
            # memmap=False: the data are in memory and outlive the file handle.
            data = table.data
            if data is None:
                data = np.zeros(0, dtype=table.columns.dtype)
            header = table.header.copy()
        return cls(data, header=header, path=path, source=path)

    def __len__(self):
        return len(self.data)

    def column(self, name):
        """A column as a numpy array (exact name, else a unique case-insensitive match).

        Raises
        ------
        ExpressionError
            If the column does not exist.
        """
        if name in self._columns:
            return self._columns[name]
        actual = name
        if name not in self.names:
            matches = self._upper.get(name.upper(), [])
            if len(matches) != 1:
                raise ExpressionError(
                    f"column '{name}' is not in catalogue {self.path} "
                    f"(columns: {', '.join(self.names)})"
                )
            actual = matches[0]
        values = np.asarray(self.data[actual])
        self._columns[name] = values
        return values

    def write_selection(self, selection, path):
        """Write the selected objects with the input's HDU layout, atomically.

        Parameters
        ----------
        selection : numpy.ndarray
            Boolean mask over the objects, or integer indices.
        path : str
            Output file.
        """
        template = self.header
        table = fits.BinTableHDU(data=self.data[selection], header=template.copy())
        if "EXTNAME" not in table.header:
            table.header["EXTNAME"] = "LDAC_OBJECTS"
        # astropy rebuilds the column cards without their comments; put them back.
        for key in table.header:
            if key in template and template.comments[key] and not table.header.comments[key]:
                table.header.comments[key] = template.comments[key]
        if self.source is None:
            write_fits(fits.HDUList([fits.PrimaryHDU(), table]), path)
            return
        # HDUs of a file opened by astropy and never loaded are written from their raw
        # bytes: LDAC_IMHEAD stays identical to the input.
        with fits.open(self.source, memmap=False) as hdul:
            index = _objects_index(hdul)
            hdus = [table if i == index else hdu for i, hdu in enumerate(hdul)]
            write_fits(fits.HDUList(hdus), path)


def _objects_index(hdul):
    """Index of the object table: ``LDAC_OBJECTS``, else the first binary table."""
    for i, hdu in enumerate(hdul):
        if hdu.name == "LDAC_OBJECTS":
            return i
    for i, hdu in enumerate(hdul):
        if isinstance(hdu, fits.BinTableHDU):
            return i
    return None
