"""``produce``: blended pairs of isolated galaxies, with the mask of each galaxy.

CANDELS-blender's recipe, with its defects fixed:

- every random number comes from one ``numpy.random.Generator`` seeded with ``--seed``
  (CANDELS-blender drew its replacement noise from numpy's global state): the same seed gives
  the same bytes;
- ``shift_x`` is the displacement of galaxy 2 along columns (x) and ``shift_y`` along rows
  (y) (CANDELS-blender wrote them swapped);
- the replacement noise level comes from background pixels only (:mod:`.segmap`);
- pairs and shifts are drawn for many blends at once, and a pair without a valid shift is
  redrawn a bounded number of times, then reported (CANDELS-blender looped without bound);
- the central galaxy's mask is its segment only (0/1), whatever the segment ids; a galaxy is
  never paired with itself;
- the output directory is written under a temporary name and renamed when complete, and an
  existing one is refused (CANDELS-blender wrote into it).
"""

import os
import shutil
import tempfile

import numpy as np

from shapepipe.modules.blend.io import (
    BLEND_SEG_TMP,
    BLEND_TMP,
    CATALOGUE_HEADER,
    GALAXY_TYPES,
    IMG_DTYPE,
    SEG_DTYPE,
    STAMP_SIZE,
    BlendError,
    load_inputs,
    npy_header,
)
from shapepipe.modules.blend.segmap import central_masks, central_values, neighbour_regions

#: Candidate shifts drawn per pair and round, and rounds before a pair is given up.
SHIFT_CANDIDATES = 32
MAX_ROUNDS = 100
#: Blends made per vectorised batch (bounds memory: ~0.4 MB per blend in flight).
BATCH = 64
LOG_NAME = "candels-blender.log"


def output_dir_name(seed, n_blends):
    """CANDELS-blender's output directory name, ``output-s_<seed>-n_<n>``."""
    return f"output-s_{seed}-n_{n_blends}"


class GalaxySet:
    """The galaxies of one or more input directories after the cuts.

    The stamps stay memory-mapped; :meth:`stamps` and :meth:`segmaps` read the rows asked
    for, so a set reads only the galaxies its blends use.

    Parameters
    ----------
    datapaths : list of str
        Directories with ``candels_img.npy``, ``candels_seg.npy``, ``candels_cat.csv``.
    mag_low, mag_high : float
        Keep galaxies with ``mag_low < mag < mag_high`` (strict, as CANDELS-blender).
    excluded_types : iterable of str
        Galaxy types to drop (irr, disk, sph, sphd).
    """

    def __init__(self, datapaths, mag_low=0.0, mag_high=100.0, excluded_types=()):
        bad = sorted(set(excluded_types) - set(GALAXY_TYPES))
        if bad:
            raise BlendError(f"--exclude {bad[0]}: unknown galaxy type, expected one of "
                             f"{', '.join(GALAXY_TYPES)}")
        self.n_input = 0
        self._img, self._seg, source, row, cat_parts = [], [], [], [], []
        for number, path in enumerate(datapaths):
            img, seg, cat = load_inputs(path)
            self.n_input += img.shape[0]
            keep = (cat["mag"] > mag_low) & (cat["mag"] < mag_high)
            keep &= ~np.isin(cat["galtype"], list(excluded_types))
            index = np.flatnonzero(keep)
            centre = np.asarray(central_values(seg))
            empty = index[centre[index] == 0]
            if empty.size:
                raise BlendError(f"{os.path.join(path, 'candels_seg.npy')}: stamp {empty[0]} "
                                 f"(ID {cat['ID'][empty[0]]}) has no segment at its centre "
                                 f"pixel ({STAMP_SIZE // 2}, {STAMP_SIZE // 2})")
            small = index[~(cat["radius"][index] > 0)]
            if small.size:
                raise BlendError(f"{os.path.join(path, 'candels_cat.csv')}: ID "
                                 f"{cat['ID'][small[0]]} has radius {cat['radius'][small[0]]}, "
                                 "expected > 0 pixels")
            self._img.append(img)
            self._seg.append(seg)
            source.append(np.full(index.size, number))
            row.append(index)
            cat_parts.append({k: v[index] for k, v in cat.items()})
        self._source = np.concatenate(source)
        self._row = np.concatenate(row)
        self.cat = {k: np.concatenate([c[k] for c in cat_parts]) for k in cat_parts[0]}

    @property
    def n_gal(self):
        """Galaxies left after the cuts."""
        return self._row.size

    def _gather(self, arrays, index, dtype):
        index = np.asarray(index)
        out = np.empty((index.size, STAMP_SIZE, STAMP_SIZE), dtype=dtype)
        for number, array in enumerate(arrays):
            sel = np.flatnonzero(self._source[index] == number)
            if sel.size:
                out[sel] = array[self._row[index[sel]]]
        return out

    def stamps(self, index):
        """float32 copies (K, 128, 128) of the stamps of galaxies ``index``."""
        return self._gather(self._img, index, IMG_DTYPE)

    def segmaps(self, index):
        """int64 copies (K, 128, 128) of the segmentation maps of galaxies ``index``."""
        return self._gather(self._seg, index, np.int64)


