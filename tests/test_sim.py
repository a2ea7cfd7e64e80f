"""Tests of shapepipe.sim: PSF truth, WCS, determinism, paired fields, DES tiles."""

import csv
import glob
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from shapepipe.sim import (
    SimError,
    make_catalog,
    make_survey,
    render_ccd,
    tiny_params,
    true_psf,
    true_psf_params,
)
from shapepipe.sim import geometry as geo
from shapepipe.sim.render import FLAG_BAD, FLAG_COSMIC, FLAG_SATURATED
from shapepipe.sim.survey import scene_positions
from shapepipe.utils.lensing import shear_positions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 11


def _hashes(root):
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "data"
    make_survey(str(root), seed=SEED, params=tiny_params(), shear=(0.03, -0.02))
    return str(root)


@pytest.fixture(scope="module")
def ccd_render():
    params = tiny_params()
    cat = make_catalog(params, SEED)
    return params, cat, render_ccd(params, SEED, 0, 1, cat)


def _window_centroid(img, x, y, sigma=2.0, n_iter=10):
    """Gaussian-windowed centroid (0-based numpy coords) around (x, y)."""
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    for _ in range(n_iter):
        w = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) * img
        x, y = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    return x, y


# --------------------------------------------------------------------------- layout and files

def test_tree_and_headers(tiny):
    params = tiny_params()
    # The compressed weight map comes back as rendered (quantisation step 1e-5 of the median).
    cat = make_catalog(params, SEED)
    moved = scene_positions(cat, (0.03, -0.02), geo.tile_center(*params.tile_number))
    res = render_ccd(params, SEED, 1, 0, cat, shears=((0.03, -0.02),), hsm=False,
                     positions=[moved])
    stored = fits.getdata(os.path.join(tiny, "exposures", "weight-2000002.fits.fz"), 1)
    assert np.array_equal(stored == 0, res["weight"] == 0)
    assert np.allclose(stored, res["weight"], rtol=2e-5, atol=0)
    assert np.array_equal(fits.getdata(os.path.join(tiny, "exposures", "flag-2000002.fits.fz"), 1),
                          res["flag"])
    for exp in params.exposures:
        for kind in ("image", "weight", "flag"):
            path = os.path.join(tiny, "exposures", f"{kind}-{exp}.fits.fz")
            with fits.open(path) as hdul:
                assert len(hdul) == 1 + 2
                assert hdul[0].header["EXPNUM"] == exp
                h = hdul[1].header
                assert h["EXTNAME"] == "ccd00" and hdul[2].header["EXTNAME"] == "ccd01"
                for key in ("GAIN", "SATURATE", "EXPTIME", "FILTER", "DATASEC", "MAGZP",
                            "PHOTZP", "RDNOISE", "MJD-OBS", "AIRMASS", "CRPIX1", "CRVAL2",
                            "CD1_1", "CD2_2", "DETSEC"):
                    assert key in h, key
                assert h["CTYPE1"] == "RA---TAN"
                assert abs(abs(h["CD1_1"]) * 3600 - 0.187) < 1e-9
                data = hdul[1].data
                assert data.shape == (params.ccd_ny, params.ccd_nx)
                if kind == "flag":
                    assert data.dtype.kind == "i"
    with fits.open(os.path.join(tiny, "tiles", "CFIS_image-270-283.fits")) as hdul:
        hist = [str(c) for c in hdul[0].header["HISTORY"]]
        assert hist == [f"input exposure {e}p.fits.fz" for e in params.exposures]
        assert hdul[0].data.shape == (params.tile_ny, params.tile_nx)
    ref = fits.getdata(os.path.join(tiny, "star_cat", "ref_stars.fits"), 1)
    assert set(("RA", "DEC", "MAG")) <= set(ref.names) and len(ref) > 50
    meta = json.load(open(os.path.join(tiny, "truth", "survey.json")))
    assert meta["seed"] == SEED and meta["tile"] == "270-283"


