"""The mask configuration file (ShapePipe's ``config.mask`` sections and keys).

Sections and keys read (ShapePipe names kept; all sections optional, a missing ``*_MAKE``
means False):

``[BORDER_PARAMETERS]``  BORDER_MAKE, BORDER_WIDTH (pixels), BORDER_FLAG_VALUE
``[HALO_PARAMETERS]``    HALO_MAKE, HALO_MASKMODEL_PATH, HALO_MAG_LIM, HALO_SCALE_FACTOR,
                         HALO_MAG_PIVOT, HALO_FLAG_VALUE, HALO_REG_FILE
``[SPIKE_PARAMETERS]``   same keys with SPIKE_
``[MESSIER_PARAMETERS]`` MESSIER_MAKE, MESSIER_CAT_PATH, MESSIER_SIZE_PLUS, MESSIER_FLAG_VALUE
``[NGC_PARAMETERS]``     NGC_MAKE, NGC_CAT_PATH, NGC_SIZE_PLUS, NGC_FLAG_VALUE
``[EXTERNAL_FLAG]``      EF_MAKE (default True): OR the input flag image into the output
``[MD_PARAMETERS]``      MD_MAKE, MD_THRESH_FLAG, MD_THRESH_REMOVE, MD_REMOVE,
                         MD_FLAG_VALUE (addition, default 256)
``[OTHER]``              KEEP_REG_FILE, KEEP_INDIVIDUAL_MASK, TEMP_DIRECTORY (ignored)
``[PROGRAM_PATH]``       WW_PATH, WW_CONFIG_FILE, CDSCLIENT_PATH: ignored (no WeightWatcher,
                         no online star query)

``$VAR`` and ``${VAR}`` are expanded in every value. A relative path is looked for from the
current directory first (ShapePipe's rule), then from the directory of the mask config file.
"""

import configparser
import os
import re

_ENV_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


class MaskConfigError(ValueError):
    """A problem in the mask configuration file."""


