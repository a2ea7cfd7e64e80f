"""SPREAD_MODEL star/galaxy separation (Desai et al. 2012), as SExtractor defines it.

Pipeline-agnostic. Entry points:

- :func:`spread_model` -- SPREAD_MODEL, SPREADERR_MODEL of stacks of stamps (vectorised);
- :func:`models` -- the PSF ``phi`` and the PSF-convolved exponential ``G`` at sub-pixel
  positions, built in Fourier space;
- :func:`combine_epoch_psfs` -- the PSF of each tile object from a multi-epoch PSF store;
- :func:`process` -- a tile catalogue + PSF store + weight vignets -> ``sexcat_sm`` file.
"""

from shapepipe.modules.spread_model.model import (
    FLAG_BAD_FIT,
    FLAG_NO_PIXELS,
    FLAG_NO_PSF,
    models,
    spread_model,
)
from shapepipe.modules.spread_model.process import combine_epoch_psfs, process

__all__ = ["FLAG_BAD_FIT", "FLAG_NO_PIXELS", "FLAG_NO_PSF", "models", "spread_model",
           "combine_epoch_psfs", "process"]
