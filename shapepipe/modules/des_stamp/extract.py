"""Cutting postage stamps out of multi-band tiles.

Pixel convention (the same as ``astropy.nddata.Cutout2D``): for an object at 0-based pixel
position ``(x, y)`` of the tile, the stamp of size ``D`` starts at pixel
``x0 = ceil(x - D/2)``, ``y0 = ceil(y - D/2)``, so the object lies within half a pixel of the
stamp's geometric centre ``((D-1)/2, (D-1)/2)`` (0-based): for odd ``D`` it is in the central
pixel, for even ``D`` in one of the four central pixels. The part of a stamp outside the
tile is NaN; masked pixels are those outside the tile, non-finite, or with a non-zero mask.

Each band of a tile is opened once (memory-mapped when the file is not compressed) and all
stamps are gathered with one advanced-indexing operation on a sliding-window view; edge
stamps use clipped indices. Each stamp header is the tile's WCS with CRPIX shifted by the
stamp origin, produced from a per-band text template rather than an astropy WCS per stamp.
"""

import os

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from numpy.lib.stride_tricks import sliding_window_view

from shapepipe.modules.des_stamp.errors import DesStampError

# Header keys copied from the tile into each stamp header: the WCS and a few photometric ones.
_WCS_PREFIXES = ("CTYPE", "CRVAL", "CRPIX", "CDELT", "CUNIT", "CD1_", "CD2_", "PC1_", "PC2_",
                 "PV1_", "PV2_", "CROTA", "A_", "B_", "AP_", "BP_")
_WCS_KEYS = {"WCSAXES", "RADESYS", "RADECSYS", "EQUINOX", "EPOCH", "LONPOLE", "LATPOLE",
             "MJD-OBS", "DATE-OBS", "MJDREF", "WCSNAME", "A_ORDER", "B_ORDER", "AP_ORDER",
             "BP_ORDER", "A_DMAX", "B_DMAX"}
_KEEP_KEYS = {"FILTER", "BAND", "MAGZERO", "MAGZP", "EXPTIME", "GAIN", "SATURATE", "BUNIT"}


def tile_band_path(tile_dir, template, tile, band):
    """Path of one band of one tile.

    ``template`` contains ``{tile}`` and ``{band}`` (replaced literally, never evaluated),
    e.g. ``{tile}_{band}.fits``. If that file does not exist but ``<name>.fz`` does (or the
    template ends in ``.fz`` and the uncompressed file exists), the existing one is used.
    """
    name = template.replace("{tile}", tile).replace("{band}", band)
    path = os.path.join(tile_dir, name)
    if os.path.exists(path):
        return path
    alt = path[:-3] if path.endswith(".fz") else path + ".fz"
    if os.path.exists(alt):
        return alt
    raise DesStampError(f"tile file not found: {path} (nor {os.path.basename(alt)})")


def cut_stamps(image, x, y, dim, fill=np.nan, dtype=np.float32):
    """Cut ``dim`` x ``dim`` stamps centred on 0-based pixel positions.

    Parameters
    ----------
    image : numpy.ndarray (ny, nx)
        The tile band (may be a memory map).
    x, y : array_like of int
        First column and row (0-based) of each stamp, as given by :func:`stamp_origin`.
    dim : int
        Stamp size.
    fill : scalar
        Value of the pixels outside the image.
    dtype : numpy dtype
        Output type.

    Returns
    -------
    numpy.ndarray (n, dim, dim)
    """
    x0 = np.asarray(x, dtype=np.int64)
    y0 = np.asarray(y, dtype=np.int64)
    ny, nx = image.shape
    n = x0.size
    out = np.empty((n, dim, dim), dtype=dtype)
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + dim <= nx) & (y0 + dim <= ny)
    if dim <= min(nx, ny) and inside.any():
        windows = sliding_window_view(image, (dim, dim))
        out[inside] = windows[y0[inside], x0[inside]]
    edge = np.nonzero(~inside)[0]
    if edge.size:
        offs = np.arange(dim)
        rows = y0[edge, None] + offs
        cols = x0[edge, None] + offs
        ok_r = (rows >= 0) & (rows < ny)
        ok_c = (cols >= 0) & (cols < nx)
        gathered = np.asarray(image[np.clip(rows, 0, ny - 1)[:, :, None],
                                    np.clip(cols, 0, nx - 1)[:, None, :]]).astype(dtype)
        gathered[~(ok_r[:, :, None] & ok_c[:, None, :])] = fill
        out[edge] = gathered
    return out


