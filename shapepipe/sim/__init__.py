"""The simulated CFIS-like survey (exposures, stacked tile, DES-like tiles, truth).

Usable from a notebook or a test::

    from shapepipe.sim import make_survey, tiny_params
    make_survey("/tmp/data", seed=1, params=tiny_params())

The file formats are described in ``shapepipe/sim/FORMATS.md``.
"""

from shapepipe.sim.catalog import make_catalog
from shapepipe.sim.geometry import (
    SurveyParams,
    ccd_header,
    full_params,
    small_params,
    tile_center,
    tile_header,
    tile_number_from_coord,
    tiny_params,
)
from shapepipe.sim.psf import true_psf, true_psf_params
from shapepipe.sim.render import render_ccd
from shapepipe.sim.survey import SimError, make_survey

__all__ = [
    "SimError",
    "SurveyParams",
    "ccd_header",
    "full_params",
    "make_catalog",
    "make_survey",
    "render_ccd",
    "small_params",
    "tile_center",
    "tile_header",
    "tile_number_from_coord",
    "tiny_params",
    "true_psf",
    "true_psf_params",
]