def test_weight_flags_and_saturation(ccd_render):
    _, _, res = ccd_render
    flag, weight, image = res["flag"], res["weight"], res["images"][0]
    assert np.all(weight[flag != 0] == 0)
    assert np.all(weight[flag == 0] > 0)
    assert (flag & FLAG_COSMIC).any()
    sat = (flag & FLAG_SATURATED) != 0
    if sat.any():
        assert np.allclose(image[sat], geo.SATURATE)
        # Bleed trails run along columns: saturated runs taller than wide.
        ys, xs = np.nonzero(sat)
        assert np.ptp(ys) >= np.ptp(xs)
    # Background noise level agrees with the weight (inverse variance).
    good = (flag == 0)
    resid = (image - res["sky"])[good]
    clipped = resid[np.abs(resid) < 5 * np.median(1 / np.sqrt(weight[good]))]
    mad_sigma = 1.4826 * np.median(np.abs(clipped - np.median(clipped)))
    assert mad_sigma == pytest.approx(np.median(1 / np.sqrt(weight[good])), rel=0.08)


def test_bad_columns_flagged():
    params = tiny_params()
    params.n_bad_columns = 4
    res = render_ccd(params, 3, 0, 0, make_catalog(params, 3), hsm=False)
    bad = (res["flag"] & FLAG_BAD) != 0
    assert bad.any()
    cols = np.unique(np.nonzero(bad)[1])
    assert np.all(res["images"][0][bad] == 0)
    assert cols.size <= 12


# --------------------------------------------------------------------------- PSF truth

def test_psf_measured_on_stars_matches_truth(ccd_render):
    """HSM on bright unsaturated stars of the noisy image agrees with the PSF truth."""
    import galsim

    params, cat, res = ccd_render
    ps = res["psf_stars"]
    image = res["images"][0] - res["sky"]
    flag = res["flag"]
    ny, nx = image.shape
    h = 12
    measured = []
    for k in np.flatnonzero((ps["MAG"] > 16.0) & (ps["MAG"] < 19.0) & (ps["SATURATED"] == 0)):
        ix = int(np.floor(ps["X"][k] + 0.5)) - 1
        iy = int(np.floor(ps["Y"][k] + 0.5)) - 1
        if ix < h or iy < h or ix >= nx - h or iy >= ny - h:
            continue
        if flag[iy - h : iy + h + 1, ix - h : ix + h + 1].any():
            continue
        stamp = galsim.ImageF(np.ascontiguousarray(image[iy - h : iy + h + 1, ix - h : ix + h + 1]),
                              scale=1.0)
        mom = stamp.FindAdaptiveMom(strict=False)
        if mom.moments_status != 0:
            continue
        measured.append((mom.moments_sigma, mom.observed_shape.g1, mom.observed_shape.g2,
                         ps["HSM_SIGMA"][k], ps["HSM_G1"][k], ps["HSM_G2"][k]))
    m = np.array(measured)
    assert len(m) >= 10
    # Neighbours bias a few stamps: compare medians of the differences.
    assert np.median(m[:, 0] / m[:, 3]) == pytest.approx(1.0, abs=0.02)
    assert abs(np.median(m[:, 1] - m[:, 4])) < 0.006
    assert abs(np.median(m[:, 2] - m[:, 5])) < 0.006
    # The truth varies across the focal plane and the measurement follows it.
    assert np.ptp(m[:, 3]) > 0.05
    assert np.corrcoef(m[:, 0], m[:, 3])[0, 1] > 0.5
    # FWHM range of the model.
    assert np.all((ps["FWHM"] >= 0.6) & (ps["FWHM"] <= 0.8))


def test_true_psf_function_matches_table(tiny):
    truth = os.path.join(tiny, "truth")
    ps = fits.getdata(os.path.join(truth, "psf_stars.fits"), 1)
    k = int(np.flatnonzero(ps["EXP_NUM"] == 2000002)[3])
    exp, ccd, x, y = int(ps["EXP_NUM"][k]), int(ps["CCD"][k]), ps["X"][k], ps["Y"][k]
    fwhm, beta, g1, g2 = true_psf_params(truth, exp, ccd, x, y)
    assert float(fwhm) == pytest.approx(ps["FWHM"][k], rel=1e-6)
    assert float(g1) == pytest.approx(ps["G1"][k], abs=1e-6)
    psf = true_psf(truth, exp, ccd, x, y)
    mom = psf.drawImage(nx=49, ny=49, scale=1.0,
                        offset=(x - np.floor(x + 0.5), y - np.floor(y + 0.5))).FindAdaptiveMom()
    assert mom.moments_sigma == pytest.approx(ps["HSM_SIGMA"][k], rel=1e-4)
    with pytest.raises(KeyError, match="no PSF model"):
        true_psf_params(truth, 1234567, 0, 1.0, 1.0)


