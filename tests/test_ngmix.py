"""Tests of the shape-measurement package (Gaussian mixtures, fits, metacalibration)."""

import os
import subprocess
import sys

import galsim
import numpy as np
import pytest
from astropy.io import fits

from shapepipe.modules.ngmix import (
    NO_PRIORS,
    GMix,
    Jacobian,
    MetacalImager,
    Observation,
    PixelSet,
    adaptive_moments,
    e_to_g,
    fit_gmix_model,
    fit_psf_em,
    fit_psf_gauss,
    g_to_e,
    make_stamp_obs,
    measure_object,
    profile_mixture,
    read_catalog,
    round_measures,
    round_T,
    rows_to_tables,
    shear_response,
    write_catalog,
)
from shapepipe.modules.ngmix.gmix import gT_to_moments, model_and_derivs
from shapepipe.sim.shear_stamps import make_stamp_set, shear_bias

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE = 0.187


def test_shape_conversions_roundtrip():
    rng = np.random.default_rng(1)
    g = rng.uniform(-0.6, 0.6, (2, 100))
    e1, e2 = g_to_e(g[0], g[1])
    g1, g2 = e_to_g(e1, e2)
    np.testing.assert_allclose(g1, g[0], atol=1e-12)
    np.testing.assert_allclose(g2, g[1], atol=1e-12)
    # A galsim shear has the same g <-> e relation.
    s = galsim.Shear(g1=0.3, g2=-0.2)
    np.testing.assert_allclose(g_to_e(0.3, -0.2), (s.e1, s.e2), atol=1e-12)


@pytest.mark.parametrize("model", ["gauss", "exp"])
def test_model_derivatives_match_finite_differences(model):
    p, f = profile_mixture(model)
    psf = GMix([0.7, 0.3], [0.0, 0.01], [0.0, -0.02], [0.02, 0.05], [0.025, 0.06],
               [0.003, -0.004])
    y, x = np.mgrid[0:21, 0:21]
    jac = Jacobian(10.2, 9.8, [[0.19, 0.01], [-0.02, 0.18]])
    u, v = jac.uv(x.ravel(), y.ravel())
    pars = np.array([0.03, -0.02, 0.2, -0.15, 0.3, 12.0])
    _, d, ok = model_and_derivs(pars, u, v, jac.det, p, f, psf)
    assert ok
    for i in range(6):
        h = 1e-6 * max(abs(pars[i]), 1.0)
        hi, lo = pars.copy(), pars.copy()
        hi[i] += h
        lo[i] -= h
        num = (model_and_derivs(hi, u, v, jac.det, p, f, psf, False)[0]
               - model_and_derivs(lo, u, v, jac.det, p, f, psf, False)[0]) / (2 * h)
        np.testing.assert_allclose(d[i], num, rtol=1e-5, atol=1e-7 * np.abs(num).max())


def test_profile_mixtures_match_sersic_profiles():
    for model, n in (("exp", 1.0), ("dev", 4.0)):
        p, f = profile_mixture(model)
        assert np.isclose(p.sum(), 1.0) and np.isclose(np.sum(p * f), 1.0)
        # Compare with GalSim's profile at the same half-light radius, within 3 hlr.
        from scipy.optimize import brentq

        def enclosed(T, p=p, f=f):
            return np.sum(p * (1 - np.exp(-1.0 / (f * T)))) - 0.5

        T = brentq(enclosed, 1e-3, 1e3)
        prof = galsim.Sersic(n=n, half_light_radius=1.0)
        r = np.linspace(0.1, 3.0, 60)
        truth = np.array([prof.xValue(ri, 0.0) for ri in r])
        var = 0.5 * f * T
        mix = (p[:, None] / (2 * np.pi * var[:, None])
               * np.exp(-0.5 * r[None, :] ** 2 / var[:, None])).sum(axis=0)
        rel = np.abs(mix / truth - 1)
        # The mixtures miss the cusp and the far tail, not the body.
        assert np.median(rel) < 0.05, (model, rel)


