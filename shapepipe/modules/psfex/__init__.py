"""PSFEx: the ``.psf`` format, the PSFEx program wrapper and shared PSF helpers."""
