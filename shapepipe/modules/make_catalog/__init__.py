"""The final catalogue of a tile (ShapePipe's ``final_cat-<tile>.fits``, HDU RESULTS).

Pipeline-agnostic. Entry points: :func:`make_final_catalog` (build and write),
:func:`spread_class` (ShapePipe's star/galaxy classification), :func:`ngmix_columns`
(ShapePipe's NGMIX_* columns from an ngmix catalogue), :func:`psf_columns` (PSF shapes from
the multi-epoch PSF store), :func:`match_ids` (vectorised matching by NUMBER).
"""

from shapepipe.modules.make_catalog.catalog import (
    NGMIX_TYPES,
    NOT_MEASURED_FLAG,
    make_final_catalog,
    match_ids,
    ngmix_columns,
    psf_columns,
    spread_class,
)

__all__ = ["NGMIX_TYPES", "NOT_MEASURED_FLAG", "make_final_catalog", "match_ids",
           "ngmix_columns", "psf_columns", "spread_class"]
