"""Typed settings from a ``.sex`` file, with SExtractor's defaults and validation.

Only the keys that change the detection or the measurements are interpreted; keys that only
concern SExtractor's own run (memory, verbosity, XML, threads, association...) are accepted
and ignored. A key SExtractor does not know, or a value this implementation cannot honour,
is an error naming the key, the value and what is accepted.
"""

from dataclasses import dataclass, field

from shapepipe.modules.sextractor.config_files import SexConfigError, parse_sex

# Keys accepted and ignored: they do not change the catalogue values.
IGNORED_KEYS = {
    "CATALOG_NAME", "PARAMETERS_NAME", "FILTER_NAME", "FILTER_THRESH", "MEMORY_OBJSTACK",
    "MEMORY_PIXSTACK", "MEMORY_BUFSIZE", "VERBOSE_TYPE", "HEADER_SUFFIX", "WRITE_XML",
    "XML_NAME", "XSL_URL", "NTHREADS", "FITS_UNSIGNED", "ASSOC_NAME", "ASSOC_DATA",
    "ASSOC_PARAMS", "ASSOC_RADIUS", "ASSOC_TYPE",
    "ASSOCSELEC_TYPE", "ASSOCCOORD_TYPE", "MAG_GAMMA",
    "PHOT_PETROPARAMS", "PSF_NAME", "PSF_NMAX", "PATTERN_TYPE", "SOM_NAME", "WEIGHT_IMAGE",
    "FLAG_IMAGE", "CHECKIMAGE_NAME", "BACKPHOTO_THICK", "WEIGHT_GAIN", "DETECT_TYPE",
    "CATALOG_TYPE", "CHECKIMAGE_TYPE", "PSFDISPLAY_TYPE", "GAIN_KEY", "SATUR_KEY",
    "PHOT_AUTOAPERS", "BACK_FILTTHRESH", "RESCALE_WEIGHTS", "STAMP_IMAGE",
}

CHECK_TYPES = (
    "NONE", "BACKGROUND", "BACKGROUND_RMS", "-BACKGROUND", "FILTERED", "OBJECTS", "-OBJECTS",
    "SEGMENTATION", "APERTURES",
)


def _bool(key, tokens):
    text = (tokens[0] if tokens else "").upper()
    if text in ("Y", "YES", "T", "TRUE", "1"):
        return True
    if text in ("N", "NO", "F", "FALSE", "0"):
        return False
    raise SexConfigError(f"{key} = {' '.join(tokens)!r}: expected Y or N")


def _floats(key, tokens, n_min=1, n_max=None):
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise SexConfigError(
            f"{key} = {', '.join(tokens)!r}: expected number(s) (expressions such as "
            "'@...' templates must be substituted before the run)"
        ) from None
    if len(values) < n_min or (n_max is not None and len(values) > n_max):
        raise SexConfigError(
            f"{key} = {', '.join(tokens)!r}: expected between {n_min} and {n_max or 'any'} "
            "values"
        )
    return values


def _choice(key, tokens, choices):
    text = (tokens[0] if tokens else "").upper()
    if text not in choices:
        raise SexConfigError(
            f"{key} = {' '.join(tokens)!r}: supported values are {', '.join(choices)}"
        )
    return text


