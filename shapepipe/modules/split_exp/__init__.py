"""Split multi-extension single exposures into one FITS file per CCD.

A CFIS-like exposure file (image, weight or flag) holds the exposure header in its
primary HDU and one image extension per CCD; CCD ``i`` (counted from 0) is HDU ``i + 1``.
``split_exposure`` writes ``<suffix>-<exp>-<ccd>.fits`` for every CCD, each with its own
header and WCS, flags converted to integers. ``save_headers`` writes the per-exposure
``headers-<exp>.npy`` read by ``merge_headers``: a 1-d numpy array of ASCII FITS header
strings (dtype ``S``), one per CCD, readable with ``numpy.load(path, allow_pickle=False)``
(ShapePipe pickled dicts holding WCS objects here; this format holds only text).

Public functions
----------------
``split_exposure(path, suffix, exp_number, output_dir, n_hdu=None, as_int=None)
-> (files, headers)`` (``n_hdu`` None: every extension after the primary)
``check_ccd_counts(paths, n_hdu=None) -> int`` (the files of one exposure agree)
``save_headers(headers, path)``
``load_headers(path) -> list of astropy.io.fits.Header``
"""

from shapepipe.modules.split_exp.split_exp import (
    check_ccd_counts,
    load_headers,
    save_headers,
    split_exposure,
)

__all__ = ["check_ccd_counts", "load_headers", "save_headers", "split_exposure"]
