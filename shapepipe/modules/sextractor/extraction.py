"""One SExtractor-like run: read the images, detect, measure, write the FITS_LDAC catalogue.

Usable without the pipeline::

    from shapepipe.modules.sextractor import run_sextractor
    run_sextractor("image.fits", "sexcat.fits", "default.sex",
                   param_file="default.param", conv_file="default.conv",
                   weight_path="weight.fits", flag_path="flag.fits")
"""

import os
import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from shapepipe.modules.sextractor import deblend_random
from shapepipe.modules.sextractor.catalog import write_catalog
from shapepipe.modules.sextractor.columns import COLUMNS, NUMPY_TYPES
from shapepipe.modules.sextractor.config_files import SexConfigError, parse_conv, parse_param
from shapepipe.modules.sextractor.measure import (
    Image,
    MeasuredSources,
    check_params,
    compute_columns,
)
from shapepipe.modules.sextractor.settings import SexSettings
from shapepipe.utils.atomic import write_fits


def read_image(path, what="image"):
    """Read the first HDU with data of a FITS file (header, array).

    Parameters
    ----------
    path : str
        FITS file (compressed HDUs are read transparently).
    what : str
        Role of the file, used in error messages.

    Returns
    -------
    header : astropy.io.fits.Header
    data : numpy.ndarray
    """
    if not os.path.isfile(path):
        raise SexConfigError(f"{what} file {path} not found")
    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            if hdu.data is not None and getattr(hdu, "is_image", True) and hdu.data.ndim == 2:
                return hdu.header.copy(), _native_inplace(np.asarray(hdu.data))
    raise SexConfigError(f"{what} file {path}: no 2-d image HDU")


def image_pixels(path):
    """Number of pixels of the image :func:`read_image` reads, from the headers only.

    Returns 0 when the file cannot be read or has no 2-d image HDU (:func:`read_image`
    then says what is wrong).
    """
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                shape = hdu.shape if getattr(hdu, "is_image", True) else ()
                if len(shape) == 2 and shape[0] > 0 and shape[1] > 0:
                    return int(shape[0]) * int(shape[1])
    except (OSError, ValueError, TypeError):
        pass
    return 0


def _native_inplace(array):
    """The array in native byte order, swapped in place when it is ours to change.

    FITS pixels are big-endian; read without memory mapping, the array is a private
    buffer, so swapping it in place spares the measurement a full-image copy (two 38 MB
    arrays per CCD for the image and the weight).
    """
    if array.dtype.isnative or not array.flags.writeable or not array.flags.c_contiguous:
        return array
    array.byteswap(inplace=True)
    return array.view(array.dtype.newbyteorder("="))


def _wcs(header):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header)
        except Exception:  # noqa: BLE001 - a broken WCS only matters if world columns asked
            return None
    return wcs if wcs.has_celestial else None


def _table_hdu(columns):
    """Build the objects table as a big-endian record array, and its (empty) table HDU.

    FITS tables are big-endian: filling a big-endian array once avoids astropy's column
    copy and the byte swap at write time (the VIGNET column alone is ~35 MB per CCD).
    """
    n = len(columns[0][1]) if columns else 0
    fields = []
    for name, values, shape in columns:
        code = COLUMNS[name][0]
        values = np.asarray(values)
        dtype = ">" + NUMPY_TYPES[code]
        if name == "VIGNET":
            fields.append((name, dtype, tuple(shape)))
        elif values.ndim == 2:
            fields.append((name, dtype, (values.shape[1],)))
        else:
            fields.append((name, dtype))
    table = np.empty(n, dtype=fields)
    for name, values, _ in columns:
        table[name] = values
    # The header comes from an empty table of the same layout: building astropy's table
    # object around the rows (VIGNET alone is ~35 MB per CCD) would copy them twice; the
    # rows are written as they are (see catalog.write_catalog).
    hdu = fits.BinTableHDU(data=table[:0])
    for i, (name, _, shape) in enumerate(columns, start=1):
        _, unit, disp, comment = COLUMNS[name]
        hdu.header[f"TTYPE{i}"] = (name, comment)
        if unit:
            hdu.header[f"TUNIT{i}"] = unit
        hdu.header[f"TDISP{i}"] = disp
        if name == "VIGNET":
            hdu.header[f"TDIM{i}"] = f"({shape[1]}, {shape[0]})"
    return hdu, table


