"""From a star catalogue to a ``.psf`` file and a PSFEx-like ``psfex_cat`` catalogue."""

import numpy as np
from astropy.io import fits

from shapepipe.modules.psf_model.fit import fit_psf
from shapepipe.modules.psfex.config import get_column, read_psfex_config
from shapepipe.modules.psfex.dotpsf import write_psf
from shapepipe.utils.ldac import read_ldac, write_ldac

#: Defaults, named and meaning as in PSFEx's configuration.
DEFAULTS = {
    "PSF_SIZE": None,  # VIGNET size
    "PSF_SAMPLING": 1.0,
    "PSF_ACCURACY": 0.01,
    "CENTER_KEYS": ["XWIN_IMAGE", "YWIN_IMAGE"],
    "PHOTFLUX_KEY": "FLUX_APER(1)",
    "PSFVAR_KEYS": ["XWIN_IMAGE", "YWIN_IMAGE"],
    "PSFVAR_GROUPS": [1, 1],
    "PSFVAR_DEGREES": [2],
    "SAMPLE_MINSN": 20.0,
}

#: Degree selection (not a PSFEx option): ``PRESS`` keeps, among PSFVAR_DEGREES and every
#: lower degree, the one that best predicts each star's shape from the others
#: (:func:`shapepipe.modules.psf_model.fit.press_chi2`); ``NONE`` uses PSFVAR_DEGREES.
DEGREE_SELECTION_DEFAULT = "PRESS"
DEGREE_SELECTIONS = ("PRESS", "NONE")


def options_from_psfex_file(path):
    """The options of :data:`DEFAULTS` found in a ``.psfex`` file (others ignored).

    ``PSF_SAMPLING 0`` (PSFEx's automatic choice) becomes 1.0: the built-in model does not
    choose a super-resolution by itself.
    """
    raw = read_psfex_config(path)
    opts = {}
    try:
        if "PSF_SIZE" in raw:
            opts["PSF_SIZE"] = [int(v) for v in raw["PSF_SIZE"]][:2]
        if "PSF_SAMPLING" in raw:
            opts["PSF_SAMPLING"] = float(raw["PSF_SAMPLING"][0]) or 1.0
        if "PSF_ACCURACY" in raw:
            opts["PSF_ACCURACY"] = float(raw["PSF_ACCURACY"][0])
        for key in ("CENTER_KEYS", "PSFVAR_KEYS"):
            if key in raw:
                opts[key] = list(raw[key])
        if "PHOTFLUX_KEY" in raw:
            opts["PHOTFLUX_KEY"] = raw["PHOTFLUX_KEY"][0]
        for key in ("PSFVAR_GROUPS", "PSFVAR_DEGREES"):
            if key in raw:
                opts[key] = [int(v) for v in raw[key]]
        if "SAMPLE_MINSN" in raw:
            opts["SAMPLE_MINSN"] = float(raw["SAMPLE_MINSN"][0])
    except (ValueError, IndexError) as err:
        raise ValueError(f"{path}: bad value ({err})") from None
    return opts