def _gauss_image(pars, psf_T, jac, shape):
    """Noiseless Gaussian galaxy convolved with a round Gaussian PSF, by GalSim."""
    u0, v0, g1, g2, T, flux = pars
    # GalSim's shear keeps the area: T = 2 sigma^2 (1 + g^2) / (1 - g^2).
    gsq = g1 * g1 + g2 * g2
    sigma = np.sqrt(T / 2 * (1 - gsq) / (1 + gsq))
    gal = galsim.Gaussian(sigma=sigma, flux=flux).shear(g1=g1, g2=g2).shift(u0, v0)
    psf = galsim.Gaussian(sigma=np.sqrt(psf_T / 2))
    m = jac.matrix
    wcs = galsim.JacobianWCS(m[0, 0], m[0, 1], m[1, 0], m[1, 1])
    img = galsim.ImageD(shape[1], shape[0], wcs=wcs)
    # Put the Jacobian reference point at its numpy position (GalSim is 1-based).
    galsim.Convolve(gal, psf).drawImage(
        img, method="no_pixel",
        offset=(jac.x0 - (shape[1] - 1) / 2.0, jac.y0 - (shape[0] - 1) / 2.0))
    return img.array


def test_fit_recovers_noiseless_multi_epoch_parameters():
    truth = np.array([0.04, -0.03, 0.25, -0.12, 0.35, 50.0])
    psf_T = 0.18
    jacs = [Jacobian(16.0, 16.0, [[SCALE, 0], [0, SCALE]]),
            Jacobian(15.3, 16.6, [[0.17, 0.03], [-0.02, 0.2]])]
    obs = [Observation(_gauss_image(truth, psf_T, j, (33, 33)), np.full((33, 33), 1e6), j)
           for j in jacs]
    pixels = PixelSet(obs)
    res = fit_gmix_model(pixels, GMix.round_gauss(psf_T), "gauss",
                         guess=[0, 0, 0, 0, 0.2, 40.0], priors=NO_PRIORS)
    assert res["flags"] == 0
    np.testing.assert_allclose(res["pars"], truth, rtol=2e-6, atol=2e-7)
    assert np.all(np.sqrt(np.diag(res["pars_cov"])) > 0)


def test_fit_with_a_psf_per_epoch():
    truth = np.array([-0.02, 0.01, -0.1, 0.2, 0.25, 30.0])
    jacs = [Jacobian(16.0, 16.0, [[SCALE, 0], [0, SCALE]]),
            Jacobian(16.4, 15.7, [[0.19, -0.01], [0.02, 0.18]])]
    psf_T = [0.15, 0.24]
    obs = [Observation(_gauss_image(truth, t, j, (33, 33)), np.full((33, 33), 1e6), j)
           for t, j in zip(psf_T, jacs)]
    res = fit_gmix_model(PixelSet(obs), [GMix.round_gauss(t) for t in psf_T], "gauss",
                         guess=[0, 0, 0, 0, 0.2, 20.0], priors=NO_PRIORS)
    assert res["flags"] == 0
    np.testing.assert_allclose(res["pars"], truth, rtol=2e-6, atol=2e-7)
    # One common PSF would not fit these images.
    wrong = fit_gmix_model(PixelSet(obs), GMix.round_gauss(0.2), "gauss",
                           guess=[0, 0, 0, 0, 0.2, 20.0], priors=NO_PRIORS)
    assert np.abs(wrong["pars"] - truth).max() > 1e-3


def test_adaptive_moments_and_psf_fits():
    jac = Jacobian.from_scale(20, 20, SCALE)
    gm = GMix(1.0, 0.0, 0.0, *gT_to_moments(0.05, -0.03, 0.3))
    y, x = np.mgrid[0:41, 0:41]
    u, v = jac.uv(x, y)
    im = gm.render(u, v, jac.det)
    am = adaptive_moments(im, jac)
    assert am["flags"] == 0
    np.testing.assert_allclose([am["g1"], am["g2"], am["T"]], [0.05, -0.03, 0.3], rtol=1e-6,
                               atol=1e-7)
    pf = fit_psf_gauss(im, jac)
    np.testing.assert_allclose([pf["g1"], pf["g2"], pf["T"]], [0.05, -0.03, 0.3], rtol=1e-6,
                               atol=1e-7)
    # Two-component PSF: EM recovers the mixture's second moments.
    gm2 = GMix([0.6, 0.4], [0.0, 0.0], [0.0, 0.0], [0.03, 0.12], [0.04, 0.1], [0.005, -0.01])
    im2 = gm2.render(u, v, jac.det)
    em = fit_psf_em(im2, jac, n_gauss=2)
    assert em["flags"] == 0
    g1, g2, T = gm2.get_gT()
    np.testing.assert_allclose([em["g1"], em["g2"], em["T"]], [g1, g2, T], rtol=1e-3, atol=1e-4)
    model = em["gmix"].render(u, v, jac.det)
    assert np.abs(model - im2).max() < 2e-3 * im2.max()