def _imhead(header, image, settings):
    head = header.copy()
    for key in ("XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "ZIMAGE", "ZBITPIX", "ZNAXIS",
                "ZNAXIS1", "ZNAXIS2", "ZTILE1", "ZTILE2", "ZCMPTYPE"):
        if key in head:
            del head[key]
    # Keep what SExtractor adds for downstream tools (PSFEx reads SEXBKDEV etc.).
    head["SEXBKGND"] = (image.back_level, "Median background level (ADU)")
    head["SEXBKDEV"] = (image.backsig, "Median background RMS (ADU)")
    head["SEXTHLD"] = (settings.detect_thresh * (image.backsig if settings.thresh_type ==
                                                  "RELATIVE" else 1.0),
                       "Extraction threshold (ADU)")
    head["SEXGAIN"] = (image.gain, "Gain used (e-/ADU)")
    head["SEXSATLV"] = (image.satur, "Saturation level used (ADU)")
    head["SEXMGZPT"] = (settings.mag_zeropoint, "Zero-point used for magnitudes")
    head["SEXAPED1"] = (settings.phot_apertures[0], "Aperture diameter #1 (pixels)")
    return head


def _fits10_keys(image_path, sex_file, settings, image, cat, nparams):
    """Extraction keywords of a FITS_1.0 primary header (a subset of SExtractor's)."""
    s = settings
    return {
        "FITSFILE": (os.path.basename(image_path), "File name of the analysed image"),
        "SEXIMASX": (image.shape[1], "IMAGE WIDTH (PIXELS)"),
        "SEXIMASY": (image.shape[0], "IMAGE HEIGHT (PIXELS)"),
        "SEXPIXS": (s.pixel_scale, "PIXEL SCALE (ARCSEC)"),
        "SEXSFWHM": (s.seeing_fwhm, "SEEING FWHM (ARCSEC)"),
        "SEXGAIN": (image.gain, "GAIN (IN E- PER ADU)"),
        "SEXBKGND": (image.back_level, "MEDIAN BACKGROUND (ADU)"),
        "SEXBKDEV": (image.backsig, "MEDIAN RMS (ADU)"),
        "SEXCONFF": (os.path.basename(sex_file), "CONFIGURATION FILENAME"),
        "SEXTHLDT": ("SIGMA" if s.thresh_type == "RELATIVE" else "ADU", "THRESHOLD TYPE"),
        "SEXTHLD": (s.detect_thresh, "THRESHOLD"),
        "SEXMINAR": (s.detect_minarea, "EXTRACTION MINIMUM AREA (PIXELS)"),
        "SEXCONV": (bool(s.filter), "CONVOLUTION FLAG"),
        "SEXDBLDN": (s.deblend_nthresh, "NUMBER OF SUB-THRESHOLDS"),
        "SEXDBLDC": (s.deblend_mincont, "CONTRAST PARAMETER"),
        "SEXCLN": (bool(s.clean), "CLEANING FLAG"),
        "SEXCLNPA": (s.clean_param, "CLEANING PARAMETER"),
        "SEXAPERD": (s.phot_apertures[0], "1ST APERTURE DIAMETER (PIXELS)"),
        "SEXAPEK1": (s.phot_autoparams[0], "KRON PARAMETER"),
        "SEXAPEK3": (s.phot_autoparams[1], "KRON MINIMUM RADIUS"),
        "SEXSATLV": (image.satur, "SATURATION LEVEL (ADU)"),
        "SEXMGZPT": (s.mag_zeropoint, "MAGNITUDE ZERO-POINT"),
        "SEXBKGSX": (s.back_size[0], "BACKGROUND MESH WIDTH (PIXELS)"),
        "SEXBKGSY": (s.back_size[1], "BACKGROUND MESH HEIGHT (PIXELS)"),
        "SEXBKGFX": (s.back_filtersize[0], "BACKGROUND FILTER WIDTH"),
        "SEXBKGFY": (s.back_filtersize[1], "BACKGROUND FILTER HEIGHT"),
        "SEXPBKGT": (s.backphoto_type, "PHOTOM BACKGROUND TYPE"),
        "SEXNFIN": (cat.n, "NB OF FINAL EXTRACTED OBJECTS"),
        "SEXNPARA": (nparams, "NB OF PARAMETERS PER OBJECT"),
    }


