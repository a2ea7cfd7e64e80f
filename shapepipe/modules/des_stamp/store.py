"""The HDF5 stamp store.

Layout of one output file (one group per tile)::

    /                       attrs: bands (str), dimension (int), description (str)
    /stamps/<tile>/data     (N, D, D, n_bands) float32, NaN outside the tile
    /stamps/<tile>/masks    (N, n_bands) int32, number of masked pixels of each stamp
    /stamps/<tile>/header   (N, n_bands) FITS header of each stamp, as text
    /stamps/<tile>/catalog  (N,) object ids, as text

Datasets are chunked (one object per chunk for ``data``) and gzip-compressed with shuffle.
Strings are fixed-length UTF-8 so that they compress too (variable-length strings are not
filtered by HDF5).

While a run is going, each finished tile is written as its own small file
``<output>.parts/<tile>.hdf5`` (atomically); when every tile of an output is finished the parts
are copied into ``<output>.hdf5`` (again atomically: temporary file then rename) and the parts
directory is removed. A kill at any moment leaves complete tile parts, never a half-written
store, and :func:`assemble` recovers them on the next run.
"""

import os
import shutil

import h5py
import numpy as np

from shapepipe.modules.des_stamp.errors import DesStampError
from shapepipe.utils.atomic import atomic_path

DESCRIPTION = (
    "DES-like multi-band postage stamps. /stamps/<tile>/data (N,D,D,n_bands) float32, NaN "
    "outside the tile; masks (N,n_bands) masked-pixel counts (outside tile, non-finite or "
    "mask != 0); header (N,n_bands) FITS header text with the stamp WCS; catalog (N,) object "
    "ids. The object is within half a pixel of the stamp centre ((D-1)/2, 0-based)."
)
GZIP_LEVEL = 1
COMPRESSIONS = ("gzip", "lzf", "none")


def _filters(compression):
    """h5py dataset options of a compression name (gzip: portable; lzf: h5py-only, faster)."""
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if compression == "none":
        return {}
    raise DesStampError(f"compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")


def _str_array(values):
    enc = [str(v).encode("utf-8") for v in np.ravel(values)]
    width = max([len(e) for e in enc] + [1])
    dtype = h5py.string_dtype("utf-8", width)
    # The array itself must carry h5py's UTF-8 tag, or HDF5 finds no conversion from ASCII.
    return np.array(enc, dtype=f"S{width}").reshape(np.shape(values)).astype(dtype)


def _set_root_attrs(h5, bands, dim):
    h5.attrs["bands"] = "".join(bands) if all(len(b) == 1 for b in bands) else ",".join(bands)
    h5.attrs["band_list"] = ",".join(bands)
    h5.attrs["dimension"] = int(dim)
    h5.attrs["description"] = DESCRIPTION


def write_tile_group(h5, tile, result, dim, nb, compression="gzip"):
    """Write one tile's stamps into group ``/stamps/<tile>`` of an open HDF5 file."""
    grp = h5.require_group("stamps").create_group(tile)
    n = result["data"].shape[0]
    comp = _filters(compression)
    # Headers and ids are repetitive text: always gzip them (cheap, large gain).
    text = _filters("gzip") if n else {}
    grp.create_dataset("data", data=result["data"],
                       chunks=(1, dim, dim, nb) if n and comp else None, **(comp if n else {}))
    grp.create_dataset("masks", data=result["masks"], **(comp if n else {}))
    grp.create_dataset("header", data=_str_array(result["header"]).reshape(n, nb), **text)
    grp.create_dataset("catalog", data=_str_array(result["catalog"]).reshape(n), **text)
    grp.attrs["n_objects"] = n


def parts_dir(output):
    """Directory of the per-tile parts of output file ``output`` (``.../PREFIX_001.hdf5``)."""
    return output[: -len(".hdf5")] + ".parts" if output.endswith(".hdf5") else output + ".parts"


def write_part(output, tile, result, bands, dim, compression="gzip"):
    """Write one tile's stamps as an atomic part file of ``output``; returns its path."""
    pdir = parts_dir(output)
    os.makedirs(pdir, exist_ok=True)
    path = os.path.join(pdir, f"{tile}.hdf5")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            _set_root_attrs(h5, bands, dim)
            write_tile_group(h5, tile, result, dim, len(bands), compression)
    return path


def _check_compatible(h5, path, bands, dim):
    got_b = str(h5.attrs.get("band_list", ""))
    got_d = int(h5.attrs.get("dimension", -1))
    if got_b != ",".join(bands) or got_d != dim:
        raise DesStampError(
            f"{path}: stamps with bands {got_b!r} and dimension {got_d}, cannot merge with "
            f"bands {','.join(bands)!r} and dimension {dim}"
        )


