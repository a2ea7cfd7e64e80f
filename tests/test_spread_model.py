"""spread_model: SExtractor's SPREAD_MODEL on GalSim stars and galaxies, its error, the
stacking kernel, bad inputs (no PSF, corrupt store entry, all pixels masked), the runner."""

import os

import galsim
import numpy as np
import pytest
from astropy.io import fits
from scipy.ndimage import map_coordinates
from sqlitedict import SqliteDict

from shapepipe.modules.spread_model import (
    FLAG_NO_PIXELS,
    FLAG_NO_PSF,
    combine_epoch_psfs,
    models,
    process,
    spread_model,
)
from shapepipe.modules.spread_model.model import owned_pixels
from shapepipe.modules.spread_model.process import depth_plateau
from shapepipe.modules.vignetmaker import write_vignet_file
from shapepipe.utils.pixels import stamp_corner
from shapepipe.utils.stamp_store import open_store
from tests.tile_data import write_tile_catalog

S = 51
SCALE = 0.187
PSF = galsim.Moffat(beta=3.5, fwhm=0.7)
FWHM_PIX = 0.7 / SCALE


def _psf_stamp(size=41):
    stamp = PSF.drawImage(nx=size, ny=size, scale=SCALE).array
    return stamp / stamp.sum()


def _render(obj, flux, offsets, sigma, rng):
    """Stamps of obj * PSF at sub-pixel offsets from the centre pixel, with Gaussian noise."""
    out = []
    for ox, oy in offsets:
        img = galsim.Convolve(obj, PSF).withFlux(flux).drawImage(
            nx=S, ny=S, scale=SCALE, offset=(ox, oy)).array
        out.append(img + rng.normal(0.0, sigma, img.shape))
    return np.array(out)


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(42)
    n = 60
    offsets = rng.uniform(-0.5, 0.5, (n, 2))
    sigma = 10.0
    out = {}
    for name, obj in (("star", galsim.DeltaFunction()),
                      ("galaxy", galsim.Exponential(half_light_radius=0.4))):
        out[name] = _render(obj, 5000.0, offsets, sigma, rng)
    out["offsets"] = offsets
    out["sigma"] = sigma
    return out


