"""Tests of the DES stamp system: tile assignment, cutting, HDF5 store, STATUS, scripts."""

import csv
import glob
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

from shapepipe.modules.des_stamp import catalog as catmod
from shapepipe.modules.des_stamp.driver import make_stamps, plan_groups
from shapepipe.modules.des_stamp.extract import cut_stamps, extract_tile, stamp_origin
from shapepipe.modules.des_stamp.store import assemble, extract_fits, read_store, write_part
from shapepipe.modules.des_stamp.tiles import assign_tiles, read_geometry, tile_catalog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANDS = ["g", "r", "i", "z", "Y"]
NPIX = 120
SCALE = 1.0 / 3600  # 1"/px: a tile is 2' wide
# Two tiles side by side across RA = 0 and one above: unique areas of 0.03 deg.
TILES = {
    "DES0000+0000": (0.0, 0.0),
    "DES2359+0000": (359.97, 0.0),
    "DES0000+0002": (0.0, 0.03),
}
HALF = 0.015


def tile_wcs(ra_c, dec_c):
    """TAN WCS, north up east left, centred on the tile (1-based CRPIX at the middle)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra_c, dec_c]
    w.wcs.crpix = [(NPIX + 1) / 2.0, (NPIX + 1) / 2.0]
    w.wcs.cd = [[-SCALE, 0.0], [0.0, SCALE]]
    return w


def pixel_image(band_index):
    """An image whose value tells the pixel: 1000*row + col + 1e6*band (exact in float32)."""
    yy, xx = np.mgrid[0:NPIX, 0:NPIX]
    return (1000.0 * yy + xx + 1e6 * band_index).astype(np.float32)


def write_tile(tile_dir, tile, bands=BANDS, compress=False):
    ra_c, dec_c = TILES[tile]
    header = tile_wcs(ra_c, dec_c).to_header()
    header["MAGZERO"] = 30.0
    for b, band in enumerate(bands):
        mask = np.zeros((NPIX, NPIX), np.int32)
        mask[:, 7] = 1  # a bad column
        hdr = header.copy()
        hdr["BAND"] = band
        if compress:
            sci = fits.CompImageHDU(pixel_image(b), header=hdr, quantize_level=0.0,
                                    compression_type="GZIP_2")
            msk = fits.CompImageHDU(mask, header=hdr, compression_type="RICE_1")
            name = f"{tile}_{band}.fits.fz"
        else:
            sci = fits.ImageHDU(pixel_image(b), header=hdr, name="SCI")
            msk = fits.ImageHDU(mask, header=hdr, name="MSK")
            name = f"{tile}_{band}.fits"
        fits.HDUList([fits.PrimaryHDU(), sci, msk]).writeto(os.path.join(tile_dir, name))


def write_geometry_csv(path):
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["TILENAME", "RA_CENT", "DEC_CENT", "URAMIN", "URAMAX", "UDECMIN", "UDECMAX"])
        for tile, (ra, dec) in TILES.items():
            w.writerow([tile, ra, dec, (ra - HALF) % 360, (ra + HALF) % 360, dec - HALF,
                        dec + HALF])


def write_targets(path, ra, dec, ids, tiles=None, status=None):
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["RA", "DEC", "COADD_OBJECT_ID", "TILENAME", "STATUS"])
        for k in range(len(ra)):
            w.writerow([f"{ra[k]:.7f}", f"{dec[k]:.7f}", ids[k],
                        "" if tiles is None else tiles[k], "new" if status is None else status[k]])


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """Three 5-band tiles (one compressed), a CSV geometry table."""
    root = tmp_path_factory.mktemp("des")
    tile_dir = root / "tiles"
    tile_dir.mkdir()
    for tile in TILES:
        write_tile(str(tile_dir), tile, compress=(tile == "DES0000+0002"))
    geom = root / "tile_geometry.csv"
    write_geometry_csv(str(geom))
    return {"root": root, "tile_dir": str(tile_dir), "geom": str(geom)}


# ---------------------------------------------------------------------------- tile assignment

def brute_force(ra, dec, geo):
    ra = np.mod(ra, 360.0)
    out = np.full(ra.size, -1)
    for t in range(len(geo["TILENAME"])):
        lo, hi = geo["URAMIN"][t] % 360, geo["URAMAX"][t] % 360
        in_ra = (ra >= lo) | (ra < hi) if lo > hi else (ra >= lo) & (ra < hi)
        hit = in_ra & (dec >= geo["UDECMIN"][t]) & (dec < geo["UDECMAX"][t]) & (out < 0)
        out[hit] = t
    return out


def des_like_grid():
    """A DES-like tiling: rows of constant Dec, RA width 0.73/cos(dec), rows offset."""
    names, uramin, uramax, udecmin, udecmax = [], [], [], [], []
    h = 0.7306
    for row, d0 in enumerate(np.arange(-70.0, 10.0, h)):
        dc = d0 + h / 2
        n = int(np.ceil(360 * np.cos(np.radians(dc)) / h))
        w = 360.0 / n
        start = (row * 0.37) % w  # rows do not share RA edges; the last tile wraps
        for k in range(n):
            names.append(f"T{row:03d}_{k:03d}")
            uramin.append((start + k * w) % 360)
            uramax.append((start + (k + 1) * w) % 360)
            udecmin.append(d0)
            udecmax.append(d0 + h)
    return {"TILENAME": np.array(names, dtype=object), "URAMIN": np.array(uramin),
            "URAMAX": np.array(uramax), "UDECMIN": np.array(udecmin),
            "UDECMAX": np.array(udecmax)}


def test_assign_matches_brute_force_on_des_like_grid():
    geo = des_like_grid()
    assert len(geo["TILENAME"]) > 5000
    assert np.any(geo["URAMIN"] > geo["URAMAX"])  # wrapping tiles present
    rng = np.random.default_rng(1)
    n = 20000
    ra = rng.uniform(-10, 370, n)
    dec = rng.uniform(-75, 15, n)
    # Points exactly on the edges and corners of tiles, and on RA = 0.
    t = rng.integers(0, len(geo["TILENAME"]), 3000)
    ra = np.concatenate([ra, geo["URAMIN"][t], geo["URAMAX"][t], np.zeros(50), np.full(5, 360.0)])
    dec = np.concatenate([dec, geo["UDECMIN"][t], geo["UDECMAX"][t],
                          rng.uniform(-60, 0, 50), np.full(5, -30.0)])
    got = assign_tiles(ra, dec, geo)
    want = brute_force(ra, dec, geo)
    np.testing.assert_array_equal(got, want)
    top = geo["UDECMAX"].max()
    assert (got[dec >= top] == -1).all() and (got[dec < -70] == -1).all()
    assert (got[(dec > -70) & (dec < top)] >= 0).all()


def test_boundary_rule_and_ra_wrap(tiles):
    geo = read_geometry(tiles["geom"])
    names = list(geo["TILENAME"])
    ra = np.array([0.0, 359.985, 0.015, 359.9849999, 0.0, 0.0, 0.0, 360.0, -0.001, 1.0, np.nan])
    dec = np.array([0.0, 0.0, 0.0, 0.0, 0.015, -0.015, 0.045, 0.0, 0.0, 0.0, 0.0])
    got = [names[i] if i >= 0 else None for i in assign_tiles(ra, dec, geo)]
    assert got == [
        "DES0000+0000",   # centre
        "DES0000+0000",   # URAMIN of the wrapping tile is inclusive
        None,             # URAMAX (0.015) exclusive, no tile east of it
        "DES2359+0000",   # just below URAMIN of the wrapping tile
        "DES0000+0002",   # UDECMAX of the lower tile is exclusive, UDECMIN of the upper inclusive
        "DES0000+0000",   # UDECMIN inclusive
        None,             # UDECMAX of the upper tile exclusive
        "DES0000+0000",   # RA 360 == 0
        "DES0000+0000",   # RA -0.001 == 359.999
        None,
        None,             # non-finite position
    ]


def test_geometry_fits_and_csv_agree(tiles, tmp_path):
    geo = read_geometry(tiles["geom"])
    cols = [fits.Column(name="TILENAME", format="12A", array=list(geo["TILENAME"]))]
    cols += [fits.Column(name=k, format="D", array=geo[k])
             for k in ("URAMIN", "URAMAX", "UDECMIN", "UDECMAX")]
    path = str(tmp_path / "geom.fits")
    fits.BinTableHDU.from_columns(cols).writeto(path)
    geo2 = read_geometry(path)
    assert list(geo2["TILENAME"]) == list(geo["TILENAME"])
    for k in ("URAMIN", "URAMAX", "UDECMIN", "UDECMAX"):
        np.testing.assert_array_equal(geo2[k], geo[k])


def test_geometry_errors_are_clear(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("TILENAME,URAMIN,URAMAX,UDECMIN\nA,1,2,3\n")
    with pytest.raises(ValueError, match="UDECMAX"):
        read_geometry(str(path))
    path.write_text("TILENAME,URAMIN,URAMAX,UDECMIN,UDECMAX\nA,1,2,3,x\n")
    with pytest.raises(ValueError, match="UDECMAX"):
        read_geometry(str(path))


def test_assignment_speed():
    """A million objects against ~10,000 tiles in a few seconds (issue target)."""
    geo = des_like_grid()
    rng = np.random.default_rng(2)
    ra = rng.uniform(0, 360, 1_000_000)
    dec = rng.uniform(-70, 8, 1_000_000)
    t0 = time.perf_counter()
    got = assign_tiles(ra, dec, geo)
    elapsed = time.perf_counter() - t0
    assert (got >= 0).mean() > 0.99
    assert elapsed < 10.0, elapsed


def test_tilemaker_script(tiles, tmp_path):
    rng = np.random.default_rng(3)
    ra = np.mod(rng.uniform(-0.05, 0.05, 300), 360)
    dec = rng.uniform(-0.03, 0.06, 300)
    inp = tmp_path / "in.csv"
    with open(inp, "w", newline="") as handle:  # minimal input: no TILENAME/STATUS columns
        w = csv.writer(handle)
        w.writerow(["RA", "DEC", "COADD_OBJECT_ID", "EXTRA"])
        for k in range(ra.size):
            w.writerow([ra[k], dec[k], f"obj{k}", f"x,{k}"])
    out = tmp_path / "out.csv"
    res = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "des_tilemaker.py"),
                          "--tiles", tiles["geom"], str(inp), str(out)],
                         capture_output=True, text=True, check=True)
    assert "300 objects" in res.stdout
    cat = catmod.read_catalog(str(out))
    assert len(cat) == 300  # nothing deleted
    assert list(cat.col("EXTRA")) == [f"x,{k}" for k in range(300)]  # extra column verbatim
    geo = read_geometry(tiles["geom"])
    want = brute_force(ra, dec, geo)
    names = np.where(want >= 0, geo["TILENAME"][np.maximum(want, 0)], "NONE")
    assert list(cat.col("TILENAME")) == list(names)
    status = cat.col("STATUS")
    assert set(status[want < 0]) == {"no_tile"} and set(status[want >= 0]) == {"new"}
    assert (want < 0).any()


# ---------------------------------------------------------------------------- cutting

@pytest.mark.parametrize("dim", [7, 8])
def test_cut_matches_cutout2d_including_edges(dim):
    rng = np.random.default_rng(4)
    image = rng.normal(size=(40, 50)).astype(np.float32)
    x = rng.uniform(-3, 52, 200)
    y = rng.uniform(-3, 42, 200)
    x0, y0 = stamp_origin(x, y, dim)
    keep = (x0 + dim > 0) & (y0 + dim > 0) & (x0 < 50) & (y0 < 40)
    got = cut_stamps(image, x0[keep], y0[keep], dim)
    for k, (xx, yy) in enumerate(zip(x[keep], y[keep])):
        ref = Cutout2D(image, (xx, yy), dim, mode="partial", fill_value=np.nan).data
        np.testing.assert_array_equal(got[k], ref)
    assert np.isnan(got).any() and np.isfinite(got).any()


def test_centre_convention_and_header_wcs(tiles):
    """The object is within half a pixel of the stamp centre; the header WCS is exact."""
    tile = "DES0000+0000"
    w = tile_wcs(*TILES[tile])
    rng = np.random.default_rng(5)
    # Positions at exact pixel centres and at random sub-pixel offsets, including tile edges.
    px = np.concatenate([[10.0, 60.0, 0.0, 119.0, 60.4, 60.6], rng.uniform(-0.4, 119.4, 30)])
    py = np.concatenate([[20.0, 60.0, 0.0, 119.0, 60.4, 60.6], rng.uniform(-0.4, 119.4, 30)])
    ra, dec = w.all_pix2world(px, py, 0)
    for dim in (9, 10):
        res = extract_tile(tile, ra, dec, [str(i) for i in range(px.size)], tiles["tile_dir"],
                           BANDS, dim)
        assert res["ok"].all()
        c = dim // 2
        # The tile position as the code sees it (integer positions round-trip to 1e-11 pixel,
        # so for even sizes the tie x - D/2 = integer may go either way).
        tx, ty = w.all_world2pix(ra, dec, 0)
        for k in range(px.size):
            hdr = fits.Header.fromstring(res["header"][k, 2])
            sw = WCS(hdr)
            sx, sy = sw.all_world2pix(ra[k], dec[k], 0)
            np.testing.assert_allclose([sx, sy], [tx[k] - np.ceil(tx[k] - dim / 2),
                                                   ty[k] - np.ceil(ty[k] - dim / 2)], atol=1e-6)
            assert abs(sx - (dim - 1) / 2) <= 0.5 + 1e-9 and abs(sy - (dim - 1) / 2) <= 0.5 + 1e-9
            assert hdr["NAXIS1"] == dim and hdr["BAND"] == "i" and hdr["OBJ_ID"] == str(k)
            # The pixel holding the object is where the WCS says it is.
            ix, iy = int(np.round(sx)), int(np.round(sy))
            val = res["data"][k, iy, ix, 2]
            assert val == 1000 * np.round(py[k]) + np.round(px[k]) + 2e6
        # Exact pixel centres of odd stamps: the object's pixel is the central one.
        if dim % 2:
            assert res["data"][0, c, c, 0] == 1000 * 20 + 10
            assert res["data"][1, c, c, 4] == 1000 * 60 + 60 + 4e6


def test_edges_nan_and_mask_counts(tiles):
    tile = "DES0000+0000"
    w = tile_wcs(*TILES[tile])
    dim = 11
    px = np.array([0.0, 60.0, 119.0, 60.0, 7.0])
    py = np.array([0.0, 60.0, 119.0, 1000.0, 60.0])
    ra, dec = w.all_pix2world(px, py, 0)
    res = extract_tile(tile, ra, dec, ["a", "b", "c", "far", "col"], tiles["tile_dir"], BANDS, dim)
    assert list(res["ok"]) == [True, True, True, False, True]
    assert "no overlap" in res["reason"][3]
    assert list(res["catalog"]) == ["a", "b", "c", "col"]
    d = res["data"]
    # Corner objects: 5 rows and 5 columns outside the tile are NaN.
    assert np.isnan(d[0, :5, :, 0]).all() and np.isnan(d[0, :, :5, 0]).all()
    assert np.isfinite(d[0, 5:, 5:, :]).all()
    assert np.isnan(d[2, 6:, :, 0]).all() and np.isfinite(d[2, :6, :6, 0]).all()
    outside = dim * dim - 6 * 6
    # Object a: 6 x 6 pixels on the tile (columns 0-5: the bad column 7 is not in it).
    assert list(res["masks"][0]) == [outside] * 5
    assert list(res["masks"][1]) == [0] * 5
    assert list(res["masks"][2]) == [outside] * 5
    assert list(res["masks"][3]) == [dim] * 5  # the bad column through the middle
    assert np.isfinite(d[1]).all()


def test_missing_band_file_is_a_clear_error(tiles):
    with pytest.raises(ValueError, match=r"DES0000\+0000_u.fits"):
        extract_tile("DES0000+0000", [0.0], [0.0], ["a"], tiles["tile_dir"], ["g", "u"], 5)


# ---------------------------------------------------------------------------- store + driver

def targets_on(tile, n, seed, margin=0.0):
    """Random objects on a tile image; margin < 0 keeps them that far inside the edges."""
    rng = np.random.default_rng(seed)
    w = tile_wcs(*TILES[tile])
    px = rng.uniform(-margin, NPIX - 1 + margin, n)
    py = rng.uniform(-margin, NPIX - 1 + margin, n)
    ra, dec = w.all_pix2world(px, py, 0)
    return ra, dec, px, py


def test_49_objects_give_245_fits_and_2_ids_give_10(tiles, tmp_path):
    """The original sample scenario, through the command-line scripts."""
    ra, dec, px, py = targets_on("DES0000+0000", 49, 6, margin=-8)  # in the unique area
    ids = [f"{1000 + k}" for k in range(49)]
    cat = tmp_path / "targets.csv"
    write_targets(str(cat), ra, dec, ids)
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "des_tilemaker.py"), "--tiles",
                    tiles["geom"], str(cat), str(cat)], check=True, capture_output=True)
    out = tmp_path / "out"
    out.mkdir()
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "catalog_to_stamps.py"), "--tile-dir",
         tiles["tile_dir"], "--processes", "1", "--dimension", "32", "--bands", "grizY", "-q",
         str(cat), "1", "1", str(out / "stamps")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    store = out / "stamps_001.hdf5"
    assert store.exists() and not (out / "stamps_001.parts").exists()
    with h5py.File(store) as h5:
        assert h5.attrs["bands"] == "grizY" and h5.attrs["dimension"] == 32
        assert "description" in h5.attrs
        grp = h5["stamps/DES0000+0000"]
        assert grp["data"].shape == (49, 32, 32, 5) and grp["data"].dtype == np.float32
        assert grp["masks"].shape == (49, 5) and grp["header"].shape == (49, 5)
        assert grp["data"].compression == "gzip" and grp["data"].chunks == (1, 32, 32, 5)
    assert set(catmod.read_catalog(str(cat)).col("STATUS")) == {"done"}
    script = os.path.join(REPO, "scripts", "fits_extract.py")
    all_dir, two_dir = tmp_path / "all", tmp_path / "two"
    subprocess.run([sys.executable, script, str(store), str(all_dir)], check=True,
                   capture_output=True)
    assert len(os.listdir(all_dir)) == 245
    subprocess.run([sys.executable, script, str(store), str(two_dir), "1003,1010"], check=True,
                   capture_output=True)
    assert sorted(os.listdir(two_dir)) == sorted(f"{i}_{b}.fits" for i in (1003, 1010)
                                                 for b in BANDS)
    with fits.open(two_dir / "1010_r.fits") as hdul:
        sw = WCS(hdul[0].header)
        sx, sy = sw.all_world2pix(ra[10], dec[10], 0)
        assert abs(sx - 15.5) <= 0.5 and abs(sy - 15.5) <= 0.5
        assert hdul[0].data[int(np.round(sy)), int(np.round(sx))] == \
            1000 * np.round(py[10]) + np.round(px[10]) + 1e6
    # A file of ids, one missing: exit code 1, the present one written.
    idfile = tmp_path / "ids.txt"
    idfile.write_text("1020\nnope\n")
    r = subprocess.run([sys.executable, script, str(store), str(tmp_path / "f"), str(idfile)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "nope" in r.stderr
    assert len(os.listdir(tmp_path / "f")) == 5


def make_tiled_catalog(path, tiles, n_per_tile=(30, 12, 20), extra_ids=("off",)):
    ra, dec, ids = [], [], []
    for (tile, n), seed in zip(zip(TILES, n_per_tile), (10, 11, 12)):
        r, d, _, _ = targets_on(tile, n, seed)
        # Keep only points in the unique area, as the tilemaker would assign them.
        ra.extend(r)
        dec.extend(d)
        ids.extend(f"{tile[:7]}_{k}" for k in range(n))
    ra.append(10.0)
    dec.append(10.0)
    ids.extend(extra_ids)
    write_targets(path, np.array(ra), np.array(dec), ids)
    cat = catmod.read_catalog(path)
    tile_catalog(cat, read_geometry(tiles["geom"]))
    catmod.write_catalog(cat, path)
    return catmod.read_catalog(path)


def test_driver_groups_status_and_rerun(tiles, tmp_path):
    cat_path = str(tmp_path / "t.csv")
    cat = make_tiled_catalog(cat_path, tiles)
    counts = {t: int((cat.col("TILENAME") == t).sum()) for t in TILES}
    out = str(tmp_path / "out")
    s = make_stamps(cat_path, tiles["tile_dir"], out, "st", tiles_per_output=2, dimension=16,
                    processes=2)
    assert [os.path.basename(p) for p in s["outputs"]] == ["st_001.hdf5", "st_002.hdf5"]
    order = sorted(TILES, key=lambda t: (-counts[t], t))
    st1 = read_store(os.path.join(out, "st_001.hdf5"))
    st2 = read_store(os.path.join(out, "st_002.hdf5"))
    assert list(st1["tiles"]) == order[:2] and list(st2["tiles"]) == order[2:]
    cat2 = catmod.read_catalog(cat_path)
    assert len(cat2) == len(cat)
    status = cat2.col("STATUS")
    assert set(status[cat2.col("TILENAME") != "NONE"]) == {"done"}
    assert set(status[cat2.col("TILENAME") == "NONE"]) == {"no_tile"}
    assert status[list(cat2.col("COADD_OBJECT_ID")).index("off")] == "no_tile"
    assert not os.path.exists(catmod.journal_path(cat_path))
    # Rows of the store follow the catalogue, every band at its index.
    ra, dec = cat2.radec()
    for store in (st1, st2):
        for tile, grp in store["tiles"].items():
            rows = np.nonzero(cat2.col("TILENAME") == tile)[0]
            assert list(grp["catalog"]) == list(cat2.col("COADD_OBJECT_ID")[rows])
            for b in range(5):
                assert np.nanmin(grp["data"][..., b]) >= 1e6 * b
                assert np.nanmax(grp["data"][..., b]) < 1e6 * (b + 1)
    # A rerun has nothing to do and writes nothing.
    s2 = make_stamps(cat_path, tiles["tile_dir"], out, "st", tiles_per_output=2, dimension=16)
    assert s2["outputs"] == [] and s2["tiles"] == []
    assert sorted(os.listdir(out)) == ["st_001.hdf5", "st_002.hdf5"]


def test_failed_objects_and_tiles_do_not_shift_rows(tiles, tmp_path):
    tile_dir = tmp_path / "tiles"
    tile_dir.mkdir()
    for tile in TILES:
        # DES0000+0002 misses its z band: that whole tile must fail.
        bands = [b for b in BANDS if not (tile == "DES0000+0002" and b == "z")]
        write_tile(str(tile_dir), tile, bands=bands)
    cat_path = str(tmp_path / "t.csv")
    make_tiled_catalog(cat_path, tiles)
    cat = catmod.read_catalog(cat_path)
    # Move one object of DES0000+0000 far off its image (still tagged with that tile).
    rows0 = np.nonzero(cat.col("TILENAME") == "DES0000+0000")[0]
    cat.col("RA")[rows0[3]] = "5.0"
    catmod.write_catalog(cat, cat_path)
    out = str(tmp_path / "out")
    s = make_stamps(cat_path, str(tile_dir), out, "st", tiles_per_output=3, dimension=12)
    assert "DES0000+0002" in s["tile_errors"]
    cat2 = catmod.read_catalog(cat_path)
    status = cat2.col("STATUS")
    t = cat2.col("TILENAME")
    assert all(v.startswith("error: tile file not found") and "DES0000+0002_z.fits" in v
               for v in status[t == "DES0000+0002"])
    assert status[rows0[3]].startswith("error: no overlap")
    assert set(np.delete(status[t == "DES0000+0000"], 3)) == {"done"}
    store = read_store(s["outputs"][0])
    assert "DES0000+0002" not in store["tiles"]
    grp = store["tiles"]["DES0000+0000"]
    ids = cat2.col("COADD_OBJECT_ID")[rows0]
    assert list(grp["catalog"]) == list(np.delete(ids, 3))
    # Each stamp's header and centre pixel belong to its own object.
    ra, dec = cat2.radec()
    w = tile_wcs(*TILES["DES0000+0000"])
    for k, row in enumerate(np.delete(rows0, 3)):
        x, y = w.all_world2pix(ra[row], dec[row], 0)
        hdr = fits.Header.fromstring(grp["header"][k, 4])
        assert hdr["OBJ_ID"] == ids[list(rows0).index(row)]
        ix, iy = int(np.round(x)), int(np.round(y))
        sx, sy = ix - int(np.ceil(x - 6)), iy - int(np.ceil(y - 6))
        if 0 <= sx < 12 and 0 <= sy < 12 and 0 <= ix < NPIX and 0 <= iy < NPIX:
            assert grp["data"][k, sy, sx, 4] == 1000 * iy + ix + 4e6
    # Once the band exists, a rerun retries the errors only, in a new output number.
    hdr = fits.getheader(tile_dir / "DES0000+0002_g.fits", 1)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(pixel_image(3), header=hdr),
                  fits.ImageHDU(np.zeros((NPIX, NPIX), np.int32), header=hdr)]
                 ).writeto(tile_dir / "DES0000+0002_z.fits")
    s2 = make_stamps(cat_path, str(tile_dir), out, "st", tiles_per_output=3, dimension=12)
    assert [os.path.basename(p) for p in s2["outputs"]] == ["st_002.hdf5"]
    assert sorted(s2["tiles"]) == ["DES0000+0000", "DES0000+0002"]
    status = catmod.read_catalog(cat_path).col("STATUS")
    assert set(status[t == "DES0000+0002"]) == {"done"}
    assert status[rows0[3]].startswith("error: no overlap")


def test_interrupted_run_recovers_parts_and_journal(tiles, tmp_path):
    cat_path = str(tmp_path / "t.csv")
    cat = make_tiled_catalog(cat_path, tiles)
    out = tmp_path / "out"
    out.mkdir()
    # Simulate a run killed after one tile: its part file and journal exist, nothing else.
    rows = np.nonzero(cat.col("TILENAME") == "DES0000+0000")[0]
    ra, dec = cat.radec()
    res = extract_tile("DES0000+0000", ra[rows], dec[rows], cat.col("COADD_OBJECT_ID")[rows],
                       tiles["tile_dir"], BANDS, 10)
    write_part(str(out / "st_001.hdf5"), "DES0000+0000", res, BANDS, 10)
    catmod.append_journal(cat_path, rows, cat.col("COADD_OBJECT_ID")[rows],
                          np.full(rows.size, "done", dtype=object))
    with open(catmod.journal_path(cat_path), "a") as handle:
        handle.write("5,torn")  # a torn last line must be ignored
    replayed = catmod.read_catalog(cat_path)
    assert list(replayed.col("STATUS")[rows]) == ["done"] * rows.size
    s = make_stamps(cat_path, tiles["tile_dir"], str(out), "st", tiles_per_output=5,
                    dimension=10)
    assert list(read_store(str(out / "st_001.hdf5"))["tiles"]) == ["DES0000+0000"]
    assert sorted(s["tiles"]) == ["DES0000+0002", "DES2359+0000"]
    assert [os.path.basename(p) for p in s["outputs"]] == ["st_002.hdf5"]
    assert set(catmod.read_catalog(cat_path).col("STATUS")[rows]) == {"done"}


def test_assemble_merges_and_replaces(tiles, tmp_path):
    ra, dec, _, _ = targets_on("DES0000+0000", 4, 20)
    res = extract_tile("DES0000+0000", ra, dec, list("abcd"), tiles["tile_dir"], BANDS, 6)
    out = str(tmp_path / "x_001.hdf5")
    write_part(out, "DES0000+0000", res, BANDS, 6)
    assert assemble(out, BANDS, 6) == ["DES0000+0000"]
    res2 = extract_tile("DES0000+0000", ra[:2], dec[:2], list("ab"), tiles["tile_dir"], BANDS, 6)
    write_part(out, "DES0000+0000", res2, BANDS, 6)
    write_part(out, "OTHER", res2, BANDS, 6)
    assert sorted(assemble(out, BANDS, 6)) == ["DES0000+0000", "OTHER"]
    st = read_store(out)
    assert list(st["tiles"]["DES0000+0000"]["catalog"]) == ["a", "b"]
    res3 = extract_tile("DES0000+0000", ra[:2], dec[:2], list("ab"), tiles["tile_dir"],
                        BANDS[:3], 6)
    write_part(out, "X", res3, BANDS[:3], 6)
    with pytest.raises(ValueError, match="bands"):
        assemble(out, BANDS, 6)


def test_plan_groups_sorted_and_limited():
    names = np.array(["A"] * 3 + ["B"] * 5 + ["C"] * 5 + ["D"] * 1, dtype=object)
    pending = np.ones(names.size, bool)
    pending[0] = False
    groups = plan_groups(names, pending, 2)
    assert [[t for t, _ in g] for g in groups] == [["B", "C"], ["A", "D"]]
    assert list(groups[1][0][1]) == [0, 1, 2]  # a tile is processed whole
    assert len(plan_groups(names, pending, 1, n_outputs=2)) == 2


def test_catalogue_errors_name_the_row(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("RA,DEC,COADD_OBJECT_ID\n1,2,a\n1,x,b\n")
    cat = catmod.read_catalog(str(p))
    with pytest.raises(ValueError, match=r"row 3: DEC = 'x'"):
        cat.radec()
    p.write_text("RA,DEC\n1,2\n")
    with pytest.raises(ValueError, match="COADD_OBJECT_ID"):
        catmod.read_catalog(str(p))
    p.write_text("RA,DEC,COADD_OBJECT_ID\n1,2\n")
    with pytest.raises(ValueError, match="row 2 has 2 fields"):
        catmod.read_catalog(str(p))


def test_extract_fits_headers_roundtrip(tiles, tmp_path):
    ra, dec, _, _ = targets_on("DES2359+0000", 3, 30)
    res = extract_tile("DES2359+0000", ra, dec, ["p", "q", "r"], tiles["tile_dir"], BANDS, 8)
    out = str(tmp_path / "s_001.hdf5")
    write_part(out, "DES2359+0000", res, BANDS, 8)
    assemble(out, BANDS, 8)
    files = extract_fits(out, str(tmp_path / "f"), ["q"])
    assert len(files) == 5
    with fits.open(tmp_path / "f" / "q_Y.fits") as hdul:
        np.testing.assert_array_equal(hdul[0].data, res["data"][1, :, :, 4])
        sw = WCS(hdul[0].header)
        c = SkyCoord(ra[1], dec[1], unit="deg")
        sx, sy = sw.world_to_pixel(c)
        assert abs(sx - 3.5) <= 0.5 and abs(sy - 3.5) <= 0.5
        assert hdul[0].header["TILENAME"] == "DES2359+0000"


# ---------------------------------------------------------------------------- runner


@pytest.fixture()
def setup(tmp_path):
    tile_dir = tmp_path / "tiles"
    tile_dir.mkdir()
    for tile in TILES:
        write_tile(str(tile_dir), tile)
    geom = tmp_path / "geom.csv"
    write_geometry_csv(str(geom))
    inp = tmp_path / "input"
    inp.mkdir()
    ra, dec, ids = [], [], []
    for tile, seed in zip(TILES, (1, 2, 3)):
        r, d, _, _ = targets_on(tile, 8, seed, margin=-8)
        ra.extend(r)
        dec.extend(d)
        ids.extend(f"{tile}:{k}" for k in range(8))
    ra.append(20.0)
    dec.append(0.0)
    ids.append("nowhere")
    # As the simulation writes it: TILENAME empty, STATUS new.
    write_targets(str(inp / "targets.csv"), np.array(ra), np.array(dec), ids)
    return tmp_path, tile_dir, geom, inp


def pipeline_main(argv):
    from shapepipe.run import main

    return main(argv)


def write_config(tmp_path, tile_dir, geom, inp, extra=""):
    cfg = tmp_path / "config_des.ini"
    cfg.write_text(f"""[DEFAULT]