def build_psf_model(catalogue_path, psf_path, psfex_cat_path=None, options=None, log=None):
    """Fit the built-in PSF model to the stars of a FITS_LDAC catalogue.

    Parameters
    ----------
    catalogue_path : str
        Star catalogue (LDAC_OBJECTS with VIGNET and the CENTER/PSFVAR/PHOTFLUX columns).
    psf_path : str
        Output ``.psf`` file.
    psfex_cat_path : str, optional
        Output catalogue in the layout of PSFEx's ``OUTCAT`` (SOURCE_NUMBER, FLAGS_PSF,
        DELTAX/Y_IMAGE, NORM_PSF, CHI2_PSF...), read by psfex_interp's VALIDATION mode.
    options : dict, optional
        Overrides of :data:`DEFAULTS`, plus ``CHI2_CLIP`` (n MAD), ``GAIN``,
        ``DEGREE_SELECTION`` (``PRESS`` or ``NONE``) and ``DEGREE_MIN`` (lowest degree tried).
    log : logging.Logger, optional
        Where to report.

    Returns
    -------
    dict
        ``loaded``, ``accepted``, ``chi2``, ``fwhm``.
    """
    opts = dict(DEFAULTS)
    opts.update({k: v for k, v in (options or {}).items() if v is not None})
    data, header = read_ldac(catalogue_path)
    if "VIGNET" not in data.dtype.names:
        raise KeyError(f"{catalogue_path}: no VIGNET column (the star stamps)")
    if len(opts["CENTER_KEYS"]) != 2:
        raise ValueError(f"CENTER_KEYS must name 2 columns, got {opts['CENTER_KEYS']}")
    if len(opts["PSFVAR_GROUPS"]) != len(opts["PSFVAR_KEYS"]):
        raise ValueError(
            f"PSFVAR_GROUPS {opts['PSFVAR_GROUPS']} must have one group per PSFVAR_KEYS "
            f"entry {opts['PSFVAR_KEYS']}"
        )
    n_groups = max(opts["PSFVAR_GROUPS"]) if opts["PSFVAR_GROUPS"] else 0
    if len(opts["PSFVAR_DEGREES"]) != n_groups:
        raise ValueError(
            f"PSFVAR_DEGREES {opts['PSFVAR_DEGREES']} must have one degree per group "
            f"(groups {opts['PSFVAR_GROUPS']})"
        )
    selection = str(opts.get("DEGREE_SELECTION") or DEGREE_SELECTION_DEFAULT).upper()
    if int(opts.get("DEGREE_MIN", 1)) < 0:
        raise ValueError(f"DEGREE_MIN = {opts['DEGREE_MIN']}: expected a degree >= 0")
    if selection not in DEGREE_SELECTIONS:
        raise ValueError(f"DEGREE_SELECTION = {opts.get('DEGREE_SELECTION')!r}: expected one of "
                         f"{', '.join(DEGREE_SELECTIONS)}")
    src = catalogue_path
    centers = np.stack([get_column(data, k, src) for k in opts["CENTER_KEYS"]], axis=1)
    context = np.stack([get_column(data, k, src) for k in opts["PSFVAR_KEYS"]], axis=1)
    try:
        flux = get_column(data, opts["PHOTFLUX_KEY"], src)
    except KeyError:
        flux = None
    snr = data["SNR_WIN"] if "SNR_WIN" in data.dtype.names else None
    vignets = np.asarray(data["VIGNET"], dtype=np.float64)
    if vignets.ndim != 3:
        raise ValueError(f"{catalogue_path}: VIGNET must be 2-d stamps, got shape "
                         f"{vignets.shape[1:]}")
    gain = opts.get("GAIN")
    if gain is None:
        gain = float(header.get("SEXGAIN", header.get("GAIN", 0.0)) or 0.0)
    psf_size = opts["PSF_SIZE"]
    if psf_size is not None and len(psf_size) == 1:
        psf_size = [psf_size[0], psf_size[0]]
    if len(data) == 0:
        raise ValueError(f"{catalogue_path}: no stars")
    try:
        result = fit_psf(
            vignets, centers, context, flux_guess=flux, snr=snr, psf_size=psf_size,
            samp=float(opts["PSF_SAMPLING"]), groups=opts["PSFVAR_GROUPS"],
            degrees=opts["PSFVAR_DEGREES"], polnames=opts["PSFVAR_KEYS"],
            min_sn=float(opts["SAMPLE_MINSN"]), accuracy=float(opts["PSF_ACCURACY"]),
            gain=gain, clip_nsigma=float(opts.get("CHI2_CLIP", 4.0)),
            degree_selection=selection, min_degree=int(opts.get("DEGREE_MIN", 1)),
        )
    except ValueError as err:
        raise ValueError(f"{catalogue_path}: {err}") from None
    write_psf(psf_path, result.model, accepted=int(result.accepted.sum()),
              loaded=int(result.loaded.sum()), chi2=result.chi2_total, fwhm=result.fwhm,
              extra_header={"SOFTNAME": ("shapepipe-psf_model", "Software that made the model"),
                            "DEGSEL": (selection, "Degree selection (PRESS or NONE)"),
                            "POLDEGCF": (",".join(str(d) for d in opts["PSFVAR_DEGREES"]),
                                         "Configured PSFVAR_DEGREES")})
    if psfex_cat_path:
        write_psfex_cat(psfex_cat_path, header, data, result, centers, context)
    degrees = ",".join(str(d) for d in result.degrees)
    summary = {"loaded": int(result.loaded.sum()), "accepted": int(result.accepted.sum()),
               "chi2": result.chi2_total, "fwhm": result.fwhm, "degrees": degrees,
               "press": {",".join(str(d) for d in k): round(v, 4)
                         for k, v in result.press.items()}}
    if log is not None:
        log.info("psf_model %s: %d/%d stars accepted, chi2 %.3f, FWHM %.3f pix, degree %s "
                 "(selection %s, PRESS %s)", catalogue_path, summary["accepted"], len(data),
                 summary["chi2"], summary["fwhm"], degrees, selection, summary["press"] or "-")
    return summary


def write_psfex_cat(path, header, data, result, centers, context):
    """Per-star diagnostics in the layout of PSFEx's output catalogue.

    ``SOURCE_NUMBER`` is the 1-based row of the star in the input catalogue, ``FLAGS_PSF``
    is 0 for stars used in the model, 1 for rejected ones and 2 for stars not loaded
    (S/N, masked pixels).
    """
    n = len(data)
    flags = np.where(result.accepted, 0, np.where(result.loaded, 1, 2)).astype(np.int32)
    table = np.zeros(n, dtype=[
        ("SOURCE_NUMBER", ">i4"), ("EXTENSION", ">i2"), ("CATALOG_NUMBER", ">i4"),
        ("FLAGS_PSF", ">i4"), ("VECTOR_CONTEXT", ">f8", (context.shape[1],)),
        ("X_IMAGE", ">f8"), ("Y_IMAGE", ">f8"), ("DELTAX_IMAGE", ">f4"), ("DELTAY_IMAGE", ">f4"),
        ("NORM_PSF", ">f4"), ("CHI2_PSF", ">f4"),
    ])
    table["SOURCE_NUMBER"] = np.arange(1, n + 1)
    table["EXTENSION"] = 1
    table["CATALOG_NUMBER"] = 1
    table["FLAGS_PSF"] = flags
    table["VECTOR_CONTEXT"] = context
    table["X_IMAGE"] = centers[:, 0]
    table["Y_IMAGE"] = centers[:, 1]
    table["DELTAX_IMAGE"] = result.offsets[:, 0]
    table["DELTAY_IMAGE"] = result.offsets[:, 1]
    table["NORM_PSF"] = np.nan_to_num(result.flux, nan=0.0)
    table["CHI2_PSF"] = np.nan_to_num(result.chi2, nan=-1.0)
    out_header = fits.Header()
    for key in ("NAXIS1", "NAXIS2"):
        if key in header:
            out_header[key] = header[key]
    write_ldac(path, out_header, table)
