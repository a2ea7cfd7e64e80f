"""Built-in PSF model writing PSFEx-format ``.psf`` files (no external program)."""

from shapepipe.modules.psf_model.fit import PSFFitResult, fit_psf

__all__ = ["fit_psf", "PSFFitResult"]