def _check_image(kind, cat, image, kernel):
    if kind == "BACKGROUND":
        return image.back
    if kind == "BACKGROUND_RMS":
        rms = np.sqrt(image.var)
        return np.broadcast_to(rms, image.shape).astype(np.float32)
    if kind == "-BACKGROUND":
        return image.sub
    if kind == "SEGMENTATION":
        return cat.numbered_segmentation()
    if kind == "OBJECTS":
        return np.where(cat.numbered_segmentation() > 0, image.sub, np.float32(0))
    if kind == "-OBJECTS":
        return np.where(cat.numbered_segmentation() > 0, np.float32(0), image.sub)
    if kind == "FILTERED":
        if kernel is None:
            return image.sub
        from scipy.ndimage import convolve

        return convolve(image.sub, kernel[::-1, ::-1], mode="constant")
    if kind == "APERTURES":
        import sep

        out = image.sub.copy()
        auto = cat.auto()
        kron = np.where(auto["kron"] > 0, auto["kron"], cat.s.phot_autoparams[1])
        outer = np.zeros(image.shape, dtype=bool)
        inner = np.zeros(image.shape, dtype=bool)
        sep.mask_ellipse(outer, cat.x, cat.y, cat.a, cat.b, cat.theta, r=kron)
        scale = np.maximum(kron - 1.0 / np.maximum(cat.b, 1e-3), 0)
        sep.mask_ellipse(inner, cat.x, cat.y, cat.a, cat.b, cat.theta, r=scale)
        ring_value = np.float32(np.nanmax(image.sub) if image.sub.size else 1.0)
        out[outer & ~inner] = ring_value
        return out
    raise SexConfigError(f"CHECKIMAGE_TYPE {kind} is not supported")  # pragma: no cover


