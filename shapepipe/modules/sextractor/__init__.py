"""Source detection and measurement with ``sep``, configured like SExtractor.

Reads SExtractor's ``.sex``, ``.param`` and ``.conv`` files and writes a SExtractor-compatible
FITS_LDAC catalogue (``LDAC_IMHEAD`` + ``LDAC_OBJECTS``) that PSFEx accepts. The tile
post-processing (``EPOCH_<i>`` HDUs) is in :mod:`shapepipe.modules.sextractor.postprocess`;
:mod:`shapepipe.modules.sextractor.deblend_random` gives sep's deblending SExtractor's
random numbers (glibc ``rand()`` from ``srand(1)`` per image).
This package does not depend on the pipeline.
"""

from shapepipe.modules.sextractor.config_files import (
    SexConfigError,
    parse_conv,
    parse_param,
    parse_sex,
)
from shapepipe.modules.sextractor.extraction import run_sextractor
from shapepipe.modules.sextractor.settings import SexSettings

__all__ = [
    "SexConfigError",
    "SexSettings",
    "parse_conv",
    "parse_param",
    "parse_sex",
    "run_sextractor",
]