# --------------------------------------------------------------------------- WCS

def test_star_position_through_exposure_and_tile_wcs(tiny):
    """RA/Dec of bright stars map, through the file WCSs, to where their light is."""
    objects = fits.getdata(os.path.join(tiny, "truth", "objects.fits"), 1)
    stars = objects[(objects["IS_STAR"] == 1) & (objects["MAG"] > 16) & (objects["MAG"] < 18.5)]
    checked = {"exp": [], "tile": []}
    weights = fits.open(os.path.join(tiny, "exposures", "weight-2000002.fits.fz"))
    tile_w = fits.getdata(os.path.join(tiny, "tiles", "CFIS_weight-270-283.fits"))
    with fits.open(os.path.join(tiny, "exposures", "image-2000002.fits.fz")) as hdul, \
            fits.open(os.path.join(tiny, "tiles", "CFIS_image-270-283.fits")) as tile:
        targets = [("exp", hdul[i].data - hdul[i].header["SKYLEVEL"], weights[i].data,
                    WCS(hdul[i].header)) for i in (1, 2)]
        targets.append(("tile", tile[0].data, tile_w, WCS(tile[0].header)))
        for kind, data, weight, wcs in targets:
            ny, nx = data.shape
            x, y = wcs.all_world2pix(stars["RA"], stars["DEC"], 0)
            for xi, yi in zip(x, y):
                if not (15 < xi < nx - 16 and 15 < yi < ny - 16):
                    continue
                ix, iy = int(round(xi)), int(round(yi))
                if (weight[iy - 10 : iy + 11, ix - 10 : ix + 11] == 0).any():
                    continue  # off the footprint, in a gap, or flagged
                cut = data[iy - 10 : iy + 11, ix - 10 : ix + 11].astype(float)
                cx, cy = _window_centroid(cut, xi - ix + 10, yi - iy + 10)
                checked[kind].append(np.hypot(cx - (xi - ix + 10), cy - (yi - iy + 10)))
    for kind, d in checked.items():
        assert len(d) >= 5, kind
        assert np.median(d) < 0.05, (kind, np.median(d))


def test_tile_numbering():
    ra, dec = geo.tile_center(270, 283)
    assert dec == 51.5
    assert geo.tile_number_from_coord(ra, dec) == (270, 283)


# --------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    again = tmp_path / "again"
    make_survey(str(again), seed=SEED, params=tiny_params(), shear=(0.03, -0.02), n_processes=2)
    h1 = _hashes(tiny)
    h2 = _hashes(str(again))
    assert h1 == h2
    other = tmp_path / "other"
    make_survey(str(other), seed=SEED + 1, params=tiny_params(), shear=(0.03, -0.02))
    h3 = _hashes(str(other))
    assert h3.keys() == h1.keys()
    for name in h1:
        if name.endswith(".json"):
            continue
        assert h3[name] != h1[name], name


def test_refuses_to_overwrite(tiny):
    with pytest.raises(SimError, match="not empty"):
        make_survey(tiny, seed=SEED, params=tiny_params())
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_example_data.py"),
                        "--output", tiny, "-q"], capture_output=True, text=True)
    assert r.returncode == 2 and "not empty" in r.stderr


# --------------------------------------------------------------------------- paired fields

def test_paired_fields_identical_noise_opposite_shear(tmp_path):
    params = tiny_params()
    params.dithers = params.dithers[:1]
    root = tmp_path / "paired"
    # Shapes only: the images then differ only where the galaxies' shapes do.
    info = make_survey(str(root), seed=5, params=params, shear=(0.04, 0.01), paired=True,
                       scene_shear="none")
    assert info["scene_shear"] == "none"
    tp = fits.getdata(root / "plus" / "truth" / "objects.fits", 1)
    tm = fits.getdata(root / "minus" / "truth" / "objects.fits", 1)
    gal = tp["IS_STAR"] == 0
    assert np.allclose(tp["G1"][gal], 0.04) and np.allclose(tm["G1"][gal], -0.04)
    assert np.allclose(tp["G2"][gal], 0.01) and np.allclose(tm["G2"][gal], -0.01)
    assert np.array_equal(tp["E1_INT"], tm["E1_INT"]) and np.array_equal(tp["RA"], tm["RA"])
    with fits.open(root / "plus" / "exposures" / "image-2000001.fits.fz") as a, \
            fits.open(root / "minus" / "exposures" / "image-2000001.fits.fz") as b:
        ia = a[1].data.astype(float)
        ib = b[1].data.astype(float)
        sigma = a[1].header["SKYSIGMA"]
    diff = ia - ib
    # Identical noise: away from galaxies the two images are the same pixels...
    assert np.mean(diff == 0) > 0.3
    # ...and overall the difference is far below the noise, but not zero (the shear differs).
    assert np.std(diff) < 0.1 * sigma
    assert np.abs(diff).max() > 0.1 * sigma
    wa = fits.getdata(root / "plus" / "exposures" / "weight-2000001.fits.fz", 1)
    wb = fits.getdata(root / "minus" / "exposures" / "weight-2000001.fits.fz", 1)
    assert np.array_equal(wa, wb)


