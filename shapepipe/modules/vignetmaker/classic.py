"""CLASSIC mode: stamps of one image (e.g. the tile weight) at the catalogue positions.

Output file (ShapePipe's layout): ``<prefix>_vignet<num>.fits``, FITS_LDAC-like: an empty
primary HDU, the catalogue's ``LDAC_IMHEAD`` when it has one, and ``LDAC_OBJECTS`` with
``NUMBER`` and ``VIGNET`` (N, S, S) float32, rows in catalogue order.
"""

import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from shapepipe.modules.vignetmaker.cutting import SEX_MASKED, cut_stamps
from shapepipe.utils.atomic import write_fits
from shapepipe.utils.pixels import fits_to_numpy, stamp_corner


def objects_hdu(hdul, path):
    """The object table of a catalogue: ``LDAC_OBJECTS`` if present, else the first table."""
    names = [h.name for h in hdul]
    if "LDAC_OBJECTS" in names:
        return hdul["LDAC_OBJECTS"]
    for hdu in hdul:
        if isinstance(hdu, fits.BinTableHDU):
            return hdu
    raise ValueError(f"{path}: no table HDU (expected a SExtractor catalogue)")


def read_columns(path, names):
    """Columns of a catalogue's object table, as numpy arrays, with a clear error if absent."""
    with fits.open(path, memmap=False) as hdul:
        data = objects_hdu(hdul, path).data
        missing = [n for n in names if n not in data.columns.names]
        if missing:
            raise KeyError(f"{path}: column(s) {', '.join(missing)} not found "
                           f"(available: {', '.join(data.columns.names)})")
        return {n: np.array(data[n]) for n in names}


def read_image(path):
    """Data and header of the first image HDU of a FITS file."""
    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            if hdu.data is not None and getattr(hdu.data, "ndim", 0) == 2:
                return np.asarray(hdu.data), hdu.header.copy()
    raise ValueError(f"{path}: no 2-d image HDU")


def image_wcs(header):
    """Celestial WCS of an image header (header-fix warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header).celestial


def positions(cat, pos_params, coord, header=None):
    """0-based pixel positions of the objects in an image.

    Parameters
    ----------
    cat : dict
        Catalogue columns.
    pos_params : sequence of 2 str
        Position columns: pixel (1-based, e.g. XWIN_IMAGE) for PIX, world (deg) for SPHE.
    coord : {"PIX", "SPHE"}
    header : astropy.io.fits.Header, optional
        Image header with the WCS (SPHE).
    """
    a = np.asarray(cat[pos_params[0]], dtype=float)
    b = np.asarray(cat[pos_params[1]], dtype=float)
    if coord == "PIX":
        return fits_to_numpy(a), fits_to_numpy(b)
    if coord == "SPHE":
        x, y = image_wcs(header).all_world2pix(a, b, 0)
        return np.asarray(x), np.asarray(y)
    raise ValueError(f"COORD = {coord!r}: expected PIX or SPHE")


def write_vignet_file(path, numbers, vignets, imhead=None, cards=None):
    """Write ``NUMBER`` and ``VIGNET`` in ShapePipe's vignet-file layout (atomically).

    Parameters
    ----------
    path : str
        Output file.
    numbers : numpy.ndarray
        Object ids, catalogue order.
    vignets : numpy.ndarray
        ``(N, S, S)`` stamps.
    imhead : astropy.io.fits.BinTableHDU, optional
        ``LDAC_IMHEAD`` of the source catalogue, copied as is.
    cards : dict, optional
        Extra header keywords of the table (e.g. how the stamps were centred).
    """
    vignets = np.asarray(vignets, dtype=np.float32)
    n, ny, nx = vignets.shape
    cols = [
        fits.Column(name="NUMBER", format="J", array=np.asarray(numbers, dtype=np.int32)),
        fits.Column(name="VIGNET", format=f"{ny * nx}E", dim=f"({nx}, {ny})", array=vignets),
    ]
    hdus = [fits.PrimaryHDU()]
    if imhead is not None:
        hdus.append(imhead)
    table = fits.BinTableHDU.from_columns(cols, name="LDAC_OBJECTS")
    for key, value in (cards or {}).items():
        table.header[key] = value
    hdus.append(table)
    write_fits(fits.HDUList(hdus), path)


def read_vignet_file(path):
    """``(NUMBER, VIGNET)`` of a vignet file (or of any catalogue with a VIGNET column)."""
    cols = read_columns(path, ["NUMBER", "VIGNET"])
    return cols["NUMBER"], np.asarray(cols["VIGNET"], dtype=np.float32)


def _imhead(cat_path):
    with fits.open(cat_path, memmap=False) as hdul:
        if "LDAC_IMHEAD" in [h.name for h in hdul]:
            return hdul["LDAC_IMHEAD"].copy()
    return None


def make_classic(cat_path, image_paths, prefixes, output_dir, number, pos_params, coord,
                 stamp_size, log=None):
    """CLASSIC mode: one vignet file per image, stamps centred on the catalogue positions.

    Parameters
    ----------
    cat_path : str
        Object catalogue (e.g. ``tile_sexcat-<num>.fits``).
    image_paths : list of str
        Images to cut (e.g. the tile weight).
    prefixes : list of str
        Output prefixes, one per image: ``<prefix>_vignet<number>.fits``.
    output_dir : str
    number : str
        File number string (``-270-283``).
    pos_params : sequence of 2 str
        Position columns.
    coord : {"PIX", "SPHE"}
        Pixel (1-based) or world positions.
    stamp_size : int
        Stamp side (odd).

    Returns
    -------
    list of str
        The files written.
    """
    import os

    if len(prefixes) != len(image_paths):
        raise ValueError(f"{len(prefixes)} PREFIX values for {len(image_paths)} images "
                         f"({', '.join(os.path.basename(p) for p in image_paths)}): give one "
                         "prefix per image")
    cat = read_columns(cat_path, ["NUMBER", *pos_params])
    imhead = _imhead(cat_path)
    written = []
    for prefix, image_path in zip(prefixes, image_paths):
        image, header = read_image(image_path)
        x, y = positions(cat, pos_params, coord, header)
        x0, y0, _, _ = stamp_corner(x, y, stamp_size)
        vign = cut_stamps(image, x0, y0, stamp_size, fill=0.0)
        del image
        out = os.path.join(output_dir, f"{prefix}_vignet{number}.fits")
        # Record how the stamps were centred, so that a reader (spread_model) can align
        # them with stamps cut elsewhere (e.g. SExtractor's VIGNET, centred on X_IMAGE).
        cards = {"VIGPOSX": (pos_params[0], "stamp centre column"),
                 "VIGPOSY": (pos_params[1], "stamp centre column"),
                 "VIGCOORD": (coord, "PIX (1-based pixels) or SPHE (world)")}
        write_vignet_file(out, cat["NUMBER"], vign, imhead, cards)
        written.append(out)
        if log:
            log.info("%s: %d stamps %dx%d from %s", out, len(vign), stamp_size, stamp_size,
                     image_path)
    return written


def masked_catalog_vignets(cat_path, mask_value):
    """The catalogue's VIGNET column with SExtractor's masked pixels set to ``mask_value``.

    ShapePipe's ``MASKING = True`` mode (output ``cat_vignet<num>.fits``).
    """
    numbers, vign = read_vignet_file(cat_path)
    vign = vign.copy()
    vign[vign <= SEX_MASKED * 0.1] = mask_value
    return numbers, vign
