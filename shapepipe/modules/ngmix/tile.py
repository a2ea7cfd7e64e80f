"""Multi-epoch shapes of the objects of one tile, from the stamp stores (pipeline-agnostic).

Inputs (the tile chain's files, see ``shapepipe.utils.stamp_store``):

- the tile catalogue (FITS_LDAC ``LDAC_OBJECTS`` with ``NUMBER``, ``XWIN_WORLD``,
  ``YWIN_WORLD``);
- five stores ``{str(NUMBER): {"<exp>-<ccd>": {"VIGNET": array}}}`` (or ``"empty"``): exposure
  image, background, weight and flag vignets, and the PSF at the object;
- ``log_exp_headers.sqlite`` (the CCD WCSs, read with
  ``shapepipe.modules.merge_headers.read_exp_wcs``).

For each object, each epoch present in the image store becomes one
:class:`~shapepipe.modules.ngmix.observation.Observation`: image minus background, the
weight, flagged pixels masked, the PSF vignet, and the local Jacobian of the CCD WCS at the
object, centred where :func:`shapepipe.utils.pixels.stamp_corner` put the object in the
stamp. Pixels nearer to another catalogue object than to this one are masked too (the
Voronoi cell of the object, as DES's "uberseg" masks neighbours): metacal fills them with the
object's own model, so a neighbour's light is neither measured nor sheared into the object's
images, and a sheared fit cannot jump onto the neighbour. A bad epoch (no PSF, a missing
vignet, no header for its exposure-CCD, more than a third of its pixels flagged, an
undecodable entry) is dropped from that object only; an object
left without a usable epoch gets a flagged row (``FLAG_NO_EPOCHS``, NaN measurements). Stores
are read object by object, so memory does not grow with the number of objects beyond the
output tables.
"""

import collections
import os
import sqlite3
import time
import urllib.parse
import warnings

import numpy as np
from astropy.io import fits

from shapepipe.utils.lensing import shear_positions
from shapepipe.utils.pixels import stamp_corner
from shapepipe.utils.stamp_store import decode

from .fitting import FLAG_METACAL_FAILED, FLAG_NO_EPOCHS, Priors
from .measure import COLUMNS, _empty_row, measure_object, read_catalog, write_catalog
from .metacal import METACAL_TYPES
from .observation import Jacobian, Observation

#: The stores an epoch needs, by role (names of the tile chain's files in the comments).
STORE_ROLES = ("image", "background", "psf", "weight", "flag")

#: Reasons an epoch is dropped (keys of the counts returned by :func:`process_tile`).
EPOCH_DROP_REASONS = ("no_psf", "no_vignet", "no_header", "all_masked", "mostly_masked",
                      "bad_entry")

#: Largest masked fraction of an epoch's vignet that is still used (ShapePipe's 1/3): the
#: model-filled holes of a mostly masked stamp would dominate its metacal images.
MAX_MASKED_FRACTION = 1.0 / 3.0

#: Dropped epochs logged one by one (debug) per job; the rest only counted.
MAX_LOGGED_DROPS = 50


def select_rows(ids, id_min=-1, id_max=-1, part=1, n_part=1):
    """Rows of the catalogue one job measures.

    Parameters
    ----------
    ids : numpy.ndarray
        Object ids (``NUMBER``) in catalogue order.
    id_min, id_max : int
        Inclusive id limits; a value <= 0 means no limit (ShapePipe's ``ID_OBJ_MIN``,
        ``ID_OBJ_MAX``, -1 by default; ids start at 1).
    part, n_part : int
        This job is part ``part`` (1-based) of ``n_part``: the ``part``-th of ``n_part``
        contiguous slices (sizes differing by at most one) of the rows kept by the id limits,
        so that concatenating the parts in order gives the unsplit catalogue.

    Returns
    -------
    numpy.ndarray
        Row indices, increasing.
    """
    if not 1 <= part <= n_part:
        raise ValueError(f"split part {part} of {n_part}: expected 1 <= part <= {n_part}")
    ids = np.asarray(ids)
    keep = np.ones(ids.shape, bool)
    if id_min > 0:
        keep &= ids >= id_min
    if id_max > 0:
        keep &= ids <= id_max
    rows = np.flatnonzero(keep)
    return np.array_split(rows, n_part)[part - 1]