RUN_NAME = des_test
[EXECUTION]
MODULE = des_stamp_runner
MODE = SMP
[FILE]
INPUT_DIR = {inp}
OUTPUT_DIR = {tmp_path / 'out'}
[JOB]
SMP_BATCH_SIZE = 1
[DES_STAMP_RUNNER]
TILE_DIR = {tile_dir}
TILE_GEOMETRY = {geom}
BANDS = grizY
DIMENSION = 24
TILES_PER_OUTPUT = 2
PROCESSES = 2
{extra}""")
    return str(cfg)


def test_runner_end_to_end_and_rerun(setup):
    tmp_path, tile_dir, geom, inp = setup
    cfg = write_config(tmp_path, tile_dir, geom, inp)
    assert pipeline_main(["-c", cfg]) == 0
    outs = sorted(glob.glob(str(tmp_path / "out" / "des_test*" / "des_stamp_runner" / "output"
                                / "*")))
    names = [os.path.basename(p) for p in outs]
    assert names == ["des_stamps_001.hdf5", "des_stamps_002.hdf5", "des_stamps_catalog.csv"]
    tiles = {}
    for p in outs[:2]:
        st = read_store(p)
        assert st["bands"] == BANDS and st["dimension"] == 24
        for t, grp in st["tiles"].items():
            tiles[t] = list(grp["catalog"])
            assert grp["data"].shape == (8, 24, 24, 5)
    assert sorted(tiles) == sorted(TILES)
    for t, ids in tiles.items():
        assert ids == [f"{t}:{k}" for k in range(8)]
    cat = catmod.read_catalog(str(inp / "targets.csv"))
    status = dict(zip(cat.col("COADD_OBJECT_ID"), cat.col("STATUS")))
    assert status.pop("nowhere") == "no_tile"
    assert set(status.values()) == {"done"}
    # A second run finds nothing to do.
    assert pipeline_main(["-c", cfg]) == 0
    runs = sorted(glob.glob(str(tmp_path / "out" / "des_test*")))
    second = os.listdir(os.path.join(runs[-1], "des_stamp_runner", "output"))
    assert second == ["des_stamps_catalog.csv"]


def test_runner_config_errors(setup):
    tmp_path, tile_dir, geom, inp = setup
    cfg = write_config(tmp_path, tmp_path / "no_such_dir", geom, inp)
    assert pipeline_main(["-c", cfg]) == 2
    cfg = write_config(tmp_path, tile_dir, geom, inp, "COMPRESSION = bzip9\n")
    assert pipeline_main(["-c", cfg]) == 2
    cfg = write_config(tmp_path, tile_dir, tmp_path / "no_geom.fits", inp)
    assert pipeline_main(["-c", cfg]) == 2
    (tmp_path / "bad_geom.csv").write_text("TILENAME,URAMIN\nA,1\n")
    cfg = write_config(tmp_path, tile_dir, tmp_path / "bad_geom.csv", inp)
    assert pipeline_main(["-c", cfg]) == 2
    assert not glob.glob(str(tmp_path / "out" / "des_test*" / "des_stamp_runner"))


# ---------------------------------------------------------------------------- simulated tiles

@pytest.fixture(scope="module")
def sim_des(tmp_path_factory):
    des = pytest.importorskip("shapepipe.sim.des")
    root = tmp_path_factory.mktemp("simdes") / "des"
    des.make_des(str(root), seed=7)
    return root


@pytest.mark.slow
def test_simulated_des_tiles_end_to_end(sim_des, tmp_path):
    """Tile assignment agrees with the simulation's truth; stars sit at the stamp centres."""
    geo_path = str(sim_des / "tile_geometry.fits")
    cat_path = str(tmp_path / "targets.csv")
    cat = catmod.read_catalog(str(sim_des / "targets.csv"))
    tile_catalog(cat, read_geometry(geo_path))
    catmod.write_catalog(cat, cat_path)
    truth = fits.getdata(sim_des / "truth.fits", 1)
    tname = {str(i): (t.strip() if isinstance(t, str) else t.decode().strip()) or "NONE"
             for i, t in zip(truth["COADD_OBJECT_ID"], truth["TILENAME"])}
    ids = cat.col("COADD_OBJECT_ID")
    assert list(cat.col("TILENAME")) == [tname[i] for i in ids]
    assert (cat.col("TILENAME") == "NONE").any() and (cat.col("TILENAME") != "NONE").any()

    out = str(tmp_path / "out")
    s = make_stamps(cat_path, str(sim_des / "tiles"), out, "sim", tiles_per_output=2,
                    dimension=32, processes=2)
    assert s["error"] == 0 and s["tile_errors"] == {}
    n_on = int((cat.col("TILENAME") != "NONE").sum())
    assert s["done"] == n_on
    is_star = {str(i): bool(v) for i, v in zip(truth["COADD_OBJECT_ID"], truth["IS_STAR"])}
    mag_i = {str(i): float(v) for i, v in zip(truth["COADD_OBJECT_ID"], truth["MAG_I"])}
    offsets = []
    yy, xx = np.mgrid[0:32, 0:32]
    for path in s["outputs"]:
        for grp in read_store(path)["tiles"].values():
            for k, oid in enumerate(grp["catalog"]):
                img = grp["data"][k, :, :, 2]
                if is_star[oid] and mag_i[oid] < 21 and grp["masks"][k, 2] == 0:
                    hdr = fits.Header.fromstring(grp["header"][k, 2])
                    row = list(ids).index(oid)
                    sx, sy = WCS(hdr).all_world2pix(float(cat.col("RA")[row]),
                                                     float(cat.col("DEC")[row]), 0)
                    # The WCS puts the star within half a pixel of the stamp centre...
                    assert abs(sx - 15.5) <= 0.5 + 1e-6 and abs(sy - 15.5) <= 0.5 + 1e-6
                    # ... and the light is there (centroid in a 7x7 box around it).
                    box = (abs(xx - sx) < 4) & (abs(yy - sy) < 4)
                    wgt = np.where(box, np.clip(img, 0, None), 0)
                    offsets.append(((wgt * xx).sum() / wgt.sum() - sx,
                                    (wgt * yy).sum() / wgt.sum() - sy))
    offsets = np.array(offsets)
    assert len(offsets) >= 5
    # Blends move a few centroids; the typical star is centred to a few hundredths of a pixel.
    assert np.all(np.abs(np.median(offsets, axis=0)) < 0.05), np.median(offsets, axis=0)
    assert np.mean(np.hypot(*offsets.T) < 0.2) > 0.8


