"""Tile post-processing: which single-exposure CCD each tile object falls on.

For a catalogue measured on a stacked tile, ShapePipe's ``MAKE_POST_PROCESS`` adds one
``EPOCH_<i>`` HDU per contributing exposure ``i`` (in the order of the tile header's HISTORY
cards), with columns ``NUMBER`` (as in ``LDAC_OBJECTS``), ``EXP_NAME`` (the exposure name)
and ``CCD_N`` (the CCD index the object falls on, -1 when on none), and an ``N_EPOCH``
column in ``LDAC_OBJECTS`` counting the CCDs (over all exposures) that contain the object.

An object is on CCD ``j`` when its world position (``WORLD_POSITION`` columns) maps, through
the CCD WCS, to 0-based pixel coordinates strictly inside ``CCD_SIZE`` = xmin, xmax, ymin,
ymax (ShapePipe's convention, e.g. ``33, 2080, 1, 4612`` to exclude the overscan).
"""

import os

import numpy as np
from astropy.io import fits

from shapepipe.modules.sextractor.config_files import SexConfigError
from shapepipe.utils.atomic import write_fits
from shapepipe.utils.cfis import HISTORY_EXP_RE, exposures_from_header  # noqa: F401
from shapepipe.utils.ldac import read_imhead

# The HISTORY parser lives with the other CFIS name helpers (shapepipe.utils.cfis); it is
# imported above under its old names, which stay valid here.


def read_log_wcs(path, exposures):
    """Read the CCD WCSs of the given exposures from ``log_exp_headers.sqlite``.

    The file is merge_headers' output (JSON, never unpickled); this wraps its reader so that
    a problem is reported as a configuration error naming the file.

    Parameters
    ----------
    path : str
        The sqlite file.
    exposures : list of str
        Exposure names.

    Returns
    -------
    dict
        ``{exp_name: [astropy.wcs.WCS or None per CCD]}``.
    """
    from shapepipe.modules.merge_headers import read_exp_wcs

    if not os.path.isfile(path):
        raise SexConfigError(f"LOG_WCS file {path} not found")
    try:
        return read_exp_wcs(path, exposures)
    except KeyError as exc:
        raise SexConfigError(f"{exc.args[0]} (exposure named in the tile HISTORY)") from None
    except ValueError as exc:
        raise SexConfigError(str(exc)) from None


def epoch_table(ra, dec, ccd_wcs, ccd_size):
    """CCD index of each position for one exposure.

    Parameters
    ----------
    ra, dec : numpy.ndarray
        World positions (deg).
    ccd_wcs : list of astropy.wcs.WCS or None
        One WCS per CCD (None for an absent CCD).
    ccd_size : sequence of 4 numbers, optional
        xmin, xmax, ymin, ymax (0-based pixel coordinates, strict inequalities). None: the
        whole image of each CCD, from the NAXIS1/NAXIS2 of its header (pixel edges -0.5 and
        NAXIS - 0.5).

    Returns
    -------
    ccd_n : numpy.ndarray of int32
        CCD index, -1 when on no CCD (the last matching CCD wins, as in ShapePipe).
    n_hits : numpy.ndarray of int32
        Number of CCDs containing each position.
    """
    ccd_n = np.full(len(ra), -1, dtype=np.int32)
    n_hits = np.zeros(len(ra), dtype=np.int32)
    for j, wcs in enumerate(ccd_wcs):
        if wcs is None:
            continue
        if ccd_size is not None:
            xmin, xmax, ymin, ymax = (float(v) for v in ccd_size)
        elif wcs.pixel_shape is not None:
            nx, ny = wcs.pixel_shape
            xmin, xmax, ymin, ymax = -0.5, nx - 0.5, -0.5, ny - 0.5
        else:
            raise SexConfigError(f"CCD {j}: its header has no NAXIS1/NAXIS2; set CCD_SIZE")
        px, py = wcs.all_world2pix(ra, dec, 0)
        inside = (px > xmin) & (px < xmax) & (py > ymin) & (py < ymax)
        ccd_n[inside] = j
        n_hits += inside
    return ccd_n, n_hits