def read_tile_positions(cat_path, ra_col="XWIN_WORLD", dec_col="YWIN_WORLD"):
    """Ids and world positions (deg) of the objects of a tile catalogue.

    Only three columns are read (memory-mapped): the catalogue's VIGNET column, by far its
    largest, is never loaded.

    Returns
    -------
    ids, ra, dec : numpy.ndarray
    """
    with fits.open(cat_path, memmap=True) as hdul:
        name = "LDAC_OBJECTS" if "LDAC_OBJECTS" in hdul else 1
        data = hdul[name].data
        if data is None:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        names = data.columns.names
        for col in ("NUMBER", ra_col, dec_col):
            if col not in names:
                raise KeyError(f"{cat_path}: column {col} not found in HDU {name} "
                               "(expected a tile catalogue with NUMBER, XWIN_WORLD, YWIN_WORLD)")
        ids = np.array(data["NUMBER"], dtype=np.int64)
        ra = np.array(data[ra_col], dtype=float)
        dec = np.array(data[dec_col], dtype=float)
    return ids, ra, dec


def position_labels(ra, dec, cell=1.0):
    """Integer labels of the sky cells (``cell`` arcsec, in RA and Dec) holding the objects.

    Seeding an object's random numbers by its cell instead of its detection number gives it
    the same random numbers in every simulation of the same sky: detection numbers change
    with the shear (SExtractor numbers objects in the order their last row is scanned), cells
    do not, except for the rare object whose centre moves across a cell edge. Two objects
    in one cell share their seeds; their stamps, hence their noise images on the sky, differ.

    Parameters
    ----------
    ra, dec : array_like
        World positions (deg).
    cell : float
        Cell size (arcsec), > 0.

    Returns
    -------
    numpy.ndarray of int64
    """
    if not cell > 0:
        raise ValueError(f"seed cell size must be > 0 arcsec, got {cell}")
    n_ra = int(np.ceil(360.0 * 3600.0 / cell)) + 1
    ix = np.floor(np.mod(np.asarray(ra, float), 360.0) * 3600.0 / cell).astype(np.int64)
    iy = np.floor((np.asarray(dec, float) + 90.0) * 3600.0 / cell).astype(np.int64)
    return iy * n_ra + ix


def _neighbour_finder(ra, dec, radius):
    """``near(row) -> rows within radius (arcsec)``, from a KD-tree of tangent-plane positions."""
    from scipy.spatial import cKDTree

    if len(ra) == 0:
        return lambda row: []
    ra0, dec0 = np.deg2rad(np.median(ra)), np.deg2rad(np.median(dec))
    r, d = np.deg2rad(ra), np.deg2rad(dec)
    cosc = np.sin(dec0) * np.sin(d) + np.cos(dec0) * np.cos(d) * np.cos(r - ra0)
    xi = np.cos(d) * np.sin(r - ra0) / cosc
    eta = (np.cos(dec0) * np.sin(d) - np.sin(dec0) * np.cos(d) * np.cos(r - ra0)) / cosc
    xy = np.rad2deg(np.column_stack([xi, eta])) * 3600.0
    ok = np.all(np.isfinite(xy), axis=1)
    tree = cKDTree(np.where(ok[:, None], xy, 1e12))
    return lambda row: tree.query_ball_point(xy[row], radius) if ok[row] else []