def test_killed_run_keeps_finished_tiles(tiles, tmp_path, monkeypatch):
    """A run stopped after its first tile: that tile is stored and marked, the rest redone."""
    from shapepipe.modules.des_stamp import driver

    cat_path = str(tmp_path / "t.csv")
    make_tiled_catalog(cat_path, tiles)
    real_work = driver._work
    calls = []

    def work_then_die(task):
        if calls:
            raise KeyboardInterrupt  # the run is killed while cutting the second tile
        calls.append(task[0])
        return real_work(task)

    monkeypatch.setattr(driver, "_work", work_then_die)
    out = str(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        make_stamps(cat_path, tiles["tile_dir"], out, "k", tiles_per_output=3, dimension=8)
    first = calls[0]
    cat = catmod.read_catalog(cat_path, replay_journal=False)  # the CSV itself, no journal
    t = cat.col("TILENAME")
    assert set(cat.col("STATUS")[t == first]) == {"done"}
    assert set(cat.col("STATUS")[(t != first) & (t != "NONE")]) == {"new"}
    assert os.path.exists(os.path.join(out, "k_001.parts", f"{first}.hdf5"))
    monkeypatch.setattr(driver, "_work", real_work)
    s = make_stamps(cat_path, tiles["tile_dir"], out, "k", tiles_per_output=3, dimension=8)
    assert first not in s["tiles"] and len(s["tiles"]) == 2
    assert list(read_store(os.path.join(out, "k_001.hdf5"))["tiles"]) == [first]
    assert len(read_store(os.path.join(out, "k_002.hdf5"))["tiles"]) == 2
    assert set(catmod.read_catalog(cat_path).col("STATUS")[t != "NONE"]) == {"done"}
