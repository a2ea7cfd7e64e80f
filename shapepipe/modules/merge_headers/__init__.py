"""Merge the CCD headers of single exposures into one sqlite file.

ShapePipe's ``merge_headers_runner`` collects the per-exposure header files written by
``split_exp_runner`` (``headers-<exp>.npy``) into ``log_exp_headers.sqlite``. This package
keeps that file name and layout but never uses pickle: the sqlite file is a ``sqlitedict``
table whose keys are exposure names and whose values are JSON.

Layout of ``log_exp_headers.sqlite``
------------------------------------
- table ``unnamed`` (sqlitedict's default), one row per exposure;
- key: the exposure name, i.e. the number part of the exposure file name without the
  leading dash, e.g. ``"2000001"`` for ``image-2000001.fits.fz``;
- value (JSON): a list with one entry per CCD, in CCD order (CCD ``i`` of the list is the
  file ``image-<exp>-<i>.fits``); each entry is the CCD header as a FITS header string
  (80-character cards, no END card), or ``null`` for a CCD absent from the exposure.

Public functions (stable interface, imported by other modules)
--------------------------------------------------------------
``read_exp_headers(path, exposures=None) -> dict[str, list[astropy.io.fits.Header | None]]``
    Read the whole file (or only the given exposure names) into
    ``{exp_name: [Header of CCD 0, Header of CCD 1, ...]}``.
``read_exp_wcs(path, exposures=None) -> dict[str, list[astropy.wcs.WCS | None]]``
    Same, with the celestial ``WCS`` of each CCD instead of the header.
``find_log_wcs(spec, resolve_module_dir, key="LOG_WCS") -> str``
    Locate the file from a config value (file, directory or module reference).
``merge_headers(header_files, output_path) -> int``
    Write ``output_path`` atomically from ``headers-<exp>.npy`` files; returns the number
    of exposures written.
"""

from shapepipe.modules.merge_headers.merge_headers import (
    OUTPUT_NAME,
    exposure_name,
    find_log_wcs,
    merge_headers,
    read_exp_headers,
    read_exp_wcs,
)

__all__ = ["OUTPUT_NAME", "exposure_name", "find_log_wcs", "merge_headers", "read_exp_headers",
           "read_exp_wcs"]