def test_scene_shear_moves_galaxies_about_the_tile_centre(tmp_path):
    """The default paired survey shears the scene: galaxies move about the tile centre (in
    the truth and in the pixels), stars do not; the noise array is shared."""
    params = tiny_params()
    params.dithers = params.dithers[:1]
    root = tmp_path / "scene"
    info = make_survey(str(root), seed=5, params=params, shear=(0.04, 0.01), paired=True)
    assert info["scene_shear"] == "field"
    centre = geo.tile_center(*params.tile_number)
    assert np.allclose(info["shear_centre"], centre)
    tp = fits.getdata(root / "plus" / "truth" / "objects.fits", 1)
    tm = fits.getdata(root / "minus" / "truth" / "objects.fits", 1)
    gal = tp["IS_STAR"] == 0
    assert np.array_equal(tp["RA"][~gal], tm["RA"][~gal])
    # plus = S(g) p0, minus = S(-g) p0, so minus = S(-g) S(-g) plus.
    ra0, dec0 = shear_positions(tp["RA"][gal], tp["DEC"][gal], -0.04, -0.01, *centre)
    ra_m, dec_m = shear_positions(ra0, dec0, -0.04, -0.01, *centre)
    cosd = np.cos(np.deg2rad(centre[1]))
    assert np.max(np.hypot((ra_m - tm["RA"][gal]) * cosd, dec_m - tm["DEC"][gal])) * 3600 < 1e-4
    shift = np.hypot((tp["RA"][gal] - tm["RA"][gal]) * cosd, tp["DEC"][gal] - tm["DEC"][gal])
    assert 0.5 < np.max(shift) * 3600 < 15.0
    # In the pixels: the brightest galaxy well inside CCD 0 is where its half's truth says.
    with fits.open(root / "plus" / "exposures" / "image-2000001.fits.fz") as a, \
            fits.open(root / "minus" / "exposures" / "image-2000001.fits.fz") as b:
        wcs = WCS(a[1].header)
        ia, ib = a[1].data.astype(float), b[1].data.astype(float)
    xp, yp = wcs.all_world2pix(tp["RA"], tp["DEC"], 1)
    xm, ym = wcs.all_world2pix(tm["RA"], tm["DEC"], 1)
    ok = gal & (xp > 40) & (xp < ia.shape[1] - 40) & (yp > 40) & (yp < ia.shape[0] - 40)
    k = np.flatnonzero(ok)[np.argmin(tp["MAG"][ok])]
    assert np.hypot(xp[k] - xm[k], yp[k] - ym[k]) > 0.5
    for img, x, y in ((ia, xp[k], yp[k]), (ib, xm[k], ym[k])):
        cx, cy = _window_centroid(img - np.median(img), x - 1, y - 1)
        assert np.hypot(cx - (x - 1), cy - (y - 1)) < 0.2


def test_group_scene_shear_keeps_isolated_galaxies_on_their_pixels(tmp_path):
    params = tiny_params()
    params.dithers = params.dithers[:1]
    root = tmp_path / "groups"
    info = make_survey(str(root), seed=5, params=params, shear=(0.04, 0.01), paired=True,
                       scene_shear="groups")
    assert info["scene_shear"] == "groups"
    tp = fits.getdata(root / "plus" / "truth" / "objects.fits", 1)
    tm = fits.getdata(root / "minus" / "truth" / "objects.fits", 1)
    cosd = np.cos(np.deg2rad(tp["DEC"][0]))
    shift = np.hypot((tp["RA"] - tm["RA"]) * cosd, tp["DEC"] - tm["DEC"]) * 3600
    gal = tp["IS_STAR"] == 0
    # Galaxies alone within 4" do not move; members of groups move a little.
    assert 0.25 < np.mean(shift[gal] == 0) < 0.9
    assert 0 < np.max(shift[gal]) < 1.0 and np.all(shift[~gal] == 0)
    with pytest.raises(SimError, match="scene_shear"):
        make_survey(str(tmp_path / "bad"), seed=5, params=params, scene_shear="lens")