class StoreReader:
    """Read-only access by key to a stamp store (``shapepipe.utils.stamp_store`` layout).

    Reads the sqlitedict table directly, in the calling thread: sqlitedict serves every
    read through a worker thread (two lock hand-offs and a stack capture per read), which
    cost ~6 ms per object-epoch on a loaded 2-core machine, a tenth of the measurement.
    Values are decoded with ``stamp_store.decode`` (JSON + ``.npy``, never pickle).

    Parameters
    ----------
    path : str
        The ``.sqlite`` store.
    table : str
        Table name (sqlitedict's default ``unnamed``).
    """

    def __init__(self, path, table="unnamed"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: stamp store not found")
        self.path = path
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
        self._con = sqlite3.connect(uri, uri=True)
        self._query = f'SELECT value FROM "{table}" WHERE key = ?'
        try:
            self._con.execute(f'SELECT key FROM "{table}" LIMIT 1').fetchall()
        except sqlite3.DatabaseError as err:
            self._con.close()
            raise ValueError(f"{path}: not a stamp store (sqlite table {table!r}: {err})") \
                from None

    def __getitem__(self, key):
        row = self._con.execute(self._query, (str(key),)).fetchone()
        if row is None:
            raise KeyError(key)
        return decode(row[0])

    def close(self):
        self._con.close()


class ExposureWCS:
    """CCD WCSs of ``log_exp_headers.sqlite``, read one exposure at a time when first needed.

    Parameters
    ----------
    read_wcs : callable
        ``read_wcs([exp_name]) -> {exp_name: [WCS or None per CCD]}`` (merge_headers'
        ``read_exp_wcs`` bound to the file); it raises ``KeyError`` for a missing exposure.
    """

    def __init__(self, read_wcs):
        self._read = read_wcs
        self._cache = {}

    def get(self, exp_name, ccd):
        """WCS of CCD ``ccd`` of exposure ``exp_name``, or None if the header is missing."""
        if exp_name not in self._cache:
            try:
                self._cache[exp_name] = self._read([exp_name])[exp_name]
            except (KeyError, ValueError):
                self._cache[exp_name] = None
        ccds = self._cache[exp_name]
        if ccds is None or not 0 <= ccd < len(ccds):
            return None
        return ccds[ccd]

    def missing(self):
        """Exposure names without a header (of those asked for so far)."""
        return sorted(k for k, v in self._cache.items() if v is None)


def _has_epoch(entry, epoch):
    return isinstance(entry, dict) and epoch in entry


def _vignet(entry, epoch, role):
    """The VIGNET array of one epoch of a store entry (ValueError if malformed)."""
    value = entry[epoch]
    if not isinstance(value, dict) or not isinstance(value.get("VIGNET"), np.ndarray):
        raise ValueError(f"{role} entry of epoch {epoch} has no VIGNET array")
    return value["VIGNET"]


def split_epoch(epoch):
    """``"2000001-3"`` -> ``("2000001", 3)`` (ValueError if not ``<exp>-<ccd>``)."""
    exp_name, _, ccd = str(epoch).rpartition("-")
    if not exp_name or not ccd.lstrip("-").isdigit():
        raise ValueError(f"epoch key {epoch!r}: expected <exposure>-<ccd>")
    return exp_name, int(ccd)


def neighbour_mask(shape, dx, dy, nx, ny):
    """Pixels of a stamp nearer to a neighbour than to the object (its Voronoi complement).

    Parameters
    ----------
    shape : tuple
        Stamp shape ``(ny, nx)``.
    dx, dy : float
        Object position in the stamp (0-based).
    nx, ny : numpy.ndarray
        Neighbour positions in the stamp (0-based; outside the stamp is fine).

    Returns
    -------
    numpy.ndarray of bool
    """
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    own = (xx - dx) ** 2 + (yy - dy) ** 2
    mask = np.zeros(shape, bool)
    for x, y in zip(np.atleast_1d(nx), np.atleast_1d(ny)):
        mask |= (xx - x) ** 2 + (yy - y) ** 2 < own
    return mask


def epoch_observation(image, background, weight, flag, psf, wcs, ra, dec,
                      max_masked_fraction=MAX_MASKED_FRACTION, neighbours=None):
    """Observation of one epoch of one object from its vignets.

    Parameters
    ----------
    image, background, weight, flag : numpy.ndarray, shape (S, S)
        Exposure vignets cut with :func:`shapepipe.utils.pixels.stamp_corner` at the object's
        CCD position; ``flag != 0`` or ``weight <= 0`` masks a pixel.
    psf : numpy.ndarray
        PSF image at the object on the exposure pixel grid.
    wcs : astropy.wcs.WCS
        The CCD's WCS.
    ra, dec : float
        Object position (deg).
    max_masked_fraction : float
        Epochs with a larger fraction of flagged pixels are not used.
    neighbours : (numpy.ndarray, numpy.ndarray), optional
        RA, Dec (deg) of the other catalogue objects near this one: pixels nearer to one of
        them than to the object are masked (not counted in the flagged fraction).

    Returns
    -------
    Observation or str
        The observation, or why the epoch is not used (``all_masked``, ``mostly_masked``).
    """
    shapes = {a.shape for a in (image, background, weight, flag)}
    if len(shapes) != 1 or image.ndim != 2:
        raise ValueError(f"vignet shapes differ or are not 2-d: {sorted(shapes)}")
    mask = (flag != 0) | ~(weight > 0)
    if mask.all():
        return "all_masked"
    if mask.mean() > max_masked_fraction:
        return "mostly_masked"
    x, y = wcs.all_world2pix(ra, dec, 0)
    x, y = float(x), float(y)
    if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"position ({ra}, {dec}) does not map onto the CCD grid")
    x0, y0, dx, dy = stamp_corner(x, y, image.shape[0])
    if neighbours is not None and len(neighbours[0]):
        nx, ny = wcs.all_world2pix(neighbours[0], neighbours[1], 0)
        mask = mask | neighbour_mask(image.shape, dx, dy, nx - x0, ny - y0)
    local = Jacobian.from_wcs(wcs, x, y)
    return Observation(np.asarray(image, float) - background, weight,
                       Jacobian(dx, dy, local.matrix), psf=psf, mask=mask)