def split_train_test(rng, n_gal, test_ratio):
    """Random disjoint train/test galaxy indices; ``int(n_gal * test_ratio)`` go to test."""
    order = rng.permutation(n_gal)
    n_test = int(n_gal * test_ratio)
    return order[n_test:], order[:n_test]


def draw_pairs(rng, mag, rad, pool, n_blends, mag_diff, rad_diff, size=STAMP_SIZE):
    """Pairs of galaxies of ``pool`` and the integer shift of the second one, for n blends.

    Galaxy 1 is uniform in ``pool``; galaxy 2 uniform among the other galaxies of ``pool``
    with ``|mag1 - mag2| < mag_diff`` (found by binary search in the sorted magnitudes, no
    rejection loop). The shift (dx along columns, dy along rows) is uniform over the integer
    offsets with ``r_min <= hypot(dx, dy) <= r_max``, ``r_min`` the larger radius and
    ``r_max = min(rad_diff * smaller radius, size / 2)`` (``r_min = 0.8 r_max`` if
    ``r_min >= r_max``), as CANDELS-blender; candidates are drawn in a square and the first
    inside the annulus kept. A pair whose 32 candidates all miss is redrawn, at most
    :data:`MAX_ROUNDS` times.

    Parameters
    ----------
    rng : numpy.random.Generator
    mag, rad : numpy.ndarray
        Magnitudes and radii [pixels] of every galaxy.
    pool : numpy.ndarray
        Indices of the galaxies to draw from.
    n_blends : int
    mag_diff, rad_diff : float
    size : int
        Stamp side.

    Returns
    -------
    g1, g2 : numpy.ndarray
        (n,) galaxy indices.
    dx, dy : numpy.ndarray
        (n,) int shifts of galaxy 2 along columns and rows.
    """
    g1 = np.empty(n_blends, dtype=np.int64)
    g2 = np.empty(n_blends, dtype=np.int64)
    shift = np.empty((n_blends, 2), dtype=np.int64)
    if n_blends == 0:
        return g1, g2, shift[:, 0], shift[:, 1]
    order = pool[np.argsort(mag[pool], kind="stable")]
    sorted_mag = mag[order]
    lo_all = np.searchsorted(sorted_mag, sorted_mag - mag_diff, side="right")
    hi_all = np.searchsorted(sorted_mag, sorted_mag + mag_diff, side="left")
    # Each galaxy lies in its own window even when mag +- mag_diff rounds to mag.
    position = np.arange(sorted_mag.size)
    lo_all = np.minimum(lo_all, position)
    hi_all = np.maximum(hi_all, position + 1)
    # Positions whose galaxy has at least one partner (itself excluded).
    has_partner = np.flatnonzero(hi_all - lo_all >= 2)
    if has_partner.size == 0:
        raise BlendError(f"no two galaxies of the set differ by less than --mag_diff "
                         f"{mag_diff} in magnitude ({pool.size} galaxies)")
    todo = np.arange(n_blends)
    for _ in range(MAX_ROUNDS):
        k = todo.size
        p1 = has_partner[rng.integers(0, has_partner.size, k)]
        lo, hi = lo_all[p1], hi_all[p1]
        p2 = lo + np.floor(rng.random(k) * (hi - lo - 1)).astype(np.int64)
        p2 += p2 >= p1  # skip galaxy 1 itself
        i1, i2 = order[p1], order[p2]
        r_small = np.minimum(rad[i1], rad[i2])
        r_min = np.maximum(rad[i1], rad[i2])
        r_max = np.minimum(r_small * rad_diff, size // 2)
        r_min = np.where(r_min >= r_max, 0.8 * r_max, r_min)
        reach = np.floor(r_max).astype(np.int64)
        cand = rng.integers(-reach[:, None, None], reach[:, None, None] + 1,
                            size=(k, SHIFT_CANDIDATES, 2))
        dist = np.hypot(cand[..., 0], cand[..., 1])
        valid = (dist >= r_min[:, None]) & (dist <= r_max[:, None])
        found = valid.any(axis=1)
        first = valid.argmax(axis=1)
        done = todo[found]
        g1[done] = i1[found]
        g2[done] = i2[found]
        shift[done] = cand[np.flatnonzero(found), first[found]]
        todo = todo[~found]
        if todo.size == 0:
            return g1, g2, shift[:, 0], shift[:, 1]
    raise BlendError(f"{todo.size} of {n_blends} blends found no shift with --rad_diff "
                     f"{rad_diff} after {MAX_ROUNDS} draws of {SHIFT_CANDIDATES} (radii too "
                     "small for integer shifts?)")


def shift_stamp(stamp, dx, dy):
    """``stamp`` moved by dx columns and dy rows, zero-filled (no wrap-around)."""
    out = np.zeros_like(stamp)
    n_row, n_col = stamp.shape[-2:]
    rs, rd = _shift_slices(int(dy), n_row)
    cs, cd = _shift_slices(int(dx), n_col)
    out[..., rd, cd] = stamp[..., rs, cs]
    return out


class _Cleaner:
    """Replacement of neighbours by noise, prepared once per galaxy used."""

    def __init__(self, galaxies, used):
        self.slot = np.full(galaxies.n_gal, -1, dtype=np.int64)
        self.slot[used] = np.arange(used.size)
        self.neighbours = np.empty((used.size, STAMP_SIZE, STAMP_SIZE), dtype=bool)
        self.sigma = np.empty(used.size)
        for start in range(0, used.size, 256):
            part = used[start:start + 256]
            nb, sigma, _ = neighbour_regions(galaxies.stamps(part), galaxies.segmaps(part))
            self.neighbours[start:start + part.size] = nb
            self.sigma[start:start + part.size] = sigma
        bad = np.flatnonzero(~np.isfinite(self.sigma))
        if bad.size:
            ident = galaxies.cat["ID"][used[bad[0]]]
            raise BlendError(f"galaxy ID {ident}: no background pixels in its stamp to "
                             "estimate the replacement noise from")

    def apply(self, rng, img, index):
        """Clean stamps ``img`` (K, N, N) of galaxies ``index``, in place; returns them.

        Neighbour pixels get fresh noise of the background rms, then noise of the same rms
        is added everywhere (as ``mask_out_pixels``), so the whole stamp has one noise level.
        """
        slots = self.slot[index]
        sigma = self.sigma[slots].astype(IMG_DTYPE)[:, None, None]
        where = self.neighbours[slots]
        # Draw only as many numbers as there are neighbour pixels.
        img[where] = rng.standard_normal(int(where.sum()), dtype=IMG_DTYPE) * \
            np.broadcast_to(sigma, img.shape)[where]
        img += rng.standard_normal(img.shape, dtype=IMG_DTYPE) * sigma
        return img


def _shift_slices(d, n):
    """(source, destination) slices of a shift by ``d`` pixels along an axis of length n."""
    return (slice(0, n - d), slice(d, n)) if d >= 0 else (slice(-d, n), slice(0, n + d))


def make_set(rng, galaxies, pool, n_blends, prefix, outdir, mag_diff, rad_diff, clean):
    """Write the blends and the catalogue of one split (``train`` or ``test``).

    Returns
    -------
    int
        Blends written.
    """
    mag, rad = galaxies.cat["mag"], galaxies.cat["radius"]
    g1, g2, dx, dy = draw_pairs(rng, mag, rad, pool, n_blends, mag_diff, rad_diff)
    cleaner = _Cleaner(galaxies, np.unique(np.concatenate([g1, g2]))) if clean else None
    size = STAMP_SIZE
    img_header = npy_header((size, size, 2), IMG_DTYPE)
    seg_header = npy_header((2, size, size), SEG_DTYPE)
    for start in range(0, n_blends, BATCH):
        sl = slice(start, min(start + BATCH, n_blends))
        index = np.concatenate([g1[sl], g2[sl]])
        img = galaxies.stamps(index)
        if cleaner is not None:
            cleaner.apply(rng, img, index)
        seg = central_masks(galaxies.segmaps(index))
        k = sl.stop - sl.start
        # Channels last for the images, first for the masks (CANDELS-blender's layouts);
        # galaxy 2 moved by dx columns and dy rows, zero-filled.
        cube = np.zeros((k, size, size, 2), IMG_DTYPE)
        masks = np.zeros((k, 2, size, size), SEG_DTYPE)
        cube[..., 0] = img[:k]
        masks[:, 0] = seg[:k]
        for b, idx in enumerate(range(sl.start, sl.stop)):
            rs, rd = _shift_slices(int(dy[idx]), size)
            cs, cd = _shift_slices(int(dx[idx]), size)
            cube[b, rd, cd, 1] = img[k + b, rs, cs]
            masks[b, 1, rd, cd] = seg[k + b, rs, cs]
            with open(os.path.join(outdir, BLEND_TMP.format(prefix=prefix, idx=idx)),
                      "wb") as handle:
                handle.write(img_header)
                handle.write(cube[b].tobytes())
            with open(os.path.join(outdir, BLEND_SEG_TMP.format(prefix=prefix, idx=idx)),
                      "wb") as handle:
                handle.write(seg_header)
                handle.write(masks[b].tobytes())
    _write_catalogue(os.path.join(outdir, f"{prefix}_catalogue.csv"), galaxies.cat, g1, g2,
                     dx, dy)
    return n_blends


def _write_catalogue(path, cat, g1, g2, dx, dy):
    """The blend catalogue, built in memory and written once (CANDELS-blender's formats)."""
    lines = [",".join(CATALOGUE_HEADER)]
    dist = np.hypot(dx, dy)

    def gal(i):
        return (f"{cat['ID'][i]},{cat['mag'][i]:.6f},{cat['radius'][i]:.6f},"
                f"{cat['z'][i]:.6f},{cat['galtype'][i]}")

    for k in range(g1.size):
        lines.append(f"{k},{dist[k]:.6f},{dx[k]},{dy[k]},{gal(g1[k])},{gal(g2[k])}")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def produce(datapaths, n_blends=100, mag_low=0.0, mag_high=100.0, mag_diff=2.0, rad_diff=4.0,
            test_ratio=0.2, excluded_types=(), seed=42, use_clean_galaxies=False, outdir=".",
            echo=print):
    """Make a train and a test set of blends in ``<outdir>/output-s_<seed>-n_<n>/``.

    Parameters
    ----------
    datapaths : list of str
        Input directories (their galaxies are pooled).
    n_blends : int
        Blends in all; ``int(test_ratio * n_blends)`` of them from the test galaxies.
    mag_low, mag_high : float
        Magnitude cut (strict).
    mag_diff : float
        Largest magnitude difference within a pair (strict).
    rad_diff : float
        Largest separation as a multiple of the smaller radius.
    test_ratio : float
        Fraction of the galaxies (and of the blends) reserved for the test set.
    excluded_types : iterable of str
        Galaxy types left out.
    seed : int
        Seed of the one random generator.
    use_clean_galaxies : bool
        Replace the neighbours in each stamp by background noise.
    outdir : str
        Where the output directory is created.
    echo : callable
        Progress messages.

    Returns
    -------
    str
        The output directory.
    """
    if n_blends < 0:
        raise BlendError(f"--n_blends {n_blends}: expected >= 0")
    if not 0.0 <= test_ratio <= 1.0:
        raise BlendError(f"--test_ratio {test_ratio}: expected a fraction in [0, 1]")
    if not mag_diff > 0:
        raise BlendError(f"--mag_diff {mag_diff}: expected > 0")
    if not rad_diff > 0:
        raise BlendError(f"--rad_diff {rad_diff}: expected > 0")
    final = os.path.join(outdir, output_dir_name(seed, n_blends))
    if os.path.exists(final):
        raise BlendError(f"{final}: exists; remove it or choose another --seed/--n_blends")
    excluded_types = tuple(dict.fromkeys(excluded_types))
    galaxies = GalaxySet(datapaths, mag_low, mag_high, excluded_types)
    echo(f"Selecting galaxies in the magnitude range {mag_low} < m < {mag_high}"
         + (f", excluding {', '.join(excluded_types)}" if excluded_types else ""))
    echo(f"After the cuts, there are {galaxies.n_gal} individual galaxies left in the "
         f"catalog (of {galaxies.n_input}).")
    if galaxies.n_gal < 2:
        raise BlendError(f"the cuts leave {galaxies.n_gal} galaxies of {galaxies.n_input}; "
                         "a blend needs at least 2")
    n_test = int(test_ratio * n_blends)
    n_train = n_blends - n_test
    rng = np.random.default_rng(seed)
    train, test = split_train_test(rng, galaxies.n_gal, test_ratio)
    for name, pool, n in (("train", train, n_train), ("test", test, n_test)):
        if n > 0 and pool.size < 2:
            raise BlendError(f"the {name} split has {pool.size} galaxies (of "
                             f"{galaxies.n_gal}, --test_ratio {test_ratio}); {n} {name} "
                             "blends need at least 2")

    os.makedirs(outdir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", suffix=".partial",
                           dir=outdir)
    try:
        _write_log(os.path.join(tmp, LOG_NAME), _config_text(
            datapaths, n_blends, seed, excluded_types, mag_low, mag_high, mag_diff, rad_diff,
            test_ratio, use_clean_galaxies, galaxies, train, test))
        for name, pool, n in (("train", train, n_train), ("test", test, n_test)):
            echo(f"Producing {n} {name} blended images")
            make_set(rng, galaxies, pool, n, name, tmp, mag_diff, rad_diff,
                     use_clean_galaxies)
        os.chmod(tmp, 0o755)
        if os.path.exists(final):  # appeared meanwhile (rename would replace an empty one)
            raise BlendError(f"{final}: exists; remove it or choose another --seed/--n_blends")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    echo(f"Images stored in {final}")
    return final


def _config_text(datapaths, n_blends, seed, excluded_types, mag_low, mag_high, mag_diff,
                 rad_diff, test_ratio, clean, galaxies, train, test):
    """The configuration text of the log (deterministic: no time stamps)."""
    return (
        "Configuration\n=============\n"
        f"Number of blends: {n_blends}\nSeed: {seed}\n"
        f"Input directories: {', '.join(os.path.abspath(p) for p in datapaths)}\n"
        f"Use clean galaxies: {clean}\n\n"
        "Catalog cuts\n------------\n"
        f"Excluded galaxy types: {', '.join(excluded_types) or 'none'}\n"
        f"Lowest magnitude: {mag_low}\nHighest magnitude: {mag_high}\n"
        f"Galaxies: {galaxies.n_input} read, {galaxies.n_gal} after the cuts, "
        f"{train.size} train, {test.size} test (test ratio {test_ratio})\n\n"
        "Blend properties\n----------------\n"
        f"Top difference in magnitude between galaxies: {mag_diff}\n"
        f"Top distance between galaxies as a fraction of radius: {rad_diff}\n"
    )


def _write_log(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