def _sm(stamps, offsets, sigma):
    n = len(stamps)
    phi, gal = models(np.repeat(_psf_stamp()[None], n, 0), S // 2 + offsets[:, 0],
                      S // 2 + offsets[:, 1], np.full(n, FWHM_PIX), S)
    return spread_model(stamps, np.full(stamps.shape, 1.0 / sigma ** 2), phi, gal)


def test_stars_near_zero_galaxies_positive_error_matches_scatter(samples):
    sm_s, err_s, f_s = _sm(samples["star"], samples["offsets"], samples["sigma"])
    sm_g, err_g, f_g = _sm(samples["galaxy"], samples["offsets"], samples["sigma"])
    assert not f_s.any() and not f_g.any()
    # Point sources: zero within the noise; extended: well above (SExtractor's star
    # threshold 0.003, galaxy 0.01 on SPREAD_MODEL + 5/3 SPREADERR_MODEL).
    assert abs(np.mean(sm_s)) < 3 * np.std(sm_s) / np.sqrt(len(sm_s))
    assert np.all(np.abs(sm_s + 5 / 3 * err_s) < 0.003)
    assert np.median(sm_g) > 0.006 and np.all(sm_g + 5 / 3 * err_g > 0.004)
    # The propagated error is the scatter of the estimator over noise realisations.
    for sm, err in ((sm_s, err_s), (sm_g, err_g)):
        assert 0.75 < np.std(sm) / np.median(err) < 1.33


def test_models_are_centred_and_unit_flux():
    phi, gal = models(_psf_stamp()[None].repeat(2, 0), np.array([25.3, 20.0]),
                      np.array([24.8, 30.0]), np.full(2, FWHM_PIX), S)
    np.testing.assert_allclose(phi.sum(axis=(1, 2)), 1.0)
    yy, xx = np.mgrid[:S, :S]
    np.testing.assert_allclose((phi * xx).sum(axis=(1, 2)), [25.3, 20.0], atol=0.01)
    np.testing.assert_allclose((gal * yy).sum(axis=(1, 2)), [24.8, 30.0], atol=0.01)
    # G is wider than phi by the exponential's variance 6 h^2 (2 axes), h = FWHM/16.
    var = lambda m, c: (m * ((xx - c[0]) ** 2 + (yy - c[1]) ** 2)).sum()  # noqa: E731
    extra = var(gal[0], (25.3, 24.8)) - var(phi[0], (25.3, 24.8))
    assert extra == pytest.approx(6 * (FWHM_PIX / 16) ** 2, rel=0.05)


@pytest.mark.parametrize("u", [(0.5, 0.5), (0.2, 0.7)])
def test_bilinear_stacking_kernel(u):
    """A star resampled with bilinear interpolation is a point source again only with the
    resampling kernel added to its PSF."""
    rng = np.random.default_rng(1)
    psf = _psf_stamp(S)
    big = PSF.drawImage(nx=S + 10, ny=S + 10, scale=SCALE).array * 1e5
    # tile pixel i samples the exposure at i + 5 + u (grid offset D = 5 + u)
    jj, ii = np.mgrid[:S, :S].astype(float)
    tile = map_coordinates(big, [jj + 5 + u[1], ii + 5 + u[0]], order=1, prefilter=False)
    tile += rng.normal(0, 0.5, tile.shape)
    c = (S + 10) // 2
    pos = (c - 5 - u[0], c - 5 - u[1])  # the star in tile pixels
    store = {"1": {"e-0": {"VIGNET": psf}}}
    w = np.full((1, S, S), 4.0)
    results = []
    for offsets in (None, lambda owner, keys: (np.full(len(keys), u[0]),
                                              np.full(len(keys), u[1]))):
        p, fwhm, n_ep = combine_epoch_psfs(store, [1], S, grid_offsets=offsets)
        phi, gal = models(p, np.array([pos[0]]), np.array([pos[1]]), np.full(1, FWHM_PIX), S)
        results.append(spread_model(tile[None], w, phi, gal)[0][0])
    without, with_kernel = results
    assert abs(with_kernel) < 3e-4
    assert without > 20 * abs(with_kernel) and without > 5e-4


def _write_tile(tmp_path, rng, sigma=5.0):
    """Tile catalogue (VIGNET), PSF store (2 epochs) and weight vignets of 8 objects:
    rows 0-2 stars, 3-5 galaxies, 6 without PSF ("empty"), 7 corrupt store entry; row 5's
    weights are all zero."""
    n = 8
    x = rng.uniform(100, 900, n)
    y = rng.uniform(100, 900, n)
    x0, y0, dx, dy = stamp_corner(x - 1, y - 1, S)
    vign = []
    for k in range(n):
        obj = galsim.DeltaFunction() if k < 3 or k > 5 else galsim.Exponential(
            half_light_radius=0.5)
        img = galsim.Convolve(obj, PSF).withFlux(20000.0).drawImage(
            nx=S, ny=S, scale=SCALE, offset=(dx[k] - S // 2, dy[k] - S // 2)).array
        vign.append(img + rng.normal(0, sigma, img.shape))
    vign = np.array(vign)
    vign[0, :3, :] = -1e30  # SExtractor-masked pixels are ignored
    cat = str(tmp_path / "tile_sexcat-000-000.fits")
    ids = np.arange(1, n + 1)
    write_tile_catalog(cat, {"NUMBER": ids, "X_IMAGE": x, "Y_IMAGE": y, "XWIN_IMAGE": x,
                             "YWIN_IMAGE": y, "VIGNET": vign})
    store_path = str(tmp_path / "galaxy_psf-000-000.sqlite")
    store = open_store(store_path, "n")
    for k in range(6):
        store[str(ids[k])] = {f"200000{e}-0": {"VIGNET": _psf_stamp(),
                                               "SHAPES": {"SIGMA_PSF_HSM": FWHM_PIX / 2.3548,
                                                          "FLAG_PSF_HSM": 0}}
                              for e in (1, 2)}
    store["7"] = "empty"
    store.commit()
    store.close()
    raw = SqliteDict(store_path, encode=lambda v: v, decode=lambda v: v, autocommit=True)
    raw["8"] = "{not json"
    raw.close()
    weights = np.full((n, S, S), 1.0 / sigma ** 2, dtype=np.float32)
    weights[5] = 0.0
    wpath = str(tmp_path / "weight_vignet-000-000.fits")
    write_vignet_file(wpath, ids, weights)
    return cat, store_path, wpath


@pytest.mark.parametrize("mode", ["new", "add"])
def test_runner_flags_bad_objects_and_classifies(tmp_path, sp, mode):
    cat, store, wv = _write_tile(tmp_path, np.random.default_rng(2))
    config = sp.config(f"""
        [SPREAD_MODEL_RUNNER]
        INPUT_DIR = {tmp_path}
        FILE_PATTERN = tile_sexcat, galaxy_psf, weight_vignet
        FILE_EXT = .fits, .sqlite, .fits
        NUMBERING_SCHEME = -000-000
        PIXEL_SCALE = 0.187
        OUTPUT_MODE = {mode}
        """, modules="spread_model_runner")
    assert sp.run(config) == 0
    out = os.path.join(sp.runs()[-1], "spread_model_runner", "output", "sexcat_sm-000-000.fits")
    with fits.open(out) as hdul:
        data = hdul["LDAC_OBJECTS"].data
        assert ("VIGNET" in data.columns.names) == (mode == "add")
        if mode == "add":
            assert "LDAC_IMHEAD" in hdul
        sm, err, flags = data["SPREAD_MODEL"], data["SPREADERR_MODEL"], data["SPREAD_MODEL_FLAGS"]
    np.testing.assert_array_equal(data["NUMBER"], np.arange(1, 9))
    assert np.all(np.abs(sm[:3]) < 0.001) and np.all(sm[3:5] > 0.008)
    assert np.all(err[:5] > 0) and np.all(err[:5] < 0.001)
    assert flags[5] & FLAG_NO_PIXELS and np.isnan(sm[5])
    assert flags[6] & FLAG_NO_PSF and flags[7] & FLAG_NO_PSF
    assert np.all(np.isnan(sm[6:])) and np.all(np.isnan(err[6:]))
    assert not flags[:5].any()


def test_runner_rejects_mismatched_weight_vignets(tmp_path, sp):
    cat, store, wv = _write_tile(tmp_path, np.random.default_rng(3))
    write_vignet_file(wv, np.arange(2, 10), np.ones((8, S, S)))
    config = sp.config(f"""
        [SPREAD_MODEL_RUNNER]
        INPUT_DIR = {tmp_path}
        FILE_PATTERN = tile_sexcat, galaxy_psf, weight_vignet
        FILE_EXT = .fits, .sqlite, .fits
        NUMBERING_SCHEME = -000-000
        """, modules="spread_model_runner")
    assert sp.run(config) == 1


def test_owned_pixels_equal_objects_split_at_the_bisector_brighter_takes_more():
    """SExtractor's allocation: equal neighbours share the pixels at the bisector; a brighter
    neighbour's Gaussian takes pixels beyond it; no neighbour (NaN) masks nothing."""
    cov = (np.full(2, 3.0), np.full(2, 3.0), np.zeros(2))
    nb_cov = tuple(c[:, None] for c in cov)
    dx, dy = np.array([20.0, 20.0]), np.array([25.0, 25.0])
    nbx, nby = np.array([[30.0], [np.nan]]), np.array([[25.0], [np.nan]])
    keep = owned_pixels(S, dx, dy, cov, np.ones(2), nbx, nby, nb_cov, np.ones((2, 1)))
    xx = np.arange(S)[None, :].repeat(S, 0)
    np.testing.assert_array_equal(keep[0], xx <= 25)
    assert keep[1].all()
    bright = owned_pixels(S, dx[:1], dy[:1], tuple(c[:1] for c in cov), np.ones(1), nbx[:1],
                          nby[:1], tuple(c[:1] for c in nb_cov), np.full((1, 1), 100.0))
    assert bright[0, 25, :].sum() < keep[0, 25, :].sum() and bright[0, 25, 20]
    # max_fraction: only pixels where the neighbour adds at most that fraction are kept
    strict = owned_pixels(S, dx[:1], dy[:1], tuple(c[:1] for c in cov), np.ones(1), nbx[:1],
                          nby[:1], tuple(c[:1] for c in nb_cov), np.ones((1, 1)),
                          max_fraction=0.1)
    r_own = (xx - 20.0) ** 2 + (np.arange(S)[:, None] - 25.0) ** 2
    r_nb = (xx - 30.0) ** 2 + (np.arange(S)[:, None] - 25.0) ** 2
    np.testing.assert_array_equal(strict[0], (r_nb - r_own) / 6.0 >= np.log(10.0))


def test_depth_plateau_removes_the_bias_of_pixels_flagged_in_one_exposure():
    """A bright star stacked from two exposures with bilinear resampling, its core flagged
    (saturated) in one of them: tile pixels that keep part of that exposure's kernel are not
    the stack of the PSF; leaving out the pixels whose weight is off the aperture's plateau
    brings SPREAD_MODEL back to zero."""
    n = S + 10
    us = np.array([(0.3, 0.6), (0.7, 0.2)])
    pos = np.array([25.2, 24.9])  # the star in tile pixels
    jj, ii = np.mgrid[:S, :S].astype(float)
    num, den = np.zeros((S, S)), np.zeros((S, S))
    for e, u in enumerate(us):
        # tile pixel i samples exposure e at i + 5 + u_e (as shapepipe.sim.tile stacks)
        p = pos + 5 + u
        img = PSF.withFlux(2e6).drawImage(nx=n, ny=n, scale=SCALE,
                                          offset=tuple(p - (n - 1) / 2)).array
        w = np.ones_like(img)
        if e == 0:
            w[img > 0.2 * img.max()] = 0.0
        coords = [jj + 5 + u[1], ii + 5 + u[0]]
        num += map_coordinates(w * img, coords, order=1, prefilter=False)
        den += map_coordinates(w, coords, order=1, prefilter=False)
    tile = num / den
    store = {"1": {"e-0": {"VIGNET": _psf_stamp(S)}, "f-0": {"VIGNET": _psf_stamp(S)}}}
    psf, _, _ = combine_epoch_psfs(store, [1], S,
                                   grid_offsets=lambda owner, keys: (us[:, 0], us[:, 1]))
    phi, gal = models(psf, pos[:1], pos[1:], np.full(1, FWHM_PIX), S)
    inside = (((ii - pos[0]) ** 2 + (jj - pos[1]) ** 2) <= (1.6 * FWHM_PIX) ** 2)[None]
    out = {}
    for tol in (0.0, 0.01):
        keep = inside & depth_plateau(den[None], inside, tol)
        out[tol] = spread_model(tile[None], np.where(keep, den[None], 0.0), phi, gal)[0][0]
        assert keep.sum() > 50
    assert abs(out[0.01]) < 1e-6 and abs(out[0.0]) > 3e-4
    np.testing.assert_array_equal(depth_plateau(den[None], inside, 0.0), True)


def test_neighbour_mask_keeps_a_star_beside_a_bright_galaxy_a_star(tmp_path):
    """A star 9 pixels from a galaxy 10 times brighter: with the whole aperture the
    galaxy's light makes it extended (SPREAD_MODEL 0.009, far from a star); with the pixels
    the galaxy owns left out it is a star again, and closer to zero with the pixels where
    the galaxy adds more than 10% left out too. The galaxy stays a galaxy; an isolated star
    does not change."""
    rng = np.random.default_rng(5)
    n, sigma = 160, 5.0
    pos = np.array([[60.3, 80.6], [69.3, 81.4], [110.4, 40.7]])  # 0-based
    objs = [galsim.DeltaFunction().withFlux(3e4),
            galsim.Exponential(half_light_radius=0.8).withFlux(3e5),
            galsim.DeltaFunction().withFlux(2e4)]
    scene = np.zeros((n, n))
    mom = []
    yy, xx = np.mgrid[:n, :n]
    for p, obj in zip(pos, objs):
        img = galsim.Convolve(obj, PSF).drawImage(nx=n, ny=n, scale=SCALE,
                                                  offset=tuple(p - (n - 1) / 2)).array
        scene += img
        m = img > 0.05 * img.max()  # isophotal moments, as SExtractor's X2_IMAGE...
        f = img[m].sum()
        mx, my = (img[m] * xx[m]).sum() / f, (img[m] * yy[m]).sum() / f
        mom.append(((img[m] * (xx[m] - mx) ** 2).sum() / f, (img[m] * (yy[m] - my) ** 2).sum() / f,
                    (img[m] * (xx[m] - mx) * (yy[m] - my)).sum() / f, img.sum()))
    scene += rng.normal(0, sigma, scene.shape)
    mom = np.array(mom)
    x0, y0, _, _ = stamp_corner(pos[:, 0], pos[:, 1], S)
    vign = np.array([scene[b:b + S, a:a + S] for a, b in zip(x0, y0)])
    cat = str(tmp_path / "tile_sexcat-000-000.fits")
    ids = np.arange(1, 4)
    write_tile_catalog(cat, {"NUMBER": ids, "X_IMAGE": pos[:, 0] + 1, "Y_IMAGE": pos[:, 1] + 1,
                             "XWIN_IMAGE": pos[:, 0] + 1, "YWIN_IMAGE": pos[:, 1] + 1,
                             "X2_IMAGE": mom[:, 0], "Y2_IMAGE": mom[:, 1], "XY_IMAGE": mom[:, 2],
                             "FLUX_AUTO": mom[:, 3], "VIGNET": vign})
    store_path = str(tmp_path / "galaxy_psf-000-000.sqlite")
    store = open_store(store_path, "n")
    for i in ids:
        store[str(i)] = {"2000001-0": {"VIGNET": _psf_stamp(),
                                       "SHAPES": {"SIGMA_PSF_HSM": FWHM_PIX / 2.3548,
                                                  "FLAG_PSF_HSM": 0}}}
    store.commit()
    store.close()
    wpath = str(tmp_path / "weight_vignet-000-000.fits")
    write_vignet_file(wpath, ids, np.full((3, S, S), 1 / sigma ** 2, dtype=np.float32))
    res = {}
    for masked, frac in ((False, 1.0), (True, 1.0), (True, 0.1)):
        out = str(tmp_path / f"sm_{masked}_{frac}.fits")
        process(cat, store_path, wpath, out, mask_neighbours=masked, neighbour_fraction=frac)
        d = fits.getdata(out, "LDAC_OBJECTS")
        res[masked, frac] = (d["SPREAD_MODEL"].astype(float), d["SPREADERR_MODEL"].astype(float))
    c = {m: res[m][0] + 5 / 3 * res[m][1] for m in res}
    # the whole aperture: 'extended'; SExtractor's allocation: a star; pixels where the
    # galaxy adds more than 10% left out too: closer to zero still
    assert c[False, 1.0][0] > 0.007 and abs(c[True, 1.0][0]) < 0.003
    assert abs(c[True, 0.1][0]) < 0.5 * abs(c[True, 1.0][0])
    for key in ((True, 1.0), (True, 0.1)):
        assert c[key][1] > 0.01
        np.testing.assert_allclose(res[key][0][2], res[False, 1.0][0][2], rtol=1e-5)
    with pytest.raises(ValueError, match="NEIGHBOUR_FRACTION"):
        process(cat, store_path, wpath, str(tmp_path / "x.fits"), neighbour_fraction=0.0)
