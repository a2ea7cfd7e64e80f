"""Star and deep-sky-object catalogues read from files (no online queries).

Star catalogue: any table astropy reads (FITS binary table, FITS_LDAC, CSV, ECSV...), with
right ascension and declination in degrees (or with units astropy can convert) and a
magnitude column. Column names are configurable and matched case-insensitively: the
simulated ``ref_stars.fits`` has ``RA, DEC, MAG``; a Gaia extract ``ra, dec,
phot_g_mean_mag``.

Deep-sky catalogues (Messier, NGC) have ShapePipe's columns ``ra``, ``dec`` (deg) and
``size_X``, ``size_Y`` (arcmin unless the column carries a unit); the masked radius is
``max(size_X, size_Y) * (1 + SIZE_PLUS)`` as in ShapePipe.
"""

import os

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table


def _read_table(path):
    """First table of a file as an astropy Table (FITS: first table HDU, LDAC objects)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: catalogue not found")
    lower = path.lower()
    if lower.endswith((".fits", ".fit", ".fits.gz", ".cat", ".ldac")):
        with fits.open(path, memmap=False) as hdul:
            tables = [h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
            named = [h for h in tables if h.name == "LDAC_OBJECTS"]
            if not tables:
                raise ValueError(f"{path}: no table HDU in the catalogue")
            return Table.read(named[0] if named else tables[0])
    if lower.endswith(".npy"):
        # ShapePipe's Messier/NGC catalogues: structured arrays (never unpickled here).
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError:
            raise ValueError(f"{path}: .npy catalogue holds Python objects (pickle), "
                             "refused; convert it to a FITS or ECSV table") from None
        if array.dtype.names is None:
            raise ValueError(f"{path}: .npy catalogue is not a structured array with columns")
        return Table(array)
    if lower.endswith(".ecsv"):
        return Table.read(path, format="ascii.ecsv")
    if lower.endswith(".csv"):
        return Table.read(path, format="ascii.csv")
    try:
        return Table.read(path)
    except Exception as exc:  # astropy raises many types when guessing formats
        raise ValueError(f"{path}: cannot read the catalogue as a table ({exc})") from None


def _column(table, name, path, what):
    by_lower = {c.lower(): c for c in table.colnames}
    if name.lower() not in by_lower:
        raise ValueError(
            f"{path}: no {what} column {name!r} (columns: {', '.join(table.colnames)})"
        )
    return table[by_lower[name.lower()]]


def _values(column, unit, default_unit):
    """Column values in ``unit``; a column without unit is taken in ``default_unit``."""
    data = np.ma.filled(np.ma.asarray(column, dtype=float), np.nan)
    col_unit = getattr(column, "unit", None)
    if col_unit is None or str(col_unit) in ("", "None"):
        return (data * default_unit).to_value(unit)
    return (data * u.Unit(col_unit)).to_value(unit)


def read_star_catalogue(path, ra_col="RA", dec_col="DEC", mag_col="MAG"):
    """Read positions and magnitudes of a star catalogue.

    Parameters
    ----------
    path : str
        Catalogue file.
    ra_col, dec_col, mag_col : str
        Column names (case-insensitive).

    Returns
    -------
    ra, dec, mag : numpy.ndarray
        Degrees, degrees, magnitudes; rows with a missing value are dropped.
    """
    table = _read_table(path)
    ra = _values(_column(table, ra_col, path, "right ascension"), u.deg, u.deg)
    dec = _values(_column(table, dec_col, path, "declination"), u.deg, u.deg)
    mag_column = _column(table, mag_col, path, "magnitude")
    mag = np.ma.filled(np.ma.asarray(mag_column, dtype=float), np.nan)
    good = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(mag)
    return ra[good], dec[good], mag[good]


def read_dso_catalogue(path):
    """Read a Messier/NGC catalogue.

    Parameters
    ----------
    path : str
        Catalogue file with columns ``ra``, ``dec``, ``size_X``, ``size_Y`` (optionally
        ``name``).

    Returns
    -------
    ra, dec : numpy.ndarray
        Degrees.
    size : numpy.ndarray
        ``max(size_X, size_Y)`` in degrees.
    names : list of str
    """
    table = _read_table(path)
    ra = _values(_column(table, "ra", path, "ra"), u.deg, u.deg)
    dec = _values(_column(table, "dec", path, "dec"), u.deg, u.deg)
    size_x = _values(_column(table, "size_X", path, "size_X"), u.deg, u.arcmin)
    size_y = _values(_column(table, "size_Y", path, "size_Y"), u.deg, u.arcmin)
    size = np.fmax(size_x, size_y)
    if "name" in [c.lower() for c in table.colnames]:
        names = [str(v) for v in _column(table, "name", path, "name")]
    else:
        names = [str(i) for i in range(len(table))]
    good = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(size)
    return ra[good], dec[good], size[good], [n for n, g in zip(names, good) if g]


def angular_separation(ra1, dec1, ra2, dec2):
    """Great-circle distance in degrees (haversine, vectorised)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))