def object_observations(obj_id, ra, dec, stores, exp_wcs, counts, log=None,
                        max_masked_fraction=MAX_MASKED_FRACTION, neighbours=None):
    """Observations of one object from the stores; bad epochs are dropped and counted.

    Parameters
    ----------
    obj_id : int
    ra, dec : float
        World position (deg).
    stores : dict
        ``{role: mapping}`` for the roles of :data:`STORE_ROLES` (open stamp stores).
    exp_wcs : ExposureWCS
    counts : collections.Counter
        Updated with the reasons of dropped epochs and objects.
    log : logging.Logger, optional
    max_masked_fraction, neighbours :
        See :func:`epoch_observation`.

    Returns
    -------
    list of Observation
        In epoch-name order (the correction noise of metacal depends on the order).
    """
    key = str(int(obj_id))
    entries = {}
    for role in STORE_ROLES:
        try:
            entries[role] = stores[role][key]
        except KeyError:
            entries[role] = None
        except (ValueError, TypeError) as err:
            # Undecodable JSON / base64 / .npy: that store's entry of this object is lost.
            entries[role] = None
            counts["corrupt_entries"] += 1
            if log:
                log.info("object %s: %s store entry undecodable (%s)", key, role,
                         type(err).__name__)
    image_entry = entries["image"]
    if not isinstance(image_entry, dict) or not image_entry:
        counts["objects_without_epochs_in_store"] += 1
        return []
    obs_list = []
    for epoch in sorted(image_entry):
        obs = _epoch_observation(epoch, entries, exp_wcs, ra, dec, max_masked_fraction,
                                 neighbours)
        if isinstance(obs, str):
            counts[obs] += 1
            counts["dropped_epochs"] += 1
            # The first drops one by one; then only the counts (a full tile drops thousands).
            if log and counts["dropped_epochs"] <= MAX_LOGGED_DROPS:
                log.debug("object %s: epoch %s dropped (%s)%s", key, epoch, obs,
                          "; further drops are only counted"
                          if counts["dropped_epochs"] == MAX_LOGGED_DROPS else "")
        else:
            obs_list.append(obs)
    return obs_list


def _epoch_observation(epoch, entries, exp_wcs, ra, dec, max_masked_fraction, neighbours):
    """One epoch's Observation from the object's store entries, or why it is dropped."""
    if not _has_epoch(entries["psf"], epoch):
        return "no_psf"
    if not all(_has_epoch(entries[r], epoch) for r in ("background", "weight", "flag")):
        return "no_vignet"
    try:
        exp_name, ccd = split_epoch(epoch)
        arrays = {role: _vignet(entries[role], epoch, role) for role in STORE_ROLES}
        wcs = exp_wcs.get(exp_name, ccd)
        if wcs is None:
            return "no_header"
        return epoch_observation(arrays["image"], arrays["background"], arrays["weight"],
                                 arrays["flag"], arrays["psf"], wcs, ra, dec,
                                 max_masked_fraction, neighbours)
    except (ValueError, TypeError, np.linalg.LinAlgError):
        # Malformed entry: not a VIGNET array, shapes that differ, a PSF of zero sum...
        return "bad_entry"


