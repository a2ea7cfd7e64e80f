"""MetaStore: the headers of every exposure, as JSON, with a footprint search.

File layout (forcepho's): ``{band: {expID: "<FITS header as one string of 80-character
cards>"}}`` in JSON. WCS objects are built from the headers when first needed.
"""

import json
import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from shapepipe.utils.atomic import atomic_path, write_fits

__all__ = ["MetaStore", "footprint", "footprint_contains"]


def _celestial_wcs(hdr):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(hdr)
    if wcs.naxis > 2:
        wcs = wcs.celestial
    return wcs


def _image_size(hdr, where=""):
    for keys in (("NAXIS1", "NAXIS2"), ("ZNAXIS1", "ZNAXIS2")):
        if keys[0] in hdr and keys[1] in hdr and int(hdr[keys[0]]) > 0:
            return int(hdr[keys[0]]), int(hdr[keys[1]])
    raise KeyError(f"{where}: header without NAXIS1/NAXIS2: cannot build the footprint")


def footprint(wcs, nx, ny, n_per_edge=4):
    """Sky polygon of an image's outer pixel edges.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS.
    nx, ny : int
        Image size (FITS NAXIS1, NAXIS2).
    n_per_edge : int
        Vertices per edge; 1 (the corners) is exact for a pure TAN projection, more follow
        distortions.

    Returns
    -------
    numpy.ndarray
        ``(4 * n_per_edge, 2)`` RA, Dec in degrees, counter-clockwise in pixel space,
        starting at the corner (-0.5, -0.5) (0-based pixel centres).
    """
    t = np.arange(n_per_edge) / n_per_edge
    lo_x, hi_x, lo_y, hi_y = -0.5, nx - 0.5, -0.5, ny - 0.5
    x = np.concatenate([lo_x + t * nx, np.full(n_per_edge, hi_x), hi_x - t * nx,
                        np.full(n_per_edge, lo_x)])
    y = np.concatenate([np.full(n_per_edge, lo_y), lo_y + t * ny, np.full(n_per_edge, hi_y),
                        hi_y - t * ny])
    return np.asarray(wcs.all_pix2world(np.stack([x, y], axis=1), 0))