def assemble(output, bands, dim, tile_order=None):
    """Merge the parts of ``output`` (and an existing ``output``) into ``output`` atomically.

    Tiles found in parts replace the same tiles of an existing file. Returns the list of tiles
    in the assembled file, or ``[]`` if there was nothing to do.
    """
    pdir = parts_dir(output)
    parts = sorted(f for f in os.listdir(pdir) if f.endswith(".hdf5") and not f.startswith(".")) \
        if os.path.isdir(pdir) else []
    if not parts:
        if os.path.isdir(pdir):
            shutil.rmtree(pdir)
        return []
    part_tiles = [p[: -len(".hdf5")] for p in parts]
    if tile_order is not None:
        rank = {t: i for i, t in enumerate(tile_order)}
        order = sorted(range(len(parts)), key=lambda i: rank.get(part_tiles[i], len(rank)))
        parts = [parts[i] for i in order]
        part_tiles = [part_tiles[i] for i in order]
    tiles = []
    with atomic_path(output) as tmp:
        with h5py.File(tmp, "w") as dst:
            _set_root_attrs(dst, bands, dim)
            stamps = dst.create_group("stamps")
            if os.path.exists(output):
                with h5py.File(output, "r") as old:
                    _check_compatible(old, output, bands, dim)
                    for tile in old.get("stamps", {}):
                        if tile not in part_tiles:
                            old.copy(old["stamps"][tile], stamps, name=tile)
                            tiles.append(tile)
            for part, tile in zip(parts, part_tiles):
                path = os.path.join(pdir, part)
                with h5py.File(path, "r") as src:
                    _check_compatible(src, path, bands, dim)
                    src.copy(src["stamps"][tile], stamps, name=tile)
                tiles.append(tile)
    shutil.rmtree(pdir)
    return tiles


def read_store(path, tile=None):
    """Read a stamp store.

    Parameters
    ----------
    path : str
        HDF5 file.
    tile : str, optional
        Only this tile.

    Returns
    -------
    dict
        ``bands`` (list of str), ``dimension`` (int) and ``tiles``: tile -> dict with
        ``data``, ``masks``, ``header`` (array of str), ``catalog`` (array of str).
    """
    with h5py.File(path, "r") as h5:
        bands = str(h5.attrs["band_list"]).split(",")
        out = {"bands": bands, "dimension": int(h5.attrs["dimension"]), "tiles": {}}
        names = [tile] if tile is not None else list(h5.get("stamps", {}))
        for name in names:
            grp = h5["stamps"][name]
            out["tiles"][name] = {
                "data": grp["data"][...],
                "masks": grp["masks"][...],
                "header": np.char.decode(grp["header"][...].astype(bytes), "utf-8"),
                "catalog": np.char.decode(grp["catalog"][...].astype(bytes), "utf-8"),
            }
    return out


def extract_fits(path, out_dir, ids=None):
    """Write ``<id>_<band>.fits`` for the stamps of an HDF5 store.

    Parameters
    ----------
    path : str
        HDF5 stamp store.
    out_dir : str
        Output directory (created if needed).
    ids : iterable of str, optional
        Only these object ids (all if None).

    Returns
    -------
    list of str
        The files written. Ids not found in the store are reported by ``missing`` attribute
        of the returned list.
    """
    from astropy.io import fits

    from shapepipe.utils.atomic import write_fits

    os.makedirs(out_dir, exist_ok=True)
    want = None if ids is None else {str(i) for i in ids}
    written = _Written()
    found = set()
    with h5py.File(path, "r") as h5:
        bands = str(h5.attrs["band_list"]).split(",")
        for tile in h5.get("stamps", {}):
            grp = h5["stamps"][tile]
            cat = np.char.decode(grp["catalog"][...].astype(bytes), "utf-8")
            rows = np.arange(cat.size) if want is None else np.nonzero(np.isin(cat, list(want)))[0]
            for row in rows:
                data = grp["data"][row]
                headers = grp["header"][row]
                for b, band in enumerate(bands):
                    header = fits.Header.fromstring(headers[b].decode("utf-8"))
                    hdu = fits.PrimaryHDU(data[:, :, b], header=header)
                    # An id is a label, not a path: keep it inside out_dir.
                    safe = cat[row].replace(os.sep, "_").lstrip(".") or "_"
                    name = os.path.join(out_dir, f"{safe}_{band}.fits")
                    write_fits(fits.HDUList([hdu]), name)
                    written.append(name)
                found.add(cat[row])
    written.missing = sorted(want - found) if want is not None else []
    return written


class _Written(list):
    missing = ()