def stamp_origin(x, y, dim):
    """First column/row (0-based) of stamps of size ``dim`` centred on 0-based ``(x, y)``."""
    x0 = np.ceil(np.asarray(x, dtype=float) - dim / 2.0)
    y0 = np.ceil(np.asarray(y, dtype=float) - dim / 2.0)
    return x0, y0


def _float_text(value):
    """A float as a FITS fixed-format value (uppercase exponent, always a '.' or 'E')."""
    text = repr(float(value))
    if "e" in text:
        mant, exp = text.split("e")
        if "." not in mant:
            mant += ".0"
        text = f"{mant}E{exp}"
    elif "." not in text:
        text += ".0"
    return text


def _card(key, value, comment=""):
    """One 80-character FITS card (or astropy's CONTINUE cards for long strings)."""
    if isinstance(value, str):
        # FITS headers are ASCII: escape anything else rather than fail on an exotic label.
        value = value.encode("ascii", "backslashreplace").decode("ascii")
        text = value.replace("'", "''")
        if len(text) > 60:
            return str(fits.Card(key, value, comment))
        val = f"'{text:<8}'"
        card = f"{key:<8}= {val:<20}"
    elif isinstance(value, (bool, np.bool_)):
        card = f"{key:<8}= {'T' if value else 'F':>20}"
    elif isinstance(value, (int, np.integer)):
        card = f"{key:<8}= {int(value):>20d}"
    else:
        card = f"{key:<8}= {_float_text(value):>20}"
    if comment:
        card += f" / {comment}"
    return f"{card[:80]:<80}"


class BandTemplate:
    """Header text of the stamps of one tile band, with per-stamp values filled in.

    Built once from the tile header: the WCS cards (and a few photometric ones) are kept
    verbatim except CRPIX1/2, which are re-written per stamp with the stamp origin subtracted.
    """

    def __init__(self, header, dim, tile, band):
        cards = []
        self.crpix = [0.0, 0.0]
        for card in header.cards:
            key = card.keyword
            if key in ("CRPIX1", "CRPIX2"):
                self.crpix[int(key[-1]) - 1] = float(card.value)
                continue
            if key in _WCS_KEYS or key in _KEEP_KEYS or key.startswith(_WCS_PREFIXES):
                cards.append(card.image)
        self.head = (
            _card("SIMPLE", True) + _card("BITPIX", -32) + _card("NAXIS", 2)
            + _card("NAXIS1", dim) + _card("NAXIS2", dim)
        )
        self.body = "".join(cards) + _card("TILENAME", tile) + _card("BAND", band, "stamp band")

    def render(self, x0, y0, extra):
        """Header text of one stamp.

        Parameters
        ----------
        x0, y0 : int
            0-based origin of the stamp in the tile.
        extra : str
            Further cards (already formatted), e.g. object id and position.
        """
        return (
            self.head
            + _card("CRPIX1", self.crpix[0] - x0)
            + _card("CRPIX2", self.crpix[1] - y0)
            + self.body
            + extra
            + f"{'END':<80}"
        )


def open_band(path, image_hdu=1, mask_hdu=2):
    """Open one tile band: (image array, mask array or None, header, HDUList).

    Uncompressed files are memory-mapped; the HDUList must be closed by the caller.
    """
    try:
        hdul = fits.open(path, memmap=True)
    except (OSError, ValueError) as exc:
        raise DesStampError(f"{path}: cannot open as FITS ({exc})") from None
    try:
        if image_hdu >= len(hdul):
            raise DesStampError(f"{path}: no HDU {image_hdu} for the image (has {len(hdul)})")
        image = hdul[image_hdu].data
        if image is None or image.ndim != 2:
            raise DesStampError(f"{path}: HDU {image_hdu} is not a 2-d image")
        header = hdul[image_hdu].header
        mask = None
        if mask_hdu is not None and mask_hdu >= 0:
            if mask_hdu >= len(hdul):
                raise DesStampError(f"{path}: no HDU {mask_hdu} for the mask (has {len(hdul)})")
            mask = hdul[mask_hdu].data
            if mask is None or mask.shape != image.shape:
                raise DesStampError(
                    f"{path}: mask HDU {mask_hdu} shape {getattr(mask, 'shape', None)} "
                    f"differs from the image {image.shape}"
                )
    except BaseException:
        hdul.close()
        raise
    return image, mask, header, hdul