def _unit(ra, dec):
    ra, dec = np.deg2rad(ra), np.deg2rad(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def footprint_contains(polygon, ra, dec, tol=1e-12):
    """Whether sky positions fall inside (or on the edge of) a sky polygon.

    Both are projected on the plane tangent at the polygon's centre (gnomonic: great
    circles stay straight, RA = 0 and the poles need no special case); positions on the far
    side of that plane are outside.

    Parameters
    ----------
    polygon : numpy.ndarray
        ``(n, 2)`` vertices RA, Dec (degrees), smaller than a hemisphere.
    ra, dec : float or array_like
        Positions (degrees).
    tol : float
        Distance (radians on the tangent plane) within which an edge point counts as inside.

    Returns
    -------
    numpy.ndarray of bool
    """
    verts = _unit(polygon[:, 0], polygon[:, 1])
    centre = verts.sum(axis=0)
    centre /= np.linalg.norm(centre)
    # Tangent-plane basis at the centre.
    east = np.cross([0.0, 0.0, 1.0], centre)
    if np.linalg.norm(east) < 1e-12:  # centre at a pole
        east = np.array([0.0, 1.0, 0.0])
    east /= np.linalg.norm(east)
    north = np.cross(centre, east)

    def project(vec):
        depth = vec @ centre
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.stack([(vec @ east) / depth, (vec @ north) / depth], axis=-1), depth

    pv, _ = project(verts)
    pts, depth = project(_unit(np.atleast_1d(ra).astype(float),
                               np.atleast_1d(dec).astype(float)))
    px, py = pts[:, 0][:, None], pts[:, 1][:, None]
    x0, y0 = pv[:, 0][None, :], pv[:, 1][None, :]
    x1, y1 = np.roll(pv[:, 0], -1)[None, :], np.roll(pv[:, 1], -1)[None, :]
    # Crossing number (ray towards +x) for the interior...
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = ((y0 > py) != (y1 > py)) & (px < x0 + (py - y0) * (x1 - x0) / (y1 - y0))
    inside = (cross.sum(axis=1) % 2) == 1
    # ...and a distance test for points on an edge, which the crossing rule may split.
    ex, ey = x1 - x0, y1 - y0
    length2 = ex * ex + ey * ey
    t = np.clip(((px - x0) * ex + (py - y0) * ey) / np.where(length2 > 0, length2, 1), 0, 1)
    dist2 = (px - x0 - t * ex) ** 2 + (py - y0 - t * ey) ** 2
    on_edge = np.min(dist2, axis=1) <= tol * tol
    return (inside | on_edge) & (depth > 0)


class MetaStore:
    """Headers (and WCS) of every exposure, keyed by band then expID (forcepho's MetaStore).

    Parameters
    ----------
    metastorefile : str, optional
        A JSON file written by :meth:`write_to_file` to read.
    use_gwcs : bool
        Accepted for forcepho's interface; generalised WCS files are not supported here
        (True raises).
    load_all : bool
        Build every WCS at once instead of when first needed.

    Attributes
    ----------
    headers : dict
        ``headers[band][expID]`` astropy Header.
    wcs : dict
        ``wcs[band][expID]`` celestial astropy WCS, filled lazily (see :meth:`get_wcs`).
    """

    def __init__(self, metastorefile=None, use_gwcs=False, load_all=False):
        if use_gwcs:
            raise NotImplementedError("MetaStore: gWCS (asdf) files are not supported; "
                                      "use FITS WCS headers")
        self.headers = {}
        self.wcs = {}
        self._footprints = {}
        if metastorefile is not None:
            self.headers = self.read_from_file(metastorefile)
            if load_all:
                self.populate_wcs()

    def add_exposure(self, imset):
        """Add the header of an exposure (any object with ``hdr``, ``band``, ``expID``)."""
        hdr = imset.hdr
        if not isinstance(hdr, fits.Header):
            hdr = fits.Header(hdr)
        self.headers.setdefault(imset.band, {})[imset.expID] = hdr
        self.wcs.get(imset.band, {}).pop(imset.expID, None)
        self._footprints.pop((imset.band, imset.expID), None)

    def write_to_file(self, filename):
        """Write the headers as strings in a JSON file (atomically).

        Parameters
        ----------
        filename : str
            Must end in ``.json``; replaced if it exists.
        """
        if not str(filename).endswith(".json"):
            raise ValueError(f"{filename}: a MetaStore file must end in .json")
        strings = {band: {exp: hdr.tostring() for exp, hdr in exps.items()}
                   for band, exps in self.headers.items()}
        with atomic_path(filename) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(strings, handle)

    @staticmethod
    def read_from_file(filename):
        """Read a JSON file of header strings into ``{band: {expID: Header}}``."""
        with open(filename, encoding="utf-8") as handle:
            try:
                strings = json.load(handle)
            except json.JSONDecodeError as err:
                raise ValueError(f"{filename}: not a MetaStore JSON file ({err})") from None
        if not isinstance(strings, dict):
            raise ValueError(f"{filename}: expected {{band: {{expID: header string}}}}")
        return {band: {exp: fits.Header.fromstring(text) for exp, text in exps.items()}
                for band, exps in strings.items()}

    def get_wcs(self, band, expID):
        """Celestial WCS of one exposure (built and cached on first use)."""
        cache = self.wcs.setdefault(band, {})
        if expID not in cache:
            cache[expID] = _celestial_wcs(self.headers[band][expID])
        return cache[expID]

    def populate_wcs(self):
        """Build the WCS of every exposure."""
        for band, exps in self.headers.items():
            for exp in exps:
                self.get_wcs(band, exp)

    def footprint(self, band, expID):
        """Sky polygon (RA, Dec degrees) of one exposure (see :func:`footprint`)."""
        key = (band, expID)
        if key not in self._footprints:
            hdr = self.headers[band][expID]
            nx, ny = _image_size(hdr, f"{band}/{expID}")
            self._footprints[key] = footprint(self.get_wcs(band, expID), nx, ny)
        return self._footprints[key]

    def find_exposures(self, sky, bandlist):
        """Exposures whose footprint contains a sky position.

        Parameters
        ----------
        sky : (float, float)
            RA, Dec in degrees.
        bandlist : list of str
            Bands to search.

        Returns
        -------
        expIDs, bands : list of str
            One entry per exposure found (``bands[i]`` is the band of ``expIDs[i]``).
        """
        ra, dec = float(sky[0]), float(sky[1])
        target = _unit(ra, dec)
        expids, bands = [], []
        for band in bandlist:
            for exp in self.headers.get(band, {}):
                poly = self.footprint(band, exp)
                # Cheap rejection: farther than the farthest vertex from the centre.
                verts = _unit(poly[:, 0], poly[:, 1])
                centre = verts.mean(axis=0)
                centre /= np.linalg.norm(centre)
                if target @ centre < np.min(verts @ centre) - 1e-12:
                    continue
                if footprint_contains(poly, ra, dec)[0]:
                    expids.append(exp)
                    bands.append(band)
        return expids, bands

    def to_table(self, tablename, overwrite=True):
        """Write a FITS table of the exposures (one row each), atomically.

        Columns: BAND, EXPID, FILTER, RA, DEC (image centre, degrees), NAXIS1, NAXIS2,
        EXPTIME, MJD_OBS, MAGZP (NaN when absent) and FOOTPRINT (4 corners, RA/Dec pairs).
        """
        rows = [(band, exp, hdr) for band, exps in self.headers.items()
                for exp, hdr in exps.items()]
        n = len(rows)

        def num(key):
            return np.array([float(h.get(key, np.nan)) for _, _, h in rows], dtype=float)

        centres = np.zeros((n, 2))
        corners = np.zeros((n, 8))
        size = np.zeros((n, 2), dtype=np.int32)
        for i, (band, exp, hdr) in enumerate(rows):
            nx, ny = _image_size(hdr, f"{band}/{exp}")
            wcs = self.get_wcs(band, exp)
            centres[i] = wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
            corners[i] = footprint(wcs, nx, ny, n_per_edge=1).ravel()
            size[i] = nx, ny
        zp = num("MAGZP")
        if n and np.all(np.isnan(zp)):
            zp = num("PHOTZP")
        width = max([len(b) for b, _, _ in rows] + [1])
        ewidth = max([len(e) for _, e, _ in rows] + [1])
        cols = [
            fits.Column(name="BAND", format=f"{width}A", array=[b for b, _, _ in rows]),
            fits.Column(name="EXPID", format=f"{ewidth}A", array=[e for _, e, _ in rows]),
            fits.Column(name="FILTER", format="20A",
                        array=[str(h.get("FILTER", "")) for _, _, h in rows]),
            fits.Column(name="RA", format="D", unit="deg", array=centres[:, 0]),
            fits.Column(name="DEC", format="D", unit="deg", array=centres[:, 1]),
            fits.Column(name="NAXIS1", format="J", array=size[:, 0]),
            fits.Column(name="NAXIS2", format="J", array=size[:, 1]),
            fits.Column(name="EXPTIME", format="D", array=num("EXPTIME")),
            fits.Column(name="MJD_OBS", format="D", array=num("MJD-OBS")),
            fits.Column(name="MAGZP", format="D", array=zp),
            fits.Column(name="FOOTPRINT", format="8D", unit="deg", array=corners),
        ]
        hdu = fits.BinTableHDU.from_columns(cols, name="EXPOSURES")
        write_fits(fits.HDUList([fits.PrimaryHDU(), hdu]), tablename, overwrite=overwrite)

    @property
    def nexp(self):
        """Number of exposures in the store."""
        return sum(len(exps) for exps in self.headers.values())