@pytest.mark.parametrize("matrix", [[[SCALE, 0.0], [0.0, SCALE]],
                                    [[0.17, 0.03], [-0.02, 0.2]]])
def test_metacal_images_match_galsim(matrix):
    """Deconvolve / shear / reconvolve equals GalSim drawing the sheared truth directly."""
    S = 51
    m = np.array(matrix)
    wcs = galsim.JacobianWCS(m[0, 0], m[0, 1], m[1, 0], m[1, 1])
    gal = galsim.Exponential(half_light_radius=0.4).shear(g1=0.2, g2=-0.1).shift(0.05, -0.03)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7).shear(g1=0.03, g2=0.02)
    img = galsim.Convolve(gal, psf).drawImage(nx=S, ny=S, wcs=wcs, dtype=float).array
    pim = psf.drawImage(nx=S, ny=S, wcs=wcs, dtype=float).array
    sigma = 0.7 / 2.355 * 1.15
    imager = MetacalImager((S, S), Jacobian((S - 1) / 2, (S - 1) / 2, m), pim / pim.sum(), sigma)
    out = imager.make_all(img)
    for t, (g1, g2) in {"noshear": (0, 0), "1p": (0.01, 0), "2m": (0, -0.01)}.items():
        ref = galsim.Convolve(gal.shear(g1=g1, g2=g2), galsim.Gaussian(sigma=sigma)).drawImage(
            nx=S, ny=S, wcs=wcs, method="no_pixel", dtype=float).array
        # Limit: aliasing of the pixelated Moffat in the samples (6e-5 of the peak here),
        # independent of the lattice margin and of GalSim's accuracy settings.
        assert np.abs(out[t] - ref).max() < 1e-4 * ref.max(), t
    # A wrong sign or axis of the shear would be caught: 1p differs from 1m by far more.
    assert np.abs(out["1p"] - out["1m"]).max() > 30 * 1e-4 * out["1p"].max()


def test_noiseless_metacal_shear_bias_small():
    shear = (0.02, 0.0)
    st = make_stamp_set(3, 5, shear, snr_range=(1e7, 1e7))
    # Noise-free: stamps with noise sign -1 are identical; use the +n ones.
    keep = np.flatnonzero(st["nsign"] == 1)
    rows = [measure_object([make_stamp_obs(st["image"][k, 0], st["weight"][k, 0],
                                           st["psf"][k, 0], SCALE)], st["id"][k], seed=1,
                           fixnoise=False) for k in keep]
    sub = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in st.items()}
    b = shear_bias(rows_to_tables(rows), sub, shear)
    assert abs(b["m1"]) < 1e-3, b
    assert abs(b["c1"]) < 1e-4 and abs(b["c2"]) < 1e-4, b


@pytest.fixture(scope="module")
def noisy_set():
    shear = (0.02, -0.02)
    st = make_stamp_set(8, 21, shear, snr_range=(100.0, 200.0))
    rows = [measure_object([make_stamp_obs(st["image"][k, 0], st["weight"][k, 0],
                                           st["psf"][k, 0], SCALE)], st["id"][k], seed=3,
                           noise_sign=st["nsign"][k]) for k in range(len(st["id"]))]
    return st, shear, rows_to_tables(rows)


def test_noisy_metacal_shear_bias_small_sample(noisy_set):
    st, shear, tables = noisy_set
    b = shear_bias(tables, st, shear)
    assert b["n_used"] == 8
    assert abs(b["m1"]) < 1e-2 and abs(b["m2"]) < 1e-2, b
    assert b["m1_err"] < 5e-3, b
    assert abs(b["c1"]) < 1e-3 and abs(b["c2"]) < 1e-3, b
    # Responses are per object and vary (size, shape): a constant would be a bug.
    r = shear_response(tables)
    assert 0.5 < r[:, 0, 0].mean() < 1.2 and r[:, 0, 0].std() > 0.02