def flagged_rows(obj_id, flags):
    """Rows of an object that was not measured: NaN measurements and ``flags`` set."""
    rows = {t: _empty_row(int(obj_id), 0) for t in METACAL_TYPES}
    for row in rows.values():
        row["flags"] = row["mcal_flags"] = flags
    return rows


def process_tile(cat_path, store_paths, read_wcs, output_path, seed=0, model="gauss",
                 zero_point=30.0, pixel_scale=0.187, id_min=-1, id_max=-1, part=1, n_part=1,
                 max_masked_fraction=MAX_MASKED_FRACTION, log=None, progress_interval=20.0,
                 mask_neighbours=True, neighbour_radius=14.0, bad_pixel_fill="symmetric",
                 seed_by="id", seed_cell=1.0, seed_scene_shear=None):
    """Measure the objects of one tile (or one split part of it) and write the catalogue.

    Parameters
    ----------
    cat_path : str
        Tile catalogue (FITS_LDAC).
    store_paths : dict
        ``{role: path}`` of the five stamp stores (:data:`STORE_ROLES`).
    read_wcs : callable
        ``read_wcs([exp_name]) -> {exp_name: [WCS or None per CCD]}``.
    output_path : str
        ``ngmix-<tile>.fits``, written atomically by
        :func:`~shapepipe.modules.ngmix.measure.write_catalog`.
    seed : int
        With the object id, fixes every random number of an object: the results do not depend
        on the split.
    model : str
        Galaxy model.
    zero_point : float
        Magnitude zero point.
    pixel_scale : float
        Pixel scale (arcsec): width of the centre prior of the fits.
    id_min, id_max, part, n_part :
        Which objects (see :func:`select_rows`).
    max_masked_fraction : float
        Epochs with a larger masked fraction are dropped.
    log : logging.Logger, optional
        Progress (every ``progress_interval`` seconds at most) and counts.
    mask_neighbours : bool
        Mask the pixels nearer to another catalogue object (see the module docstring).
    bad_pixel_fill : {"model", "symmetric"}
        How metacal fills masked pixels (see ``measure_object``).
    seed_by : {"id", "position"}
        What, with ``seed``, fixes an object's random numbers: its NUMBER, or its sky cell of
        ``seed_cell`` arcsec (:func:`position_labels`; common random numbers across
        simulations of the same sky, e.g. the +g / -g halves of a shear-bias test).
    seed_cell : float
        Cell size (arcsec) for ``seed_by="position"``.
    seed_scene_shear : (g1, g2, ra0, dec0), optional
        For ``seed_by="position"`` in simulations whose whole scene is sheared about
        (ra0, dec0): positions are mapped back through that shear before the cells are taken,
        so an object falls in the same cell in the +g and -g halves.
    neighbour_radius : float
        Neighbours are looked for within this radius (arcsec). A neighbour farther than twice
        the stamp's half-diagonal (2 x 6.7" for 51 pixels of 0.187") cannot be nearer than
        the object to any pixel of the stamp.

    Returns
    -------
    collections.Counter
        ``objects``, ``measured``, ``flagged``, ``epochs`` used, dropped epochs by reason
        (:data:`EPOCH_DROP_REASONS`), ``corrupt_entries``, ``objects_without_epochs_in_store``.
    """
    ids, ra, dec = read_tile_positions(cat_path)
    rows_idx = select_rows(ids, id_min, id_max, part, n_part)
    near = _neighbour_finder(ra, dec, neighbour_radius) if mask_neighbours else None
    if seed_by == "position":
        if seed_scene_shear is not None:
            g1, g2, ra0, dec0 = seed_scene_shear
            labels = position_labels(*shear_positions(ra, dec, -g1, -g2, ra0, dec0), seed_cell)
        else:
            labels = position_labels(ra, dec, seed_cell)
    elif seed_by == "id":
        labels = ids
    else:
        raise ValueError(f"seed_by must be 'id' or 'position', got {seed_by!r}")
    exp_wcs = ExposureWCS(read_wcs)
    priors = Priors(cen_sigma=pixel_scale)
    counts = collections.Counter()
    counts["objects"] = len(rows_idx)
    # Output tables allocated once (~1.3 kB per object for the five types): a list of
    # per-object row dicts would take ~10 kB per object, 1 GB for a full tile.
    dtype = np.dtype(COLUMNS)
    tables = {t: np.zeros(len(rows_idx), dtype=dtype) for t in METACAL_TYPES}

    def put(k, rows):
        for t in METACAL_TYPES:
            tables[t][k] = tuple(rows[t][name] for name in dtype.names)

    stores = {}
    t_start = t_last = time.monotonic()
    try:
        for role in STORE_ROLES:
            stores[role] = StoreReader(store_paths[role])
        for k, r in enumerate(rows_idx):
            obj_id = int(ids[r])
            neighbours = None
            if near is not None:
                others = [j for j in near(r) if j != r]
                neighbours = (ra[others], dec[others])
            obs_list = object_observations(obj_id, ra[r], dec[r], stores, exp_wcs, counts, log,
                                           max_masked_fraction, neighbours)
            counts["epochs"] += len(obs_list)
            if not obs_list:
                put(k, flagged_rows(obj_id, FLAG_NO_EPOCHS))
                counts["flagged"] += 1
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    put(k, measure_object(obs_list, obj_id, seed=seed, model=model,
                                          priors=priors, zero_point=zero_point,
                                          bad_pixel_fill=bad_pixel_fill,
                                          seed_label=int(labels[r])))
                counts["measured"] += 1
            except (ValueError, FloatingPointError, np.linalg.LinAlgError) as err:
                # A numerical failure of one object must not cost the tile: flag it.
                put(k, flagged_rows(obj_id, FLAG_METACAL_FAILED))
                counts["flagged"] += 1
                if log:
                    log.warning("object %d: measurement failed (%s: %s), flagged", obj_id,
                                type(err).__name__, err)
            now = time.monotonic()
            if log and now - t_last >= progress_interval:
                t_last = now
                log.info("%d/%d objects, %.0f ms per object", k + 1, len(rows_idx),
                         1e3 * (now - t_start) / (k + 1))
    finally:
        for store in stores.values():
            store.close()
    header = {"SEED": int(seed), "SEEDBY": seed_by, "MODEL": model, "MAGZP": float(zero_point),
              "SPLITPRT": int(part), "NSPLIT": int(n_part)}
    write_catalog(output_path, tables, header=header)
    missing = exp_wcs.missing()
    if log:
        log.info("%s", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        if missing:
            log.info("exposures without a header in the WCS log (their epochs dropped): %s",
                     ", ".join(missing))
    return counts


def combine_parts(part_paths, output_path, header=None):
    """Concatenate split-part catalogues (in part order) into one catalogue, atomically.

    Parameters
    ----------
    part_paths : list of str
        ``ngmix-<tile>.fits`` of parts 1..k.
    output_path : str
        The combined catalogue.
    header : dict, optional
        Primary-header keywords (default: those of the first part, ``NSPLIT`` kept).

    Returns
    -------
    int
        Number of rows written.
    """
    tables = {t: [] for t in METACAL_TYPES}
    for path in part_paths:
        cat = read_catalog(path)
        for t in METACAL_TYPES:
            tables[t].append(cat[t])
    if header is None:
        header = {}
        if part_paths:
            with fits.open(part_paths[0]) as hdul:
                for key in ("SEED", "MODEL", "MAGZP", "NSPLIT"):
                    if key in hdul[0].header:
                        header[key] = hdul[0].header[key]
    merged = {t: np.concatenate(tables[t]) for t in METACAL_TYPES}
    ids = merged["noshear"]["id"]
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{output_path}: the parts share object ids; they are not "
                         "disjoint slices of one catalogue")
    write_catalog(output_path, merged, header=header)
    return len(ids)