def test_rotated_shapes_flip_the_intrinsic_shapes_only(tmp_path):
    """The rotated twin: intrinsic shapes change sign, everything else is the same survey."""
    params = tiny_params()
    params.dithers = params.dithers[:1]
    make_survey(str(tmp_path / "a"), seed=5, params=params, paired=True)
    info = make_survey(str(tmp_path / "b"), seed=5, params=params, paired=True,
                       rotated_shapes=True)
    assert info["rotated_shapes"] is True
    ta = fits.getdata(tmp_path / "a" / "plus" / "truth" / "objects.fits", 1)
    tb = fits.getdata(tmp_path / "b" / "plus" / "truth" / "objects.fits", 1)
    gal = ta["IS_STAR"] == 0
    assert np.any(ta["E1_INT"][gal] != 0)
    assert np.array_equal(tb["E1_INT"], -ta["E1_INT"])
    assert np.array_equal(tb["E2_INT"], -ta["E2_INT"])
    for key in ("RA", "DEC", "HLR", "G1", "G2"):
        assert np.array_equal(ta[key], tb[key]), key
    name = "image-2000001.fits.fz"
    ia = fits.getdata(tmp_path / "a" / "plus" / "exposures" / name, 1).astype(float)
    ib = fits.getdata(tmp_path / "b" / "plus" / "exposures" / name, 1).astype(float)
    # Same noise and stars: most pixels are equal; galaxies are drawn differently.
    assert np.mean(ia == ib) > 0.2 and not np.array_equal(ia, ib)


def test_shear_is_applied():
    """The mean shape of bright galaxies drawn noise-free follows the applied shear."""
    import galsim

    from shapepipe.sim.render import galaxy_profile

    gsp = galsim.GSParams()
    rng = np.random.default_rng(0)
    shapes = []
    for g1 in (0.05, -0.05):
        e = []
        for _ in range(2):
            for angle in np.linspace(0, np.pi, 8, endpoint=False):
                e1, e2 = 0.3 * np.cos(2 * angle), 0.3 * np.sin(2 * angle)
                gal = galaxy_profile(1000.0, 0.6, 0.3, rng.uniform(0, 0.5), e1, e2, g1, 0.0, gsp)
                mom = gal.drawImage(nx=64, ny=64, scale=0.187, method="no_pixel").FindAdaptiveMom()
                e.append(mom.observed_shape.g1)
        shapes.append(np.mean(e))
    assert shapes[0] > 0.03 and shapes[1] < -0.03


# --------------------------------------------------------------------------- DES