def make_post_process(cat_path, log_wcs_path, world_position, ccd_size, exposures=None):
    """Add the ``EPOCH_<i>`` HDUs and the ``N_EPOCH`` column to a tile catalogue, in place.

    Parameters
    ----------
    cat_path : str
        FITS_LDAC catalogue of a tile (rewritten atomically).
    log_wcs_path : str
        ``log_exp_headers.sqlite`` of merge_headers.
    world_position : sequence of 2 str
        Columns with the world coordinates, e.g. ``("XWIN_WORLD", "YWIN_WORLD")``.
    ccd_size : sequence of 4 numbers, optional
        xmin, xmax, ymin, ymax; None: each CCD's whole image (see :func:`epoch_table`).
    exposures : list of str, optional
        Exposure names; default: from the HISTORY cards of the tile header in LDAC_IMHEAD.

    Returns
    -------
    list of str
        The exposures processed, in EPOCH order.
    """
    if len(world_position) != 2:
        raise SexConfigError(f"WORLD_POSITION: expected two column names, got {world_position}")
    if ccd_size is not None and len(ccd_size) != 4:
        raise SexConfigError(f"CCD_SIZE: expected xmin, xmax, ymin, ymax, got {ccd_size}")
    with fits.open(cat_path, memmap=False) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    names = [h.name for h in hdul]
    if "LDAC_OBJECTS" not in names:
        raise SexConfigError(f"{cat_path}: no LDAC_OBJECTS HDU")
    objects = hdul["LDAC_OBJECTS"]
    data = objects.data
    for col in world_position:
        if col not in data.columns.names:
            raise SexConfigError(f"{cat_path}: WORLD_POSITION column {col} not in the catalogue "
                                 "(add it to the .param file)")
    if exposures is None:
        header = read_imhead(hdul["LDAC_IMHEAD"]) if "LDAC_IMHEAD" in names else fits.Header()
        exposures = exposures_from_header(header)
        if not exposures:
            raise SexConfigError(f"{cat_path}: the image header has no HISTORY card naming an "
                                 "input exposure ('... <digits>p.fits...'); cannot post-process")
    wcs_by_exp = read_log_wcs(log_wcs_path, exposures)
    ra = np.asarray(data[world_position[0]], dtype=np.float64)
    dec = np.asarray(data[world_position[1]], dtype=np.float64)
    number = np.asarray(data["NUMBER"]) if "NUMBER" in data.columns.names else \
        np.arange(1, len(ra) + 1, dtype=np.int32)
    n_epoch = np.zeros(len(ra), dtype=np.int32)
    epochs = []
    width = max(len(e) for e in exposures)
    for i, exp in enumerate(exposures):
        ccd_n, hits = epoch_table(ra, dec, wcs_by_exp[exp], ccd_size)
        n_epoch += hits
        cols = [
            fits.Column(name="NUMBER", format="J", array=number.astype(np.int32)),
            fits.Column(name="EXP_NAME", format=f"{width}A",
                        array=np.full(len(ra), exp, dtype=f"S{width}")),
            fits.Column(name="CCD_N", format="J", array=ccd_n),
        ]
        hdu = fits.BinTableHDU.from_columns(cols)
        hdu.header["EXTNAME"] = f"EPOCH_{i}"
        epochs.append(hdu)
    columns = [c for c in objects.columns if c.name != "N_EPOCH"]
    new_objects = fits.BinTableHDU.from_columns(
        fits.ColDefs(columns) + fits.ColDefs([fits.Column(name="N_EPOCH", format="J",
                                                          array=n_epoch)]),
        header=objects.header,
    )
    new_objects.header["EXTNAME"] = "LDAC_OBJECTS"
    kept = [h for h in hdul if not h.name.startswith("EPOCH_")]
    out = fits.HDUList([new_objects if h.name == "LDAC_OBJECTS" else h for h in kept] + epochs)
    write_fits(out, cat_path)
    return list(exposures)
