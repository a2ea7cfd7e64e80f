"""PSF models (PSFEx or psf_model ``.psf`` files) evaluated at object positions."""

from shapepipe.modules.psfex_interp.interp import (
    hsm_shapes,
    interpolate_psf,
    process_classic,
    process_multi_epoch,
    process_validation,
)

__all__ = ["interpolate_psf", "hsm_shapes", "process_classic", "process_validation",
           "process_multi_epoch"]
