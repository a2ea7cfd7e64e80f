"""Postage stamps (vignets) of catalogue objects, from one image or from every exposure-CCD.

Pipeline-agnostic. Entry points:

- :func:`cut_stamps` -- vectorised cutting of ``(N, S, S)`` stamps at given corners;
- :func:`make_classic` -- CLASSIC mode: stamps of one image at catalogue positions, written as
  ``<prefix>_vignet<num>.fits`` (NUMBER + VIGNET in catalogue row order);
- :func:`masked_catalog_vignets` -- ShapePipe's MASKING mode: the catalogue's own VIGNET with
  SExtractor's masked value replaced;
- :func:`make_multi_epoch` -- MULTI-EPOCH mode: every object's stamps on every exposure-CCD it
  falls on, one stamp store per image type (``<type>_vignet<num>.sqlite``).
"""

from shapepipe.modules.vignetmaker.classic import (
    make_classic,
    masked_catalog_vignets,
    read_vignet_file,
    write_vignet_file,
)
from shapepipe.modules.vignetmaker.cutting import cut_stamps, fill_value
from shapepipe.modules.vignetmaker.multi_epoch import make_multi_epoch, read_tile_epochs

__all__ = ["cut_stamps", "fill_value", "make_classic", "masked_catalog_vignets",
           "read_vignet_file", "write_vignet_file", "make_multi_epoch", "read_tile_epochs"]