class MaskConfig:
    """Parsed and validated mask configuration.

    Parameters
    ----------
    path : str
        The mask configuration file.

    Attributes
    ----------
    border : dict or None
        ``{"width": int, "flag": int}`` when BORDER_MAKE.
    halo, spike : dict or None
        ``{"model": path, "mag_lim", "scale_factor", "mag_pivot": float, "flag": int,
        "reg_file": str or None}``.
    messier, ngc : dict or None
        ``{"cat_path": path, "size_plus": float, "flag": int}``.
    external_flag : bool
        Whether an input flag image is OR-ed into the output (EF_MAKE).
    missing_data : dict or None
        ``{"thresh_flag", "thresh_remove": float, "remove": bool, "flag": int}``.
    keep_reg_file, keep_individual_mask : bool
    cdsclient : str or None
        CDSCLIENT_PATH if set (only used to explain why no catalogue is available).
    """

    def __init__(self, path):
        self.path = path
        if not os.path.isfile(path):
            raise MaskConfigError(f"{path}: mask configuration file not found")
        self._parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as handle:
                self._parser.read_file(handle, source=path)
        except configparser.Error as exc:
            raise MaskConfigError(f"{path}: cannot parse: {' '.join(str(exc).split())}") from None
        self.border = self._border()
        self.halo = self._shape("HALO")
        self.spike = self._shape("SPIKE")
        self.messier = self._dso("MESSIER")
        self.ngc = self._dso("NGC")
        self.external_flag = self._bool("EXTERNAL_FLAG", "EF_MAKE", True)
        self.missing_data = self._missing_data()
        self.keep_reg_file = self._bool("OTHER", "KEEP_REG_FILE", False)
        self.keep_individual_mask = self._bool("OTHER", "KEEP_INDIVIDUAL_MASK", False)
        self.cdsclient = self._raw("PROGRAM_PATH", "CDSCLIENT_PATH", None)

    # -- typed access with one-line errors -------------------------------------------------
    def _where(self, section, key, value=None):
        text = f"{self.path} [{section}] {key}"
        return text if value is None else f"{text} = {value!r}"

    def _raw(self, section, key, default=configparser._UNSET):
        if self._parser.has_option(section, key):
            value = self._parser.get(section, key)

            def repl(match):
                name = match.group(1) or match.group(2)
                if name not in os.environ:
                    raise MaskConfigError(
                        f"{self._where(section, key, value)}: environment variable ${name} "
                        "is not set"
                    )
                return os.environ[name]

            return _ENV_RE.sub(repl, value).strip()
        if default is configparser._UNSET:
            raise MaskConfigError(f"{self._where(section, key)}: required key is missing")
        return default

    def _bool(self, section, key, default=configparser._UNSET):
        value = self._raw(section, key, default)
        if isinstance(value, bool):
            return value
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise MaskConfigError(f"{self._where(section, key, value)}: expected True or False")

    def _number(self, section, key, kind, default=configparser._UNSET, minimum=None):
        value = self._raw(section, key, default)
        if not isinstance(value, str):
            return value
        try:
            number = kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise MaskConfigError(f"{self._where(section, key, value)}: expected {what}") from None
        if minimum is not None and number < minimum:
            raise MaskConfigError(
                f"{self._where(section, key, value)}: expected a value >= {minimum}"
            )
        return number

    def _flag(self, section, key, default=configparser._UNSET):
        value = self._number(section, key, int, default)
        if not 0 < value < 2**31:
            raise MaskConfigError(
                f"{self._where(section, key, value)}: expected a positive flag value "
                "(a power of two, below 2**31)"
            )
        return value

    def _file(self, section, key):
        value = self._raw(section, key)
        path = os.path.expanduser(value)
        if not os.path.isabs(path) and not os.path.exists(path):
            beside = os.path.join(os.path.dirname(os.path.abspath(self.path)), path)
            if os.path.exists(beside):
                path = beside
        if not os.path.isfile(path):
            raise MaskConfigError(f"{self._where(section, key, value)}: file not found")
        return path

    # -- sections -------------------------------------------------------------------------
    def _border(self):
        section = "BORDER_PARAMETERS"
        if not self._bool(section, "BORDER_MAKE", False):
            return None
        return {
            "width": self._number(section, "BORDER_WIDTH", int, minimum=0),
            "flag": self._flag(section, "BORDER_FLAG_VALUE"),
        }

    def _shape(self, kind):
        section = f"{kind}_PARAMETERS"
        if not self._bool(section, f"{kind}_MAKE", False):
            return None
        reg_file = self._raw(section, f"{kind}_REG_FILE", f"{kind.lower()}.reg")
        return {
            "model": self._file(section, f"{kind}_MASKMODEL_PATH"),
            "mag_lim": self._number(section, f"{kind}_MAG_LIM", float),
            "scale_factor": self._number(section, f"{kind}_SCALE_FACTOR", float),
            "mag_pivot": self._number(section, f"{kind}_MAG_PIVOT", float),
            "flag": self._flag(section, f"{kind}_FLAG_VALUE"),
            "reg_file": reg_file,
        }

    def _dso(self, kind):
        section = f"{kind}_PARAMETERS"
        if not self._bool(section, f"{kind}_MAKE", False):
            return None
        return {
            "cat_path": self._file(section, f"{kind}_CAT_PATH"),
            "size_plus": self._number(section, f"{kind}_SIZE_PLUS", float, 0.0, minimum=0.0),
            "flag": self._flag(section, f"{kind}_FLAG_VALUE"),
        }

    def _missing_data(self):
        section = "MD_PARAMETERS"
        if not self._bool(section, "MD_MAKE", False):
            return None
        return {
            "thresh_flag": self._number(section, "MD_THRESH_FLAG", float, minimum=0.0),
            "thresh_remove": self._number(section, "MD_THRESH_REMOVE", float, minimum=0.0),
            "remove": self._bool(section, "MD_REMOVE", False),
            "flag": self._flag(section, "MD_FLAG_VALUE", 256),
        }

    def all_flag_bits(self):
        """Bitwise OR of the flag values of every mask type that is made."""
        bits = 0
        for part in (self.border, self.halo, self.spike, self.messier, self.ngc,
                     self.missing_data):
            if part is not None:
                bits |= part["flag"]
        return bits

    @property
    def needs_stars(self):
        """Whether a star catalogue is needed (halo or spike masks requested)."""
        return self.halo is not None or self.spike is not None