def test_same_id_same_noise_and_flags(noisy_set):
    st, _, tables = noisy_set
    ns = tables["noshear"]
    assert np.all(ns["mcal_flags"] == 0)
    assert np.all(ns["n_epoch_model"] == 1)
    k = 0
    obs = [make_stamp_obs(st["image"][k, 0], st["weight"][k, 0], st["psf"][k, 0], SCALE)]
    again = measure_object(obs, st["id"][k], seed=3, noise_sign=st["nsign"][k])
    assert again["noshear"]["g1"] == ns["g1"][k]
    other = measure_object(obs, st["id"][k] + 1000, seed=3, noise_sign=st["nsign"][k])
    assert other["noshear"]["g1"] != ns["g1"][k]
    # A seed label replaces the id in the seeds only: same numbers, the row keeps its id.
    relabelled = measure_object(obs, st["id"][k] + 1000, seed=3, noise_sign=st["nsign"][k],
                                seed_label=st["id"][k])
    assert relabelled["noshear"]["g1"] == ns["g1"][k]
    assert relabelled["noshear"]["id"] == st["id"][k] + 1000


def test_position_labels_are_sky_cells():
    from shapepipe.modules.ngmix.tile import position_labels

    ra = np.array([216.0, 216.0 + 0.2 / 3600, 216.0 + 1.2 / 3600, 359.9999, -0.0001, 0.0])
    dec = np.array([51.0, 51.0, 51.0, -89.99, 10.0, 89.9999])
    lab = position_labels(ra, dec, cell=1.0)
    assert lab.dtype == np.int64
    assert lab[0] == lab[1] != lab[2]  # same 1" cell; the next cell
    assert lab[3] == lab[3] and lab[4] == position_labels([359.9999], [10.0])[0]  # RA wraps
    assert len(set(lab.tolist())) == 5
    # Positions jittered by far less than a cell keep their label (common random numbers).
    rng = np.random.default_rng(0)
    ra0 = 216.0 + rng.uniform(0, 0.5, 1000)
    dec0 = 51.0 + rng.uniform(0, 0.5, 1000)
    jitter = 0.01 / 3600  # 0.01 arcsec
    same = position_labels(ra0, dec0) == position_labels(ra0 + jitter, dec0 - jitter)
    assert 0.97 < same.mean() < 1.0
    with pytest.raises(ValueError, match="cell"):
        position_labels(ra, dec, cell=0.0)


def test_masked_pixels_are_filled():
    st = make_stamp_set(1, 9, (0.0, 0.0), snr_range=(80.0, 80.0))
    im, w, psf = st["image"][0, 0], st["weight"][0, 0], st["psf"][0, 0]
    mask = np.zeros(im.shape, int)
    mask[20:23, 5:40] = 1
    base = measure_object([make_stamp_obs(im, w, psf, SCALE)], 1, seed=2)
    masked = measure_object([make_stamp_obs(im, w, psf, SCALE, mask=mask)], 1, seed=2)
    assert masked["noshear"]["flags"] == 0
    assert abs(masked["noshear"]["g1"] - base["noshear"]["g1"]) < 3 * base["noshear"]["g1_err"]
    assert masked["noshear"]["npix"] == base["noshear"]["npix"] - mask.sum()


def test_catalog_roundtrip(tmp_path, noisy_set):
    _, _, tables = noisy_set
    path = tmp_path / "cat.fits"
    write_catalog(str(path), tables, header={"MCSEED": 3})
    with fits.open(path) as hdul:
        assert [h.name for h in hdul[1:]] == ["NOSHEAR", "1P", "1M", "2P", "2M"]
        for col in ("id", "n_epoch_model", "moments_fail", "ntry_fit", "g1_psfo_ngmix",
                    "g2_psfo_ngmix", "T_psfo_ngmix", "g1", "g2", "g1_err", "g2_err", "T",
                    "T_err", "Tpsf", "g1_psf", "g2_psf", "flux", "flux_err", "s2n", "mag",
                    "mag_err", "flags", "mcal_flags", "T_r", "s2n_r"):
            assert col in hdul["NOSHEAR"].columns.names
    back = read_catalog(str(path))
    np.testing.assert_array_equal(back["1p"]["g1"], tables["1p"]["g1"])


