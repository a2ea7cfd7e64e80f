"""Build the flag image of one CCD (or tile): border, stars, deep-sky objects, external flags."""

import logging
import os
import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from shapepipe.modules.mask.catalogs import (
    angular_separation,
    read_dso_catalogue,
    read_star_catalogue,
)
from shapepipe.modules.mask.config import MaskConfig
from shapepipe.modules.mask.raster import fill_circles, fill_polygons
from shapepipe.modules.mask.regions import (
    place_template,
    read_template,
    template_radius,
    write_regions,
)
from shapepipe.utils.atomic import write_fits

_LOG = logging.getLogger(__name__)

# Header cards describing the input pixels, not valid for the integer flag image.
_DROP_CARDS = ("BSCALE", "BZERO", "BLANK", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT",
               "CHECKSUM", "DATASUM")


def border_mask(shape, width):
    """Mask of the ``width`` outermost pixels on each side of an image.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)``.
    width : int
        Border width in pixels (0 masks nothing).

    Returns
    -------
    numpy.ndarray of bool
    """
    mask = np.zeros(shape, dtype=bool)
    if width > 0:
        mask[:width, :] = True
        mask[-width:, :] = True
        mask[:, :width] = True
        mask[:, -width:] = True
    return mask


def image_footprint(wcs, shape):
    """Centre (ra, dec) and radius (deg) of the circle enclosing an image, and pixel scale.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS of the image.
    shape : tuple of int
        ``(ny, nx)``.

    Returns
    -------
    ra_c, dec_c, radius, pixel_scale : float
        Degrees; ``pixel_scale`` in degrees per pixel.
    """
    ny, nx = shape
    xs = np.array([(nx - 1) / 2, 0, nx - 1, 0, nx - 1])
    ys = np.array([(ny - 1) / 2, 0, 0, ny - 1, ny - 1])
    ra, dec = wcs.all_pix2world(xs, ys, 0)
    radius = float(np.max(angular_separation(ra[0], dec[0], ra[1:], dec[1:])))
    pixel_scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))))
    return float(ra[0]), float(dec[0]), radius, pixel_scale


def star_polygons(wcs, shape, stars, params, template):
    """Place a halo/spike template on every star of the catalogue that needs one.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS of the image.
    shape : tuple of int
        ``(ny, nx)``.
    stars : tuple of numpy.ndarray
        ``(ra, dec, mag)`` in degrees and magnitudes.
    params : dict
        ``mag_lim``, ``scale_factor``, ``mag_pivot`` (see ``MaskConfig``).
    template : list of numpy.ndarray
        Template polygons (pixels relative to the star, at the pivot magnitude).

    Returns
    -------
    placed : list of numpy.ndarray
        Per template polygon, (n_star, n_vertices, 2) vertices in 0-based pixels.
    n_star : int
        Number of stars whose mask touches the image footprint circle.

    Notes
    -----
    A star brighter than ``mag_lim`` gets the template scaled by
    ``1 - scale_factor * (mag - mag_pivot)`` (ShapePipe's rule); a scale <= 0 (very faint
    star with a steep factor) gives no mask rather than a flipped one.
    """
    ra, dec, mag = (np.asarray(v, dtype=float) for v in stars)
    scale = 1.0 - params["scale_factor"] * (mag - params["mag_pivot"])
    keep = (mag < params["mag_lim"]) & (scale > 0)
    ra, dec, scale = ra[keep], dec[keep], scale[keep]
    ra_c, dec_c, radius, pixel_scale = image_footprint(wcs, shape)
    reach = template_radius(template) * scale * pixel_scale
    near = angular_separation(ra_c, dec_c, ra, dec) <= radius + reach
    ra, dec, scale = ra[near], dec[near], scale[near]
    if not len(ra):
        return [np.zeros((0, len(p), 2)) for p in template], 0
    x, y = wcs.all_world2pix(ra, dec, 0)
    return place_template(template, x, y, scale), len(ra)


