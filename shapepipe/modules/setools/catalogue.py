"""Catalogue input and output for SETools.

Input: a FITS_LDAC catalogue (objects in the ``LDAC_OBJECTS`` HDU, usually HDU 2, after
``LDAC_IMHEAD``) or a plain FITS table (HDU 1). A selection is written with the same
HDU layout as the input, the object table replaced by the selected rows, so that a
selection of a SExtractor catalogue stays a FITS_LDAC catalogue PSFEx reads.
"""

import os

import numpy as np
from astropy.io import fits

from shapepipe.modules.setools.expression import ExpressionError
from shapepipe.utils.atomic import write_fits

__all__ = ["Catalogue"]


class Catalogue:
    """An object table with the HDUs around it.

    Parameters
    ----------
    data : numpy structured array or astropy.io.fits.FITS_rec
        The objects.
    hdus : list of astropy.io.fits HDU, optional
        The file's HDUs (the object table at ``objects_index`` is replaced on output).
        Without them, outputs are a primary HDU and an ``LDAC_OBJECTS`` table.
    objects_index : int, optional
        Index of the object table in ``hdus``.
    path : str, optional
        Where the catalogue was read from (for messages).
    """

    def __init__(self, data, hdus=None, objects_index=None, path=None):
        self.data = data
        self.path = path or "<catalogue>"
        if hdus is None:
            header = fits.Header()
            header["EXTNAME"] = "LDAC_OBJECTS"
            hdus = [fits.PrimaryHDU(), fits.BinTableHDU(data=np.asarray(data), header=header)]
            objects_index = 1
        self.hdus = hdus
        self.objects_index = objects_index
        self._columns = {}
        names = list(data.dtype.names or ())
        self.names = names
        self._upper = {}
        for name in names:
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
        Catalogue

        Raises
        ------
        ValueError
            If the file has no table HDU.
        """
        path = os.fspath(path)
        with fits.open(path, memmap=False) as hdul:
            hdus = [hdu.copy() for hdu in hdul]
        index = next((i for i, hdu in enumerate(hdus) if hdu.name == "LDAC_OBJECTS"), None)
        if index is None:
            index = next(
                (i for i, hdu in enumerate(hdus) if isinstance(hdu, fits.BinTableHDU)), None
            )
        if index is None:
            raise ValueError(f"{path}: no LDAC_OBJECTS HDU and no FITS table found")
        data = hdus[index].data
        if data is None:
            data = np.zeros(0, dtype=hdus[index].columns.dtype)
        return cls(data, hdus=hdus, objects_index=index, path=path)

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
        template = self.hdus[self.objects_index]
        table = fits.BinTableHDU(data=self.data[selection], header=template.header.copy())
        if "EXTNAME" not in table.header:
            table.header["EXTNAME"] = "LDAC_OBJECTS"
        hdus = [
            table if i == self.objects_index else hdu.copy() for i, hdu in enumerate(self.hdus)
        ]
        write_fits(fits.HDUList(hdus), path)