def _write_npz(path, st, n):
    np.savez(path, image=st["image"][:n], weight=st["weight"][:n], psf=st["psf"][:n],
             pixel_scale=SCALE, id=st["id"][:n])


def test_measure_shapes_script_processes_identical(tmp_path):
    st = make_stamp_set(1, 4, (0.01, 0.0), n_epoch=2, snr_range=(50.0, 50.0))
    npz = tmp_path / "stamps.npz"
    _write_npz(npz, st, 6)
    script = os.path.join(ROOT, "scripts", "measure_shapes.py")
    outs = []
    for nproc in (1, 2):
        out = tmp_path / f"out{nproc}.fits"
        subprocess.run([sys.executable, script, str(npz), str(out), "--seed", "5",
                        "--processes", str(nproc)], check=True, capture_output=True)
        outs.append(read_catalog(str(out)))
    for t in outs[0]:
        np.testing.assert_array_equal(outs[0][t], outs[1][t])
    np.testing.assert_array_equal(outs[0]["noshear"]["id"], st["id"][:6])
    assert np.all(outs[0]["noshear"]["n_epoch_model"] == 2)


def test_measure_shapes_script_reports_bad_input(tmp_path):
    npz = tmp_path / "bad.npz"
    np.savez(npz, image=np.zeros((2, 1, 11, 11)), weight=np.ones((2, 1, 11, 11)),
             pixel_scale=SCALE, id=np.arange(2))
    script = os.path.join(ROOT, "scripts", "measure_shapes.py")
    proc = subprocess.run([sys.executable, script, str(npz), str(tmp_path / "o.fits")],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "missing array(s) psf" in proc.stderr


def test_jacobian_from_tan_wcs():
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [100.0, 100.0]
    # North up, east left, slightly rotated.
    th = np.deg2rad(5.0)
    s = SCALE / 3600.0
    w.wcs.cd = np.array([[-s * np.cos(th), s * np.sin(th)], [s * np.sin(th), s * np.cos(th)]])
    jac = Jacobian.from_wcs(w, 120.0, 80.0)
    expect = SCALE * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    np.testing.assert_allclose(jac.matrix, expect, atol=2e-6)
    assert jac.x0 == 120.0 and jac.y0 == 80.0
    from shapepipe.modules.ngmix import make_wcs_obs

    obs = make_wcs_obs(np.zeros((21, 21)), np.ones((21, 21)), np.ones((11, 11)), w, 120.0, 80.0)
    assert obs.jacobian.x0 == 10.0 and obs.jacobian.y0 == 10.0
    np.testing.assert_allclose(obs.jacobian.matrix, expect, atol=2e-6)


def test_psf_stamp_smaller_than_image_and_selection_response(noisy_set):
    st, _, tables = noisy_set
    k = 3
    full = measure_object([make_stamp_obs(st["image"][k, 0], st["weight"][k, 0],
                                          st["psf"][k, 0], SCALE)], st["id"][k], seed=3,
                          noise_sign=st["nsign"][k])
    small = measure_object([make_stamp_obs(st["image"][k, 0], st["weight"][k, 0],
                                           st["psf"][k, 0][13:38, 13:38], SCALE)],
                           st["id"][k], seed=3, noise_sign=st["nsign"][k])
    assert small["noshear"]["flags"] == 0
    assert abs(small["noshear"]["g1"] - full["noshear"]["g1"]) < 0.2 * full["noshear"]["g1_err"]
    from shapepipe.modules.ngmix import selection_response

    cut = np.median(tables["noshear"]["s2n"])
    rs = selection_response(tables, lambda t: t["s2n"] > cut)
    assert rs.shape == (2, 2) and np.all(np.isfinite(rs))


def test_seed_scene_shear_maps_both_halves_to_the_same_cells():
    """SEED_SCENE_SHEAR: an object of a scene sheared by +g and by -g gets one seed cell."""
    from shapepipe.modules.ngmix.tile import position_labels
    from shapepipe.utils.lensing import shear_positions

    rng = np.random.default_rng(3)
    ra0, dec0 = 216.0, 51.0
    ra = ra0 + rng.uniform(-0.05, 0.05, 2000)
    dec = dec0 + rng.uniform(-0.05, 0.05, 2000)
    g = (0.02, -0.01)
    plus = shear_positions(ra, dec, *g, ra0, dec0)
    minus = shear_positions(ra, dec, -g[0], -g[1], ra0, dec0)
    # Without the mapping most objects change cell (they move by up to ~4").
    assert np.mean(position_labels(*plus) == position_labels(*minus)) < 0.3
    back_p = shear_positions(*plus, -g[0], -g[1], ra0, dec0)
    back_m = shear_positions(*minus, g[0], g[1], ra0, dec0)
    assert np.mean(position_labels(*back_p) == position_labels(*back_m)) > 0.999


def test_seed_scene_shear_is_checked_before_any_job():
    from shapepipe.modules.ngmix_runner import validate
    from shapepipe.pipeline.config import ShapePipeConfig

    for text, fragment in (("SEED_BY = POSITION\nSEED_SCENE_SHEAR = 0.02, 0.0, 10.0",
                            "expected g1, g2, RA, Dec"),
                           ("SEED_SCENE_SHEAR = 0.02, 0.0, 10.0, 20.0",
                            "needs SEED_BY = POSITION")):
        config = ShapePipeConfig()
        config.read_string("[NGMIX_RUNNER]\n" + text + "\n")
        with pytest.raises(ValueError, match=fragment):
            validate(config, "NGMIX_RUNNER")
    config = ShapePipeConfig()
    config.read_string("[NGMIX_RUNNER]\nSEED_BY = POSITION\n"
                       "SEED_SCENE_SHEAR = 0.02, 0.0, 10.0, 20.0\n")
    validate(config, "NGMIX_RUNNER")

# --- Round size and S/N (T_r, s2n_r): selection quantities independent of orientation ---

def _render_model(pars, psf, jac, shape, model):
    """Noiseless PSF-convolved model image (flux per pixel) on the grid of ``jac``."""
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    u, v = jac.uv(x.ravel(), y.ravel())
    p, f = profile_mixture(model)
    m, _, ok = model_and_derivs(np.asarray(pars, float), u, v, jac.det, p, f, psf, False)
    assert ok
    return m.reshape(shape)


def test_round_T_closed_form_and_round_mixture_keeps_determinant():
    g1, g2, T = 0.3, -0.4, 0.7
    gsq = g1 * g1 + g2 * g2
    assert round_T(g1, g2, T) == pytest.approx(T * (1 - gsq) / (1 + gsq), rel=1e-14)
    # Same determinant as the elliptical Gaussian: (T_r / 2)^2 = Iuu Ivv - Iuv^2.
    cuu, cvv, cuv = gT_to_moments(g1, g2, T)
    assert (round_T(g1, g2, T) / 2) ** 2 == pytest.approx(cuu * cvv - cuv ** 2, rel=1e-12)
    assert round_T(0.0, 0.0, T) == T
    assert np.isnan(round_T(0.8, 0.7, T))
    gm = GMix([0.3, 0.7], [0.01, 0.0], [0.0, -0.02], [0.05, 0.2], [0.03, 0.1], [0.01, -0.04])
    r = gm.make_round()
    np.testing.assert_allclose(r.cuu * r.cvv - r.cuv ** 2, gm.cuu * gm.cvv - gm.cuv ** 2)
    np.testing.assert_array_equal(r.cuu, r.cvv)
    assert np.all(r.cuv == 0) and np.all(r.flux == gm.flux) and np.all(r.u == gm.u)
    # The round fast path renders what the general (elliptical) renderer does with g = 0.
    from shapepipe.modules.ngmix.fitting import _render_round

    u, v = np.meshgrid(np.linspace(-2, 2, 23), np.linspace(-1.5, 2.5, 19))
    p, f = profile_mixture("exp")
    general, _, ok = model_and_derivs(np.array([0.1, -0.2, 0.0, 0.0, 0.4, 30.0]), u.ravel(),
                                      v.ravel(), 0.035, p, f, r, False)
    fast = _render_round(0.1, -0.2, 0.4, 30.0, u.ravel(), v.ravel(), 0.035, p, f, r)
    assert ok
    np.testing.assert_allclose(fast, general, rtol=1e-12, atol=1e-15 * general.max())


@pytest.mark.parametrize("model", ["gauss", "exp"])
def test_round_s2n_of_round_galaxy_and_psf_is_the_fit_s2n(model):
    jac = Jacobian(16.2, 15.8, [[SCALE, 0.0], [0.0, SCALE]])
    psf = GMix.round_gauss(0.18)
    truth = [0.01, -0.02, 0.0, 0.0, 0.3, 80.0]
    im = _render_model(truth, psf, jac, (33, 33), model)
    px = PixelSet([Observation(im, np.full((33, 33), 4.0), jac)])
    res = fit_gmix_model(px, psf, model, guess=[0, 0, 0.05, 0.0, 0.2, 60.0], priors=NO_PRIORS)
    assert res["flags"] == 0
    t_r, s2n_r = round_measures(px, res["pars"], psf, model)
    assert t_r == pytest.approx(res["pars"][4], rel=1e-6)
    # Noiseless and fitted exactly: the fit's S/N is the model S/N sqrt(sum w m^2).
    assert s2n_r == pytest.approx(res["s2n"], rel=1e-6)
    model_s2n = np.sqrt(np.sum(px.weight * _render_model(truth, psf, jac, (33, 33),
                                                         model).ravel() ** 2))
    assert s2n_r == pytest.approx(model_s2n, rel=1e-6)


def test_round_s2n_independent_of_orientation_relative_to_elliptical_psf():
    """Rotating the galaxy under elliptical PSFs changes the fitted model's S/N by percents
    but not the round S/N (two epochs, each with its own elliptical PSF)."""
    jacs = [Jacobian(20.0, 20.0, [[SCALE, 0.0], [0.0, SCALE]]),
            Jacobian(19.6, 20.3, [[0.18, 0.02], [-0.01, 0.19]])]
    psfs = [GMix(1.0, 0.0, 0.0, *gT_to_moments(0.15, 0.08, 0.2)),
            GMix(1.0, 0.0, 0.0, *gT_to_moments(0.12, 0.1, 0.16))]
    s2n, s2n_r, t_r = [], [], []
    for angle in np.linspace(0.0, np.pi, 6, endpoint=False):
        pars = [0.0, 0.0, 0.35 * np.cos(2 * angle), 0.35 * np.sin(2 * angle), 0.12, 100.0]
        obs = [Observation(_render_model(pars, p, j, (41, 41), "exp"),
                           np.full((41, 41), 5.0), j) for p, j in zip(psfs, jacs)]
        px = PixelSet(obs)
        res = fit_gmix_model(px, psfs, "exp", guess=[0, 0, 0, 0, 0.1, 90.0],
                             priors=NO_PRIORS)
        assert res["flags"] == 0
        np.testing.assert_allclose(res["pars"], pars, atol=1e-6)
        tr, sr = round_measures(px, res["pars"], psfs, "exp")
        s2n.append(res["s2n"])
        s2n_r.append(sr)
        t_r.append(tr)
    spread = np.ptp(s2n) / np.mean(s2n)
    spread_r = np.ptp(s2n_r) / np.mean(s2n_r)
    assert spread > 0.02, s2n          # the elliptical model's S/N depends on orientation
    assert spread_r < 1e-3, s2n_r      # the round one does not
    assert np.ptp(t_r) / np.mean(t_r) < 1e-6


def test_measure_object_fills_round_columns(noisy_set):
    _, _, tables = noisy_set
    for t, tab in tables.items():
        assert np.all(np.isfinite(tab["T_r"])) and np.all(tab["s2n_r"] > 0), t
        np.testing.assert_allclose(tab["T_r"], round_T(tab["g1"], tab["g2"], tab["T"]),
                                   rtol=1e-12)
        # Same weights as the fit: close to its (noisy, elliptical-model) S/N.
        ratio = tab["s2n_r"] / tab["s2n"]
        assert np.all((ratio > 0.7) & (ratio < 1.4)), (t, ratio)