def dso_mask(wcs, shape, catalogue, size_plus):
    """Mask of the deep-sky objects (Messier, NGC) overlapping an image.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS.
    shape : tuple of int
        ``(ny, nx)``.
    catalogue : tuple
        ``(ra, dec, size_deg, names)`` from ``read_dso_catalogue``.
    size_plus : float
        Relative enlargement of the radius (0.1 = +10%).

    Returns
    -------
    mask : numpy.ndarray of bool
    names : list of str
        Objects whose disc overlaps the image.
    """
    ra, dec, size, names = catalogue
    ra_c, dec_c, radius, pixel_scale = image_footprint(wcs, shape)
    r_deg = size * (1.0 + size_plus)
    near = angular_separation(ra_c, dec_c, ra, dec) <= radius + r_deg
    if not near.any():
        return np.zeros(shape, dtype=bool), []
    x, y = wcs.all_world2pix(ra[near], dec[near], 0)
    r_pix = r_deg[near] / pixel_scale
    mask = np.zeros(shape, dtype=bool)
    hit = []
    for xc, yc, r, name in zip(x, y, r_pix, [n for n, k in zip(names, near) if k]):
        one = fill_circles([[xc, yc]], [r], shape)
        if one.any():
            mask |= one
            hit.append(name)
    return mask, hit


def _flag_dtype(values):
    high = int(values.max()) if values.size else 0
    low = int(values.min()) if values.size else 0
    return np.int16 if (low >= -(2**15) and high < 2**15) else np.int32


def _read_ext_flag(path, image_path, shape):
    """Read an external flag image as non-negative integers of the image's shape."""
    ext = fits.getdata(path)
    if ext.shape != shape:
        raise ValueError(
            f"{path}: flag image shape {ext.shape} differs from the image {image_path} "
            f"shape {shape}"
        )
    if ext.dtype.kind not in "iu":
        if not np.all(ext == np.round(ext)):
            raise ValueError(f"{path}: external flag image is not integer")
        ext = ext.astype(np.int64)
    if ext.size and int(ext.min()) < 0:
        raise ValueError(f"{path}: external flag image has negative values (expected bits)")
    if ext.size and int(ext.max()) >= 2**31:
        raise ValueError(f"{path}: external flag values above 2**31 are not supported")
    return ext


