"""DES-like multi-band postage stamps.

The science package behind ``des_stamp_runner`` and the command-line tools
``scripts/des_tilemaker.py``, ``scripts/catalog_to_stamps.py`` and ``scripts/fits_extract.py``.
It knows nothing about the pipeline and can be used from a notebook:

- :mod:`.catalog`  the comma-separated target catalogue (RA, DEC, COADD_OBJECT_ID, TILENAME,
  STATUS), atomic rewrites and a status journal;
- :mod:`.tiles`    tile geometry tables and vectorised tile assignment (RA wrap, boundary rule);
- :mod:`.extract`  reading tile bands once and cutting every stamp of a tile at once, with a
  shifted-CRPIX WCS header per stamp;
- :mod:`.store`    the HDF5 stamp store (``/stamps/<tile>/{data,masks,header,catalog}``);
- :mod:`.driver`   tiles grouped into outputs, parallel processing, STATUS bookkeeping.
"""

from shapepipe.modules.des_stamp.catalog import Catalog, read_catalog, write_catalog
from shapepipe.modules.des_stamp.driver import make_stamps
from shapepipe.modules.des_stamp.extract import cut_stamps, extract_tile
from shapepipe.modules.des_stamp.store import extract_fits, read_store
from shapepipe.modules.des_stamp.tiles import assign_tiles, read_geometry

__all__ = [
    "Catalog",
    "read_catalog",
    "write_catalog",
    "make_stamps",
    "cut_stamps",
    "extract_tile",
    "extract_fits",
    "read_store",
    "assign_tiles",
    "read_geometry",
]
