"""Pixel, PSF and meta stores: forcepho's storage model (usable without the pipeline).

- :class:`PixelStore` -- images and inverse errors of many exposures in one HDF5 file,
  ``<band>/<expID>/data`` of shape (nsuper_x, nsuper_y, 2 s^2) in super-pixel order;
  images are (nx, ny) arrays (FITS data transposed, first index x);
- :class:`MetaStore` -- the headers as JSON, WCS built lazily, footprint search
  (:meth:`MetaStore.find_exposures`) and an exposure table;
- :class:`PSFStore` -- Gaussian-mixture PSFs (forcepho's dtype :data:`PSF_DTYPE`) at a grid
  of detector locations, fitted to PSFEx-format models with the project's own EM fit;
- :class:`ImageSet`, :class:`ImageNameSet` -- one exposure's arrays / file names;
- :func:`read_exposure`, :func:`write_parts`, :func:`merge_parts` -- FITS files to part
  files (one per parallel job) to the final stores (what ``pixel_store_runner`` and
  ``pixel_store_merge_runner`` call).
"""

from .build import (
    META_STORE,
    PIXEL_STORE,
    PSF_STORE,
    band_from_header,
    estimate_background,
    merge_parts,
    read_exposure,
    summary_line,
    write_parts,
)
from .meta_store import MetaStore, footprint, footprint_contains
from .pixel_store import (
    ImageNameSet,
    ImageSet,
    PixelStore,
    flux_calibration,
    pixel_coordinates,
    superpixelize,
    unsuperpixelize,
)
from .psf_store import (
    PSF_COLS,
    PSF_DTYPE,
    PSFStore,
    fit_psf_mixture,
    grid_locations,
    mixture_image,
    psf_mixtures_from_model,
)

__all__ = [
    "META_STORE", "PIXEL_STORE", "PSF_STORE", "band_from_header", "estimate_background",
    "merge_parts", "read_exposure", "summary_line", "write_parts", "MetaStore", "footprint",
    "footprint_contains", "ImageNameSet", "ImageSet", "PixelStore", "flux_calibration",
    "pixel_coordinates", "superpixelize", "unsuperpixelize", "PSF_COLS", "PSF_DTYPE",
    "PSFStore", "fit_psf_mixture", "grid_locations", "mixture_image",
    "psf_mixtures_from_model",
]