def make_mask(image_path, config, output_path, ext_flag_path=None, stars=None,
              number="", region_dir=None, log=None):
    """Compute and write the flag image of one image.

    Parameters
    ----------
    image_path : str
        Image (its primary HDU gives the shape and the WCS; ``.fits``).
    config : MaskConfig or str
        Mask configuration, or the path of the mask config file.
    output_path : str
        Output flag file (written atomically), e.g. ``pipeline_flag-2000001-0.fits``.
    ext_flag_path : str, optional
        External flag image of the same shape, OR-ed into the output when EF_MAKE.
    stars : tuple or str, optional
        ``(ra, dec, mag)`` arrays, or a catalogue path with columns RA, DEC, MAG. Required
        when halo or spike masks are made.
    number : str
        Number string of the image (``-2000001-0``), used in region/individual file names.
    region_dir : str, optional
        Where region files (KEEP_REG_FILE) and individual masks (KEEP_INDIVIDUAL_MASK) go;
        default: the directory of ``output_path``.
    log : logging.Logger, optional

    Returns
    -------
    dict
        Summary: counts of masked pixels per type, number of stars, objects, MD ratio.
    """
    log = log or _LOG
    if not isinstance(config, MaskConfig):
        config = MaskConfig(config)
    region_dir = region_dir or os.path.dirname(os.path.abspath(output_path))
    with fits.open(image_path, memmap=True) as hdul:
        header = hdul[0].header.copy()
        image = hdul[0].data
        if image is None or image.ndim != 2:
            raise ValueError(f"{image_path}: primary HDU is not a 2-d image")
        shape = image.shape
        md_ratio = None
        if config.missing_data is not None:
            md_ratio = float(np.count_nonzero(image == 0)) / image.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header).celestial
    if not wcs.has_celestial:
        raise ValueError(f"{image_path}: no celestial WCS in the header")

    summary = {"shape": shape}
    ext = None
    if ext_flag_path is not None and config.external_flag:
        ext = _read_ext_flag(ext_flag_path, image_path, shape)
        summary["n_external"] = int(np.count_nonzero(ext))
        header["MASK_EXT"] = (os.path.basename(ext_flag_path), "external flags OR-ed in")
    # The smallest integer type holding every bit that can be set (int16 when possible:
    # a 10k x 10k tile flag map is then 200 MB rather than 400 MB).
    bits = config.all_flag_bits() | (int(np.bitwise_or.reduce(ext, axis=None)) if ext is not None
                                     else 0)
    dtype = np.int16 if bits < 2**15 else np.int32
    flag = np.zeros(shape, dtype=dtype) if ext is None else ext.astype(dtype)
    individual = {}

    def add(kind, mask, value):
        np.bitwise_or(flag, dtype(value), out=flag, where=mask)
        summary[f"n_{kind}"] = int(np.count_nonzero(mask))
        if config.keep_individual_mask:
            individual[kind] = (mask, value)

    removed = False
    md = config.missing_data
    if md is not None:
        summary["md_ratio"] = md_ratio
        header["MD_RATIO"] = (round(md_ratio, 6), "fraction of zero-valued pixels")
        header["MD_FLAG"] = (md_ratio >= md["thresh_flag"], "missing data above MD_THRESH_FLAG")
        if md_ratio >= md["thresh_flag"]:
            log.warning("%s: %.1f%% of the pixels are 0 (missing data)", image_path,
                        100 * md_ratio)
        if md["remove"] and md_ratio >= md["thresh_remove"]:
            # The whole image is unusable: flag every pixel, skip the other masks.
            removed = True
            add("md", np.ones(shape, dtype=bool), md["flag"])
            log.warning("%s: flagged entirely (MD_REMOVE, ratio %.3f >= %.3f)", image_path,
                        md_ratio, md["thresh_remove"])
        header["MASK_MD"] = (md["flag"], "flag value of removed (missing-data) images")

    if not removed:
        if config.border is not None:
            add("border", border_mask(shape, config.border["width"]), config.border["flag"])
            header["MASK_BRD"] = (config.border["flag"], "flag value of the border mask")
            header["BRD_WID"] = (config.border["width"], "border width (pixels)")
        if config.needs_stars:
            if stars is None:
                hint = (" (CDSCLIENT_PATH is ignored: no online queries)"
                        if config.cdsclient else "")
                raise ValueError(
                    f"{config.path}: halo/spike masks need a star catalogue file{hint}; "
                    "give one (mask_runner: STAR_CAT_PATH, or USE_EXT_STAR with an input)"
                )
            if isinstance(stars, (str, os.PathLike)):
                stars = read_star_catalogue(os.fspath(stars))
        for kind, params, card, color in (("halo", config.halo, "MASK_HAL", "green"),
                                          ("spike", config.spike, "MASK_SPK", "red")):
            if params is None:
                continue
            template = read_template(params["model"])
            placed, n_star = star_polygons(wcs, shape, stars, params, template)
            add(kind, fill_polygons(placed, shape), params["flag"])
            summary[f"n_star_{kind}"] = n_star
            header[card] = (params["flag"], f"flag value of the {kind} mask")
            header[f"N{kind.upper()[:4]}"] = (n_star, f"stars with a {kind} mask")
            if config.keep_reg_file:
                base = params["reg_file"]
                base = base[:-4] if base.lower().endswith(".reg") else base
                reg_path = os.path.join(region_dir, f"{os.path.basename(base)}{number}.reg")
                write_regions(reg_path, placed, color=color, label=kind)
                summary[f"reg_{kind}"] = reg_path
        for kind, params, card in (("messier", config.messier, "MASK_MES"),
                                   ("ngc", config.ngc, "MASK_NGC")):
            if params is None:
                continue
            mask, names = dso_mask(wcs, shape, read_dso_catalogue(params["cat_path"]),
                                   params["size_plus"])
            add(kind, mask, params["flag"])
            summary[f"{kind}_objects"] = names
            header[card] = (params["flag"], f"flag value of the {kind} mask")
            if names:
                log.info("%s: %s objects on the image: %s", image_path, kind, ", ".join(names))

    for name in _DROP_CARDS:
        header.remove(name, ignore_missing=True, remove_all=True)
    write_fits(fits.HDUList([fits.PrimaryHDU(flag, header=header)]), output_path)
    summary["n_flagged"] = int(np.count_nonzero(flag))
    for kind, (mask, value) in individual.items():
        path = os.path.join(region_dir, f"{kind}_flag{number}.fits")
        data = np.where(mask, value, 0).astype(_flag_dtype(np.array([value])))
        write_fits(fits.HDUList([fits.PrimaryHDU(data, header=header)]), path)
    return summary

