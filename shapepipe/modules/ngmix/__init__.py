"""Shape measurement with Gaussian mixtures and metacalibration (the project's own ngmix).

Pipeline-agnostic: usable from a notebook. The main entry points:

- :class:`Observation` / :class:`Jacobian` -- one epoch of one object;
- :func:`measure_object` -- metacal results (NOSHEAR, 1P, 1M, 2P, 2M) of one object from
  its epochs, with flags; per-object random numbers from the seed and the object id;
- :func:`write_catalog` / :func:`read_catalog` -- the ShapePipe-format catalogue;
- :func:`shear_response` / :func:`selection_response` -- responses from the catalogues;
- :func:`fit_gmix_model`, :func:`fit_psf_gauss`, :func:`fit_psf_em`,
  :func:`adaptive_moments` -- the building blocks;
- :func:`round_measures` -- the round size ``T_r`` and round S/N ``s2n_r`` of a fit (for
  selection cuts that do not depend on the orientation relative to the PSF);
- :class:`MetacalImager` -- sheared, reconvolved images of one epoch.
"""

from .fitting import (
    FLAG_ADMOM_FAILED,
    FLAG_COV_FAILED,
    FLAG_FIT_FAILED,
    FLAG_MAX_GAIN,
    FLAG_METACAL_FAILED,
    FLAG_NO_EPOCHS,
    FLAG_PSF_FAILED,
    FLAG_SHAPE_RANGE,
    NO_PRIORS,
    PixelSet,
    Priors,
    adaptive_moments,
    fit_gmix_model,
    fit_psf_em,
    fit_psf_gauss,
    levenberg_marquardt,
    round_measures,
)
from .gmix import MODELS, GMix, e_to_g, g_to_e, profile_mixture, round_T
from .measure import (
    COLUMNS,
    HDU_NAMES,
    measure_object,
    read_catalog,
    rows_to_tables,
    selection_response,
    shear_response,
    write_catalog,
)
from .metacal import METACAL_TYPES, MetacalImager, metacal_shears, shear_matrix
from .observation import Jacobian, Observation, make_stamp_obs, make_wcs_obs

__all__ = [
    "FLAG_ADMOM_FAILED", "FLAG_COV_FAILED", "FLAG_FIT_FAILED", "FLAG_MAX_GAIN",
    "FLAG_METACAL_FAILED",
    "FLAG_NO_EPOCHS", "FLAG_PSF_FAILED", "FLAG_SHAPE_RANGE", "NO_PRIORS", "PixelSet",
    "Priors", "adaptive_moments", "fit_gmix_model", "fit_psf_em", "fit_psf_gauss",
    "levenberg_marquardt", "round_measures", "MODELS", "GMix", "e_to_g", "g_to_e",
    "profile_mixture", "round_T",
    "COLUMNS", "HDU_NAMES", "measure_object", "read_catalog", "rows_to_tables",
    "selection_response", "shear_response", "write_catalog", "METACAL_TYPES",
    "MetacalImager", "metacal_shears", "shear_matrix", "Jacobian", "Observation",
    "make_stamp_obs", "make_wcs_obs",
]