def extract_tile(tile, ra, dec, ids, tile_dir, bands, dim, template="{tile}_{band}.fits",
                 image_hdu=1, mask_hdu=2, chunk=2048):
    """Cut the stamps of every object of one tile, in every band.

    Parameters
    ----------
    tile : str
        Tile name.
    ra, dec : array_like
        Object positions (degrees).
    ids : array_like of str
        Object labels.
    tile_dir : str
        Directory holding the tile files.
    bands : sequence of str
        Band names, in the order of the last axis of the output.
    dim : int
        Stamp size in pixels.
    template : str
        File-name template with ``{tile}`` and ``{band}``.
    image_hdu, mask_hdu : int
        HDU numbers of the image and of the mask (``mask_hdu`` < 0 or None: no mask).
    chunk : int
        Objects per batch (bounds memory on tiles with many objects).

    Returns
    -------
    dict
        ``ok`` (bool per input object), ``reason`` (str per object, "" when ok), and for the
        ``ok`` objects only, in input order: ``data`` (n, dim, dim, nband) float32,
        ``masks`` (n, nband) int32 masked-pixel counts, ``header`` (n, nband) str,
        ``catalog`` (n,) str ids.

    Raises
    ------
    DesStampError
        If a band file is missing or unreadable (the whole tile fails).
    """
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    ids = np.asarray(ids, dtype=object)
    n = ra.size
    nb = len(bands)
    opened = []
    try:
        pix = []
        for band in bands:
            path = tile_band_path(tile_dir, template, tile, band)
            image, mask, header, hdul = open_band(path, image_hdu, mask_hdu)
            opened.append(hdul)
            try:
                wcs = WCS(header)
                x, y = wcs.all_world2pix(ra, dec, 0)
            except Exception as exc:  # astropy raises many types for a bad WCS
                raise DesStampError(
                    f"{path}: cannot use the WCS of HDU {image_hdu} ({exc})"
                ) from None
            x0, y0 = stamp_origin(x, y, dim)
            pix.append((image, mask, BandTemplate(header, dim, tile, band), x, y, x0, y0))

        ok = np.ones(n, dtype=bool)
        reason = np.full(n, "", dtype=object)
        for b, (image, _, _, _, _, x0, y0) in enumerate(pix):
            ny, nx = image.shape
            bad_pos = ~(np.isfinite(x0) & np.isfinite(y0))
            x0s = np.where(bad_pos, 0, x0)
            y0s = np.where(bad_pos, 0, y0)
            off = bad_pos | (x0s + dim <= 0) | (y0s + dim <= 0) | (x0s >= nx) | (y0s >= ny)
            new = off & ok
            reason[new] = f"no overlap with {tile} band {bands[b]}"
            ok &= ~off
        good = np.nonzero(ok)[0]
        ngood = good.size
        data = np.empty((ngood, dim, dim, nb), dtype=np.float32)
        masks = np.empty((ngood, nb), dtype=np.int32)
        headers = np.empty((ngood, nb), dtype=object)
        for start in range(0, ngood, chunk):
            sel = good[start:start + chunk]
            out = slice(start, start + sel.size)
            for b, (image, mask, tmpl, x, y, x0, y0) in enumerate(pix):
                xi = x0[sel].astype(np.int64)
                yi = y0[sel].astype(np.int64)
                stamps = cut_stamps(image, xi, yi, dim)
                bad = ~np.isfinite(stamps)
                if mask is not None:
                    bad |= cut_stamps(mask, xi, yi, dim, fill=1, dtype=np.int32) != 0
                data[out, :, :, b] = stamps
                masks[out, b] = bad.sum(axis=(1, 2))
                headers[out, b] = [
                    tmpl.render(
                        xx0, yy0,
                        _card("OBJ_ID", str(oid), "object label")
                        + _card("RA_OBJ", r, "[deg] object RA")
                        + _card("DEC_OBJ", d, "[deg] object Dec")
                        + _card("X_TILE", xx + 1.0, "object x in tile (1-based)")
                        + _card("Y_TILE", yy + 1.0, "object y in tile (1-based)")
                        + _card("X0_TILE", xx0 + 1, "first stamp column in tile (1-based)")
                        + _card("Y0_TILE", yy0 + 1, "first stamp row in tile (1-based)")
                        + _card("NMASKED", int(nm), "masked pixels (outside/flagged/NaN)"),
                    )
                    for oid, r, d, xx, yy, xx0, yy0, nm in zip(
                        ids[sel], ra[sel], dec[sel], x[sel], y[sel],
                        xi.tolist(), yi.tolist(), masks[out, b].tolist(),
                    )
                ]
    finally:
        for hdul in opened:
            hdul.close()
    return {
        "ok": ok,
        "reason": reason,
        "data": data,
        "masks": masks,
        "header": headers,
        "catalog": ids[good].astype(str),
    }