@dataclass
class SexSettings:
    """The detection and measurement settings of one run (SExtractor defaults)."""

    detect_minarea: int = 5
    detect_maxarea: int = 0
    thresh_type: str = "RELATIVE"
    detect_thresh: float = 1.5
    analysis_thresh: float = 1.5
    filter: bool = True
    deblend_nthresh: int = 32
    deblend_mincont: float = 0.005
    clean: bool = True
    clean_param: float = 1.0
    mask_type: str = "CORRECT"
    weight_type: str = "NONE"
    weight_thresh: float | None = None
    rescale_weights: bool = True
    flag_type: str = "OR"
    phot_apertures: list = field(default_factory=lambda: [5.0])
    phot_autoparams: tuple = (2.5, 3.5)
    phot_fluxfrac: list = field(default_factory=lambda: [0.5])
    satur_level: float = 50000.0
    satur_key: str = "SATURATE"
    mag_zeropoint: float = 0.0
    gain: float = 0.0
    gain_key: str = "GAIN"
    pixel_scale: float = 1.0
    back_type: str = "AUTO"
    back_value: float = 0.0
    back_size: tuple = (64, 64)
    back_filtersize: tuple = (3, 3)
    back_filtthresh: float = 0.0
    backphoto_type: str = "GLOBAL"
    interp_type: str = "ALL"
    interp_maxxlag: int = 16
    interp_maxylag: int = 16
    catalog_type: str = "FITS_LDAC"
    seeing_fwhm: float = 0.0
    starnnw_name: str = ""
    check_types: list = field(default_factory=list)
    check_names: list = field(default_factory=list)
    filter_name: str = ""
    parameters_name: str = ""

    @classmethod
    def from_file(cls, path, overrides=None):
        """Read a ``.sex`` file, then apply command-line-like overrides.

        Parameters
        ----------
        path : str
            The ``.sex`` file.
        overrides : dict, optional
            Key -> value (str, number or list), as SExtractor's ``-KEY value`` options.

        Returns
        -------
        SexSettings
        """
        raw = parse_sex(path)
        for key, value in (overrides or {}).items():
            if isinstance(value, (list, tuple)):
                tokens = [str(v) for v in value]
            else:
                tokens = [t for t in str(value).replace(",", " ").split() if t]
            raw[key.upper()] = tokens
        try:
            return cls.from_dict(raw)
        except SexConfigError as exc:
            raise SexConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, raw):
        """Build settings from an upper-case key -> token list mapping (see ``from_file``)."""
        s = cls()
        for key, tokens in raw.items():
            handler = _HANDLERS.get(key)
            if handler is not None:
                handler(s, key, tokens)
            elif key not in IGNORED_KEYS:
                raise SexConfigError(f"unknown configuration key {key}")
        # Keys whose value matters even though they are otherwise only bookkeeping.
        if "DETECT_TYPE" in raw and _choice("DETECT_TYPE", raw["DETECT_TYPE"], ("CCD", "PHOTO")) \
                != "CCD":
            raise SexConfigError("DETECT_TYPE = PHOTO: only CCD (linear) data are supported")
        if "CATALOG_TYPE" in raw:
            s.catalog_type = _choice("CATALOG_TYPE", raw["CATALOG_TYPE"],
                                     ("FITS_LDAC", "FITS_1.0", "ASCII_HEAD", "ASCII"))
        if "RESCALE_WEIGHTS" in raw:
            s.rescale_weights = _bool("RESCALE_WEIGHTS", raw["RESCALE_WEIGHTS"])
        if "GAIN_KEY" in raw and raw["GAIN_KEY"]:
            s.gain_key = raw["GAIN_KEY"][0]
        if "SATUR_KEY" in raw and raw["SATUR_KEY"]:
            s.satur_key = raw["SATUR_KEY"][0]
        if "FILTER_NAME" in raw and raw["FILTER_NAME"]:
            s.filter_name = raw["FILTER_NAME"][0]
        if "PARAMETERS_NAME" in raw and raw["PARAMETERS_NAME"]:
            s.parameters_name = raw["PARAMETERS_NAME"][0]
        if "BACK_FILTTHRESH" in raw and raw["BACK_FILTTHRESH"]:
            s.back_filtthresh = _floats("BACK_FILTTHRESH", raw["BACK_FILTTHRESH"], 1, 1)[0]
        if "PHOT_AUTOAPERS" in raw and raw["PHOT_AUTOAPERS"]:
            if any(v != 0.0 for v in _floats("PHOT_AUTOAPERS", raw["PHOT_AUTOAPERS"], 1, 2)):
                raise SexConfigError("PHOT_AUTOAPERS: only 0.0,0.0 (no minimum aperture) is "
                                     "supported")
        types = [t.upper() for t in raw.get("CHECKIMAGE_TYPE", [])]
        names = list(raw.get("CHECKIMAGE_NAME", []))
        for check in types:
            if check not in CHECK_TYPES:
                raise SexConfigError(
                    f"CHECKIMAGE_TYPE {check}: supported types are {', '.join(CHECK_TYPES)}"
                )
        types_names = [(t, n) for t, n in zip(types, names + [""] * len(types)) if t != "NONE"]
        s.check_types = [t for t, _ in types_names]
        s.check_names = [n for _, n in types_names]
        if s.analysis_thresh <= 0 or s.detect_thresh <= 0:
            raise SexConfigError("DETECT_THRESH and ANALYSIS_THRESH must be positive")
        return s


def _set(attr, conv):
    def handler(s, key, tokens):
        setattr(s, attr, conv(key, tokens))

    return handler


def _one_float(key, tokens):
    return _floats(key, tokens, 1, 2)[0]


def _one_int(key, tokens):
    value = _floats(key, tokens, 1, 1)[0]
    if value != int(value):
        raise SexConfigError(f"{key} = {tokens[0]!r}: expected an integer")
    return int(value)


