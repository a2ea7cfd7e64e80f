"""Flag images of bright-star halos and spikes, borders, deep-sky objects, external flags.

A Python re-implementation of ShapePipe's mask module without WeightWatcher and without
online catalogue queries: the star catalogue is read from a file (the simulated
``ref_stars.fits`` with RA, DEC, MAG, or a user's Gaia-like extract with configurable
column names), the ds9 polygon templates are scaled per star by
``1 - SCALE_FACTOR * (mag - MAG_PIVOT)``, placed with the image WCS and rasterised in
Python (vectorised scanline fill). Every mask type sets its configured bit; all are
combined with bitwise OR, with the external flag image (EF_MAKE) when given.

The configuration file keeps ShapePipe's ``config.mask`` sections and keys, see
:mod:`shapepipe.modules.mask.config`.

Public functions
----------------
``make_mask(image_path, config, output_path, ext_flag_path=None, stars=None, number="",
region_dir=None, log=None) -> dict``
``MaskConfig(path)``; ``read_star_catalogue(path, ra_col, dec_col, mag_col)``;
``read_dso_catalogue(path)``; ``read_template(path)``; ``fill_polygons(polygons, shape)``.
"""

from shapepipe.modules.mask.catalogs import read_dso_catalogue, read_star_catalogue
from shapepipe.modules.mask.config import MaskConfig, MaskConfigError
from shapepipe.modules.mask.mask import border_mask, make_mask
from shapepipe.modules.mask.raster import fill_circles, fill_polygons
from shapepipe.modules.mask.regions import read_template

__all__ = [
    "MaskConfig",
    "MaskConfigError",
    "border_mask",
    "fill_circles",
    "fill_polygons",
    "make_mask",
    "read_dso_catalogue",
    "read_star_catalogue",
    "read_template",
]