def run_sextractor(
    image_path,
    output_path,
    sex_file,
    param_file=None,
    conv_file=None,
    weight_path=None,
    flag_path=None,
    detection_path=None,
    detection_weight_path=None,
    overrides=None,
    checkimages=None,
    deblend_random_mode=deblend_random.SEXTRACTOR,
):
    """Detect and measure sources on one image, writing a FITS_LDAC catalogue.

    Parameters
    ----------
    image_path : str
        Measurement image.
    output_path : str
        Catalogue to write (atomically).
    sex_file : str
        SExtractor ``.sex`` configuration file.
    param_file, conv_file : str, optional
        ``.param`` and ``.conv`` files; default: PARAMETERS_NAME / FILTER_NAME of the
        ``.sex`` file (relative to the current directory, as SExtractor does).
    weight_path, flag_path : str, optional
        Weight map (interpreted with WEIGHT_TYPE) and integer flag image.
    detection_path, detection_weight_path : str, optional
        Separate detection image (dual-image mode) and its weight map (default: the
        measurement weight map).
    overrides : dict, optional
        ``.sex`` keys overriding the file (like SExtractor's ``-KEY value`` options).
    checkimages : list of (str, str), optional
        (CHECKIMAGE_TYPE, output path) pairs; default: CHECKIMAGE_TYPE/NAME of the settings.
    deblend_random_mode : {"SEXTRACTOR", "SEP"}
        Random numbers that hand out the pixels shared by blended objects: ``SEXTRACTOR``
        (default) glibc's ``rand()`` from ``srand(1)``, as one source-extractor run on this
        file, so blends get SExtractor's footprints; ``SEP``: sep's own generator. Where
        ``SEXTRACTOR`` is impossible (see :mod:`.deblend_random`) sep's is used, a
        :class:`~.deblend_random.DeblendRandomWarning` is issued (once per process) and
        ``deblend_random_note`` says why.

    Returns
    -------
    dict
        ``n_objects``, ``background``, ``rms``, ``checkimages`` (paths written),
        ``deblend_random`` (the generator used), ``deblend_random_note`` (None, or why
        SExtractor's generator could not be used).
    """
    if str(deblend_random_mode).upper() not in deblend_random.MODES:
        raise SexConfigError(f"deblend random mode {deblend_random_mode!r}: expected one of "
                             f"{', '.join(deblend_random.MODES)}")
    settings = SexSettings.from_file(sex_file, overrides)
    param_file = param_file or settings.parameters_name
    if not param_file:
        raise SexConfigError(f"{sex_file}: no PARAMETERS_NAME and no parameter file given")
    params = parse_param(param_file)
    try:
        check_params(params, settings)
    except SexConfigError as exc:
        raise SexConfigError(f"{param_file}: {exc}") from None
    kernel = None
    if settings.filter:
        conv_file = conv_file or settings.filter_name
        if not conv_file:
            raise SexConfigError(f"{sex_file}: FILTER Y but no FILTER_NAME / conv file given")
        kernel = parse_conv(conv_file, allow_nonorm=False)

    header, data = read_image(image_path)
    weight = read_image(weight_path, "weight")[1] if weight_path else None
    flag = read_image(flag_path, "flag")[1] if flag_path else None
    if flag is not None:
        if flag.shape != data.shape:
            raise SexConfigError(f"flag image {flag_path} shape {flag.shape} differs from "
                                 f"image shape {data.shape}")
        if not np.issubdtype(flag.dtype, np.integer):
            raise SexConfigError(f"flag image {flag_path}: expected integer pixels, got "
                                 f"{flag.dtype}")
    meas = Image(data, settings, weight, header, owned=True)
    if detection_path:
        dheader, ddata = read_image(detection_path, "detection image")
        if ddata.shape != meas.shape:
            raise SexConfigError(f"detection image {detection_path} shape {ddata.shape} "
                                 f"differs from the measurement image {meas.shape}")
        dweight = read_image(detection_weight_path, "detection weight")[1] \
            if detection_weight_path else weight
        det = Image(ddata, settings, dweight, dheader, owned=True)
        del ddata, dweight
    else:
        det = meas
    # The images hold what they need: the pixels as read are no longer kept alive (each
    # is a full-image array, and a lower peak is fewer page faults).
    del data, weight
    wcs = _wcs(header)
    world = [name for name, _ in params if "WORLD" in name or "J2000" in name]
    if world and wcs is None:
        raise SexConfigError(f"{image_path}: no celestial WCS in the header, but the parameter "
                             f"file asks for {', '.join(world)}")
    # Right before sep's extraction: SExtractor's generator from its start state. This
    # reader measures one image HDU per call (the first one), and source-extractor starts
    # each file, and so its first extension, at srand(1); its later extensions continue
    # the sequence, which a per-extension call cannot reproduce.
    used_random, random_note = deblend_random.prepare(deblend_random_mode)
    if random_note is not None:
        deblend_random.warn_once(random_note)
    cat = MeasuredSources(meas, det, settings, kernel, flag=flag, header=header, wcs=wcs)
    columns = compute_columns(cat, params)
    hdu, table = _table_hdu(columns)
    write_catalog(output_path, settings.catalog_type, _imhead(header, meas, settings),
                  hdu, table, _fits10_keys(image_path, sex_file, settings, meas, cat,
                                                    len(params)))

    if checkimages is None:
        checkimages = list(zip(settings.check_types, settings.check_names))
    written = []
    for kind, path in checkimages:
        kind = kind.upper()
        if kind == "NONE":
            continue
        if not path:
            raise SexConfigError(f"CHECKIMAGE_TYPE {kind}: no output name")
        array = _check_image(kind, cat, meas, kernel)
        hdu = fits.PrimaryHDU(data=np.ascontiguousarray(array), header=_wcs_header(header))
        write_fits(fits.HDUList([hdu]), path)
        written.append(path)
    return {"n_objects": cat.n, "background": meas.back_level, "rms": meas.backsig,
            "checkimages": written, "deblend_random": used_random,
            "deblend_random_note": random_note}


def _wcs_header(header):
    out = fits.Header()
    skip = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "XTENSION", "PCOUNT",
            "GCOUNT", "BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM", "EXTNAME"}
    for card in header.cards:
        if card.keyword not in skip and not card.keyword.startswith("Z") and card.keyword:
            out.append(card, end=True)
    return out