def _pair_int(key, tokens):
    values = _floats(key, tokens, 1, 2)
    if any(v != int(v) or v < 1 for v in values):
        raise SexConfigError(f"{key} = {', '.join(tokens)!r}: expected positive integer(s)")
    return (int(values[0]), int(values[-1]))


def _weight_thresh(key, tokens):
    if not tokens:
        return None
    return _floats(key, tokens, 1, 2)[0]


def _backphoto(key, tokens):
    value = _choice(key, tokens, ("GLOBAL", "LOCAL"))
    if value == "LOCAL":
        raise SexConfigError("BACKPHOTO_TYPE = LOCAL is not supported (use GLOBAL)")
    return value


def _flag_type(key, tokens):
    return _choice(key, tokens, ("OR",))


def _autoparams(key, tokens):
    values = _floats(key, tokens, 2, 2)
    if values[0] <= 0 or values[1] < 0:
        raise SexConfigError(f"{key} = {', '.join(tokens)!r}: expected <Kron_fact> > 0, "
                             "<min_radius> >= 0")
    return tuple(values)


def _positive_list(key, tokens):
    values = _floats(key, tokens, 1)
    if any(v <= 0 for v in values):
        raise SexConfigError(f"{key} = {', '.join(tokens)!r}: expected positive values")
    return values


def _fluxfrac(key, tokens):
    values = _floats(key, tokens, 1)
    if any(not 0 < v <= 1 for v in values):
        raise SexConfigError(f"{key} = {', '.join(tokens)!r}: fractions must be in (0, 1]")
    return values


_HANDLERS = {
    "DETECT_MINAREA": _set("detect_minarea", _one_int),
    "DETECT_MAXAREA": _set("detect_maxarea", _one_int),
    "THRESH_TYPE": _set("thresh_type", lambda k, t: _choice(k, t, ("RELATIVE", "ABSOLUTE"))),
    "DETECT_THRESH": _set("detect_thresh", lambda k, t: _floats(k, t, 1, 1)[0]),
    "ANALYSIS_THRESH": _set("analysis_thresh", lambda k, t: _floats(k, t, 1, 1)[0]),
    "FILTER": _set("filter", _bool),
    "DEBLEND_NTHRESH": _set("deblend_nthresh", _one_int),
    "DEBLEND_MINCONT": _set("deblend_mincont", _one_float),
    "CLEAN": _set("clean", _bool),
    "CLEAN_PARAM": _set("clean_param", _one_float),
    "MASK_TYPE": _set("mask_type", lambda k, t: _choice(k, t, ("NONE", "BLANK", "CORRECT"))),
    "WEIGHT_TYPE": _set(
        "weight_type",
        lambda k, t: _choice(k, t, ("NONE", "BACKGROUND", "MAP_RMS", "MAP_VAR", "MAP_WEIGHT")),
    ),
    "WEIGHT_THRESH": _set("weight_thresh", _weight_thresh),
    "FLAG_TYPE": _set("flag_type", _flag_type),
    "PHOT_APERTURES": _set("phot_apertures", _positive_list),
    "PHOT_AUTOPARAMS": _set("phot_autoparams", _autoparams),
    "PHOT_FLUXFRAC": _set("phot_fluxfrac", _fluxfrac),
    "SATUR_LEVEL": _set("satur_level", _one_float),
    "MAG_ZEROPOINT": _set("mag_zeropoint", _one_float),
    "GAIN": _set("gain", _one_float),
    "PIXEL_SCALE": _set("pixel_scale", _one_float),
    "BACK_TYPE": _set("back_type", lambda k, t: _choice(k, t, ("AUTO", "MANUAL"))),
    "BACK_VALUE": _set("back_value", _one_float),
    "BACK_SIZE": _set("back_size", _pair_int),
    "BACK_FILTERSIZE": _set("back_filtersize", _pair_int),
    "BACKPHOTO_TYPE": _set("backphoto_type", _backphoto),
    "INTERP_TYPE": _set("interp_type", lambda k, t: _choice(k, t, ("NONE", "VAR_ONLY", "ALL"))),
    "INTERP_MAXXLAG": _set("interp_maxxlag", _one_int),
    "INTERP_MAXYLAG": _set("interp_maxylag", _one_int),
    "SEEING_FWHM": _set("seeing_fwhm", _one_float),
    "STARNNW_NAME": _set("starnnw_name", lambda k, t: t[0] if t else ""),
}