def test_des_tiles(tmp_path):
    from shapepipe.sim.des import BANDS, make_des

    des = tmp_path / "des"
    tiles = [("DES0000+0000", 0.0, 0.0), ("DES2359+0000", 359.9805, 0.0)]
    make_des(str(des), seed=2, tiles=tiles, size=300)
    geom = fits.getdata(des / "tile_geometry.fits", 1)
    row0 = geom[geom["TILENAME"] == "DES0000+0000"][0]
    assert row0["URAMIN"] > row0["URAMAX"]  # straddles RA = 0
    assert row0["RACMIN"] > row0["RACMAX"]
    for name, _, _ in tiles:
        for band in BANDS:
            with fits.open(des / "tiles" / f"{name}_{band}.fits.fz") as hdul:
                assert hdul[1].data.shape == (300, 300) and hdul[1].data.dtype.kind == "f"
                assert hdul[2].data.dtype.kind == "i" and (hdul[2].data != 0).any()
                assert WCS(hdul[1].header).wcs.ctype[0] == "RA---TAN"
    with open(des / "targets.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["RA", "DEC", "COADD_OBJECT_ID", "TILENAME", "STATUS"]
    assert all(r[3] == "" and r[4] == "new" for r in rows[1:])
    truth = fits.getdata(des / "truth.fits", 1)
    names = np.char.strip(truth["TILENAME"].astype(str))
    ids = {int(r[2]) for r in rows[1:]}
    on = {int(i) for i, n in zip(truth["COADD_OBJECT_ID"], names) if n}
    assert ids & on and ids - on  # targets on a tile and on no tile


def test_uncompressed_exposures_match_compressed(tiny, tmp_path):
    params = tiny_params()
    root = tmp_path / "plain"
    make_survey(str(root), seed=SEED, params=params, shear=(0.03, -0.02), compress=False)
    for exp in params.exposures:
        with fits.open(root / "exposures" / f"flag-{exp}.fits") as plain, \
                fits.open(os.path.join(tiny, "exposures", f"flag-{exp}.fits.fz")) as packed:
            assert not isinstance(plain[1], fits.CompImageHDU)
            assert plain[1].header["EXTNAME"] == "ccd00"
            assert np.array_equal(plain[1].data, packed[1].data)
        with fits.open(root / "exposures" / f"image-{exp}.fits") as plain, \
                fits.open(os.path.join(tiny, "exposures", f"image-{exp}.fits.fz")) as packed:
            sigma = plain[1].header["SKYSIGMA"]
            # Only the quantisation of the compressed file (step sigma/16) separates them.
            assert np.abs(plain[1].data - packed[1].data).max() < sigma / 16


def test_small_ccd_has_enough_bright_stars():
    """The default layout gives every CCD >= 60 stars with S/N > 50 and a few saturated ones."""
    import sep

    from shapepipe.sim import small_params

    params = small_params()
    cat = make_catalog(params, 1)
    res = render_ccd(params, 1, 0, 2, cat, hsm=False)
    ps = res["psf_stars"]
    data = (res["images"][0] - res["sky"]).astype(np.float64)
    err = 1.0 / np.sqrt(np.maximum(res["weight"], 1e-12))
    x = ps["X"] - 1.0
    y = ps["Y"] - 1.0
    # 5 px radius ~ 1.35 FWHM: close to the best S/N aperture for these PSFs.
    flux, ferr, _ = sep.sum_circle(data, x, y, 5.0, err=err.astype(np.float64),
                                   mask=res["flag"] != 0, gain=geo.GAIN)
    assert np.sum(flux / ferr > 50) >= 60
    assert 1 <= ps["SATURATED"].sum() <= 15


def test_psf_g_offset_shifts_the_mean_psf_shear_only():
    from shapepipe.sim import geometry as geo
    from shapepipe.sim.psf import model_row

    params = geo.tiny_params()
    shifted = geo.SurveyParams(**{**params.__dict__, "psf_g_offset": (0.03, -0.02)})
    base, off = model_row(params, 5, params.exposures[0], 1), model_row(shifted, 5,
                                                                        params.exposures[0], 1)
    assert off["G1_COEF"][0] - base["G1_COEF"][0] == pytest.approx(0.03)
    assert off["G2_COEF"][0] - base["G2_COEF"][0] == pytest.approx(-0.02)
    np.testing.assert_array_equal(off["G1_COEF"][1:], base["G1_COEF"][1:])
    np.testing.assert_array_equal(off["FWHM_COEF"], base["FWHM_COEF"])


def test_faint_star_density_sets_the_stars_beyond_the_reference_depth():
    """faint_star_density replaces the power law's stars fainter than r = 21 only."""
    import dataclasses

    from shapepipe.sim import small_params
    from shapepipe.sim.geometry import FAINT_STAR_MAG, field_bounds

    params = small_params()
    xmin, xmax, ymin, ymax = field_bounds(params)
    area = (xmax - xmin) * (ymax - ymin) / 3600.0
    default = make_catalog(params, 4)
    sparse = make_catalog(dataclasses.replace(params, faint_star_density=1.0), 4)

    def counts(cat):
        mag = cat["MAG"][cat["IS_STAR"] == 1]
        return (mag < FAINT_STAR_MAG).sum(), (mag >= FAINT_STAR_MAG).sum()

    (bright0, faint0), (bright1, faint1) = counts(default), counts(sparse)
    assert abs(faint1 - area) < 4 * np.sqrt(area)  # Poisson around 1 per arcmin^2
    assert faint0 > 10 * faint1
    assert abs(bright1 - bright0) < 4 * np.sqrt(bright0)
    assert (sparse["IS_STAR"] == 0).sum() == pytest.approx((default["IS_STAR"] == 0).sum(),
                                                           rel=0.05)
