"""Tests of the .psf format, the built-in PSF model and PSF interpolation."""

import galsim
import numpy as np
import pytest
from astropy.io import fits

from shapepipe.modules.psf_model import fit_psf
from shapepipe.modules.psf_model.build import build_psf_model, options_from_psfex_file
from shapepipe.modules.psfex.config import get_column, parse_column, read_psfex_config
from shapepipe.modules.psfex.dotpsf import PSFModel, poly_powers, read_psf, write_psf
from shapepipe.modules.psfex.resample import lanczos_matrix
from shapepipe.sim.psf_stars import MoffatField, make_star_catalogue
from shapepipe.utils.ldac import read_ldac

SIZE = 25


@pytest.fixture(scope="module")
def starcat(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("psf") / "star_selection-0000001-0.fits")
    truth = make_star_catalogue(path, n_stars=150, size=SIZE, n_outliers=4, seed=5)
    return path, truth


def _hsm(image):
    res = galsim.hsm.FindAdaptiveMom(galsim.ImageD(image), strict=False)
    return np.array([res.observed_shape.g1, res.observed_shape.g2, res.moments_sigma])


def _residuals(model, positions, psf, size=SIZE):
    stamps = model.pixel_stamps(positions, size=size)
    out = []
    for (x, y), stamp in zip(positions, stamps):
        a, b = _hsm(stamp), _hsm(psf.draw(x, y, size))
        out.append([a[0] - b[0], a[1] - b[1], (a[2] - b[2]) / b[2]])
    return np.array(out)


def test_poly_powers_follow_psfex_order():
    # One group (x, y) of degree 3: y outer, x inner, as PSFEx/GalSim's
    # k = nx + ny (d + 1) - ny (ny - 1) / 2.
    deg = 3
    powers = poly_powers([1, 1], [deg])
    assert powers.shape == (10, 2)
    for k, (nx, ny) in enumerate(powers):
        assert k == nx + ny * (deg + 1) - ny * (ny - 1) // 2
    assert powers[:6].tolist() == [[0, 0], [1, 0], [2, 0], [3, 0], [0, 1], [1, 1]]
    # Two groups of degree 1 each: 1, x, y, xy.
    assert poly_powers([1, 2], [1, 1]).tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]
    # No context: a constant model.
    assert poly_powers([], []).shape == (1, 0)


def test_psf_roundtrip_and_polynomial_evaluation(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.normal(size=(6, 9, 11))
    model = PSFModel(mask, ["X_IMAGE", "Y_IMAGE"], [100.0, 200.0], [50.0, 80.0], [1, 1], [2])
    path = str(tmp_path / "m.psf")
    write_psf(path, model, accepted=42, loaded=50, chi2=1.1, fwhm=3.5)
    back = read_psf(path)
    assert back.header["ACCEPTED"] == 42 and back.header["LOADED"] == 50
    assert back.shape == (9, 11) and back.samp == 1.0
    np.testing.assert_allclose(back.mask, mask.astype(np.float32))
    x, y = 130.0, 150.0
    u, v = (x - 100.0) / 50.0, (y - 200.0) / 80.0
    expected = sum(c * m for c, m in zip([1, u, u * u, v, u * v, v * v], back.mask))
    np.testing.assert_allclose(back.evaluate([[x, y]])[0], expected, rtol=1e-12)
    with fits.open(path) as hdul:
        assert hdul[1].header["TDIM1"].replace(" ", "") == "(11,9,6)"
        assert hdul[1].header["POLNAME2"] == "Y_IMAGE"


def _gaussian_grid(n, step, sigma, dx=0.0, dy=0.0):
    g = (np.arange(n) - n // 2) * step
    return np.exp(-((g[None, :] - dx) ** 2 + (g[:, None] - dy) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize("samp", [0.5, 1.0, 1.5])
def test_psf_samp_resampled_to_pixel_grid(samp):
    # A model sampled every `samp` pixels must give, on the image grid, the same function
    # sampled every pixel (the model is the effective PSF, interpolated not integrated).
    sigma = 2.2
    n = int(round(31 / samp)) | 1
    model = PSFModel(_gaussian_grid(n, samp, sigma)[None], [], [], [], [], [], samp=samp)
    stamps = model.pixel_stamps(np.zeros((1, 0)), size=21, offsets=[[0.3, -0.2]])
    truth = _gaussian_grid(21, 1.0, sigma, 0.3, -0.2)
    truth /= truth.sum()
    np.testing.assert_allclose(stamps[0].sum(), 1.0, rtol=1e-12)
    assert np.abs(stamps[0] - truth).max() < 1.5e-3 * truth.max()


def test_lanczos_rows_preserve_constants():
    w = lanczos_matrix(np.array([[0.3, 5.5, 9.0]]), 12)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0)
    # An integer position is the sample itself.
    np.testing.assert_allclose(w[0, 2, :], np.eye(12)[9], atol=1e-12)


def test_fit_recovers_varying_psf_and_rejects_blends(starcat):
    path, truth = starcat
    data, _ = read_ldac(path)
    pos = np.stack([data["XWIN_IMAGE"], data["YWIN_IMAGE"]], axis=1)
    result = fit_psf(data["VIGNET"], pos, pos, flux_guess=data["FLUX_APER"][:, 0],
                     snr=data["SNR_WIN"])
    # Blends are rejected, or (companion outside most of the core) keep only the pixels
    # that fit: either way they must not bias the model (checked below).
    assert result.accepted[truth["outlier"]].sum() <= 1, "blended stars must be rejected"
    assert result.accepted.sum() >= 140
    assert 0.5 < result.chi2_total < 1.5
    res = _residuals(result.model, pos, truth["psf"])
    mean, rms = res.mean(axis=0), res.std(axis=0)
    # The model's own noise moves the mean by ~6e-4 (rms over seeds) at 150 stars.
    assert abs(mean[0]) < 2.5e-3 and abs(mean[1]) < 2.5e-3
    assert abs(mean[2]) < 3e-3, f"size residual {mean[2]}"
    assert rms[2] < 5e-3
    # The model follows the PSF variation: its size tracks the true size star by star.
    true_fwhm = truth["psf"].params(pos[:, 0], pos[:, 1])[0]
    model_sigma = np.array([_hsm(s)[2] for s in result.model.pixel_stamps(pos)])
    assert np.corrcoef(true_fwhm, model_sigma)[0, 1] > 0.95


def test_fit_without_clipping_is_hurt_by_blends(starcat):
    # Guards the rejection test above: the blends do matter.
    path, truth = starcat
    data, _ = read_ldac(path)
    pos = np.stack([data["XWIN_IMAGE"], data["YWIN_IMAGE"]], axis=1)
    kept = fit_psf(data["VIGNET"], pos, pos, snr=data["SNR_WIN"], clip_nsigma=1e9,
                   pixel_clip=0)
    assert kept.accepted[truth["outlier"]].all()
    res = _residuals(kept.model, pos, truth["psf"])
    clean = fit_psf(data["VIGNET"], pos, pos, snr=data["SNR_WIN"])
    res_clean = _residuals(clean.model, pos, truth["psf"])
    assert np.abs(res.mean(axis=0)).max() > np.abs(res_clean.mean(axis=0)).max()


def test_too_few_stars_is_a_clear_error(starcat):
    path, _ = starcat
    data, _ = read_ldac(path)
    pos = np.stack([data["XWIN_IMAGE"], data["YWIN_IMAGE"]], axis=1)[:4]
    with pytest.raises(ValueError, match="usable stars"):
        fit_psf(data["VIGNET"][:4], pos, pos)


def test_press_lowers_degree_when_stars_are_too_few(starcat):
    # 5 stars cannot constrain 6 quadratic terms: without selection that is the one-line
    # error above; with PRESS the fit starts at degree 1 (3 terms).
    path, truth = starcat
    data, _ = read_ldac(path)
    good = np.flatnonzero(~truth["outlier"])[:5]
    pos = np.stack([data["XWIN_IMAGE"], data["YWIN_IMAGE"]], axis=1)[good]
    args = (data["VIGNET"][good], pos, pos)
    with pytest.raises(ValueError, match="only 5 usable stars .* 6 terms"):
        fit_psf(*args)
    result = fit_psf(*args, degree_selection="PRESS")
    assert result.degrees == (1,) and result.model.mask.shape[0] == 3
    with pytest.raises(ValueError, match="only 2 usable stars"):
        fit_psf(data["VIGNET"][good[:2]], pos[:2], pos[:2], degree_selection="PRESS")


def test_build_writes_psf_and_psfex_cat(starcat, tmp_path):
    path, truth = starcat
    psf_path = str(tmp_path / "star_selection-0000001-0.psf")
    cat_path = str(tmp_path / "psfex_cat-0000001-0.cat")
    summary = build_psf_model(path, psf_path, cat_path, {"PSF_SIZE": [21, 21]})
    model = read_psf(psf_path)
    assert model.shape == (21, 21)
    assert model.polnames == ["XWIN_IMAGE", "YWIN_IMAGE"]
    assert model.header["ACCEPTED"] == summary["accepted"]
    assert 3.0 < summary["fwhm"] < 4.6
    cat, _ = read_ldac(cat_path)
    assert (cat["FLAGS_PSF"] == 0).sum() == summary["accepted"]
    assert np.sum(cat["FLAGS_PSF"][truth["outlier"]] == 0) <= 1


def test_psfex_config_parsing(tmp_path):
    cfg = tmp_path / "x.psfex"
    cfg.write_text("PSF_SIZE 31,31  # size\nPSF_SAMPLING 0.0\nPSFVAR_DEGREES 3\n"
                   "PHOTFLUX_KEY FLUX_APER(2)\n\n# comment\n")
    raw = read_psfex_config(str(cfg))
    assert raw["PSF_SIZE"] == ["31", "31"]
    opts = options_from_psfex_file(str(cfg))
    assert opts == {"PSF_SIZE": [31, 31], "PSF_SAMPLING": 1.0, "PSFVAR_DEGREES": [3],
                    "PHOTFLUX_KEY": "FLUX_APER(2)"}
    assert parse_column("FLUX_APER(2)") == ("FLUX_APER", 1)
    with pytest.raises(ValueError, match="NAME"):
        parse_column("FLUX_APER(0)")
    table = np.zeros(2, dtype=[("A", "f4", (3,)), ("B", "f4")])
    table["A"][:, 1] = 7
    assert get_column(table, "A(2)").tolist() == [7, 7]
    with pytest.raises(KeyError, match="no column C"):
        get_column(table, "C")


def test_moffat_field_truth_is_consistent():
    psf = MoffatField()
    image = psf.draw(1000.0, 2000.0, 25)
    assert abs(image.sum() - 1) < 0.02
    fwhm, g1, g2 = psf.params(np.array([1.0, 2048.0]), np.array([2306.0, 2306.0]))
    assert fwhm[1] > fwhm[0] and g1[1] > g1[0]


@pytest.mark.parametrize("samp, size", [(0.5, 41), (1.5, 17)])
def test_fit_with_psf_samp(starcat, samp, size, tmp_path):
    # A super-resolved (0.5) or coarser (1.5) model written with PSF_SAMP and read back
    # gives the PSF on the image grid as well as the samp = 1 model.
    path, truth = starcat
    psf_path = str(tmp_path / "m.psf")
    build_psf_model(path, psf_path, None, {"PSF_SAMPLING": samp, "PSF_SIZE": [size, size]})
    model = read_psf(psf_path)
    assert model.samp == samp and model.shape == (size, size)
    data, _ = read_ldac(path)
    pos = np.stack([data["XWIN_IMAGE"], data["YWIN_IMAGE"]], axis=1)
    assert model.pixel_stamps(pos[:1]).shape[1] == int(round(size * samp)) | 1
    res = _residuals(model, pos, truth["psf"])
    assert np.abs(res.mean(axis=0)[:2]).max() < 2.5e-3 and abs(res.mean(axis=0)[2]) < 3e-3
    assert res.std(axis=0)[2] < 5e-3


# --- Degree selection (PRESS on the stars' shapes) ---------------------------------------------

def _field_fit(tmp_path, psf, n_stars, seed, **kwargs):
    path = str(tmp_path / f"stars_{n_stars}_{seed}.fits")
    make_star_catalogue(path, n_stars=n_stars, size=SIZE, psf=psf, seed=seed)
    data, _ = read_ldac(path)
    pos = np.stack([data["XWIN_IMAGE"], data["YWIN_IMAGE"]], axis=1)
    return fit_psf(data["VIGNET"], pos, pos, flux_guess=data["FLUX_APER"][:, 0],
                   snr=data["SNR_WIN"], **kwargs)


def _held_out(psf, n=40, seed=11):
    rng = np.random.default_rng(seed)
    ny, nx = psf.ccd_shape
    return np.stack([rng.uniform(30, nx - 30, n), rng.uniform(30, ny - 30, n)], axis=1)


def _rms(model, positions, psf):
    return np.sqrt((_residuals(model, positions, psf) ** 2).mean(axis=0))


def test_press_keeps_degree_2_when_it_predicts_better(tmp_path):
    # The default MoffatField (size +-3.6%, quadratic in y): with 30 stars, degree 2 is
    # closer to the truth at held-out positions than degree 1, and PRESS keeps it.
    psf = MoffatField()
    held = _held_out(psf)
    auto = _field_fit(tmp_path, psf, 30, 3, degrees=(2,), degree_selection="PRESS")
    lin = _field_fit(tmp_path, psf, 30, 3, degrees=(1,))
    assert auto.degrees == (2,)
    assert set(auto.press) == {(2,), (1,)}
    assert auto.press[(2,)] < auto.press[(1,)]
    # The premise: the size residual at held-out stars is smaller at degree 2.
    assert _rms(auto.model, held, psf)[2] < 0.7 * _rms(lin.model, held, psf)[2]


def test_press_lowers_degree_for_a_nearly_linear_field(tmp_path):
    # Weak, nearly linear variation and 30 stars: the quadratic terms fit noise; PRESS picks
    # degree 1, and degree 1 predicts held-out ellipticities better than degree 2.
    psf = MoffatField(fwhm_grad=0.02, g_amp=0.01)
    held = _held_out(psf)
    auto = _field_fit(tmp_path, psf, 30, 1, degrees=(2,), degree_selection="PRESS")
    quad = _field_fit(tmp_path, psf, 30, 1, degrees=(2,))
    assert auto.degrees == (1,)
    assert auto.model.degrees == [1] and auto.model.mask.shape[0] == 3
    r_auto, r_quad = _rms(auto.model, held, psf), _rms(quad.model, held, psf)
    assert r_auto[:2].max() < r_quad[:2].max()


def test_press_keeps_configured_degree_with_many_stars(starcat):
    path, truth = starcat
    data, _ = read_ldac(path)
    pos = np.stack([data["XWIN_IMAGE"], data["YWIN_IMAGE"]], axis=1)
    result = fit_psf(data["VIGNET"], pos, pos, flux_guess=data["FLUX_APER"][:, 0],
                     snr=data["SNR_WIN"], degree_selection="press")
    assert result.degrees == (2,)
    assert min(result.press, key=result.press.get) == (2,)
    # A well-fitted model predicts each star's three shape values to about their noise
    # (chi2 ~ 3 per star).
    assert 1.5 < result.press[(2,)] < 6.0


def test_press_matches_explicit_leave_one_out():
    # The hat-matrix identity must equal refitting without each star in turn.
    from shapepipe.modules.psf_model.fit import _normal_equations, moment_functionals, press_chi2
    rng = np.random.default_rng(3)
    n, side = 12, 7
    u = rng.uniform(-0.5, 0.5, (n, 2))
    phi = poly_terms_for(u, 1)
    truth = _gaussian_grid(side, 1.0, 1.3).ravel()
    truth /= truth.sum()
    flux = rng.uniform(500, 5000, n)
    dflat = flux[:, None] * truth[None] * (1 + 0.1 * u[:, :1]) + rng.normal(0, 2, (n, side**2))
    use = rng.random((n, side**2)) > 0.05
    accepted = np.ones(n, bool)
    accepted[4] = False
    model = np.tile(truth, (n, 1))
    g = moment_functionals(truth.reshape(side, side), 1.0)
    fast = press_chi2(dflat, use, phi, flux, accepted, 4.0, 0.0, 0.01, model, g, block=5)
    a, b, wgt, y = _normal_equations(dflat, use, phi, flux, accepted, 4.0, 0.0, 0.01, model)
    idx = np.flatnonzero(accepted)
    terms = []
    for j, s in enumerate(idx):
        keep = accepted.copy()
        keep[s] = False
        a_s, b_s, _, _ = _normal_equations(dflat, use, phi, flux, keep, 4.0, 0.0, 0.01, model)
        coeffs = np.linalg.solve(a_s, b_s[:, :, None])[:, :, 0]
        used = wgt[j] > 0
        loo = np.where(used, y[j] - coeffs @ phi[s], 0.0)
        noise = (np.where(used, 1.0 / np.where(used, wgt[j], 1.0), 0.0)[None] * g**2).sum(1)
        terms.append(((g @ loo) ** 2 / noise).sum())
    np.testing.assert_allclose(fast, terms, rtol=1e-6)


def poly_terms_for(u, degree):
    from shapepipe.modules.psfex.dotpsf import poly_terms
    return poly_terms(u, poly_powers([1, 1], [degree]))


def test_candidate_degrees():
    from shapepipe.modules.psf_model.fit import candidate_degrees
    assert candidate_degrees((2,)) == [(2,), (1,)]
    assert candidate_degrees((2,), 0) == [(2,), (1,), (0,)]
    assert candidate_degrees((3, 1), 0) == [(3, 1), (2, 1), (1, 1), (0, 0)]


def test_select_degree_outliers_and_one_standard_error():
    from shapepipe.modules.psf_model.fit import select_degree
    rng = np.random.default_rng(1)
    noise = rng.chisquare(3, 40)
    # Degree 2 better by far more than its standard error: kept.
    terms = {(2,): noise, (1,): noise + 2.0}
    assert select_degree(terms)[0] == (2,)
    # Better by less than one standard error of the paired difference: the lower degree.
    wobble = rng.normal(0.0, 1.0, 40)
    terms = {(2,): noise, (1,): noise + 0.05 + wobble}
    assert select_degree(terms)[0] == (1,)
    assert select_degree(terms, one_se=False)[0] == ((2,) if np.mean(0.05 + wobble) > 0
                                                     else (1,))
    # A star no degree predicts (a blend) decides nothing: without it degree 1 wins.
    d1 = noise.copy()
    d1[0] = 500.0
    d2 = noise + 0.5
    d2[0] = 300.0
    terms = {(2,): d2, (1,): d1}
    chosen, press = select_degree(terms, one_se=False)
    assert chosen == (1,) and press[(1,)] < press[(2,)]
    assert select_degree(terms, outlier_chi2=np.inf, one_se=False)[0] == (2,)
    # Too few stars for a candidate: it cannot be chosen.
    assert select_degree({(2,): np.full(5, np.inf), (1,): noise[:5]})[0] == (1,)


def test_degree_selection_in_header_and_bad_value(starcat, tmp_path):
    path, _ = starcat
    psf_path = str(tmp_path / "m.psf")
    summary = build_psf_model(path, psf_path, None, {"PSF_SIZE": [21, 21],
                                                     "PSFVAR_DEGREES": [1], "DEGREE_MIN": 0})
    header = fits.getheader(psf_path, 1)
    assert header["DEGSEL"] == "PRESS" and header["POLDEGCF"] == "1"
    assert header["POLDEG1"] == int(summary["degrees"]) == read_psf(psf_path).degrees[0]
    assert set(summary["press"]) == {"1", "0"}
    build_psf_model(path, psf_path, None, {"PSF_SIZE": [21, 21], "DEGREE_SELECTION": "none"})
    header = fits.getheader(psf_path, 1)
    assert header["DEGSEL"] == "NONE" and header["POLDEG1"] == 2
    with pytest.raises(ValueError, match="DEGREE_SELECTION = 'AIC'.*PRESS, NONE") as err:
        build_psf_model(path, psf_path, None, {"DEGREE_SELECTION": "AIC"})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="PRESS or NONE"):
        fit_psf(np.zeros((10, 9, 9)), np.zeros((10, 2)), np.zeros((10, 2)),
                degree_selection="BIC")


def test_runner_keys_reject_a_bad_degree_selection():
    from shapepipe.modules.psf_model_runner import KEYS
    from shapepipe.pipeline.config import ConfigError, ShapePipeConfig
    config = ShapePipeConfig("x.ini")
    config.read_string("[PSF_MODEL_RUNNER]\nDEGREE_SELECTION = AIC\n")
    with pytest.raises(ConfigError, match="DEGREE_SELECTION.*expected one of PRESS, NONE") as err:
        config.read_keys("PSF_MODEL_RUNNER", KEYS)
    assert "\n" not in str(err.value)
    config.read_string("[PSF_MODEL_RUNNER]\nDEGREE_SELECTION = none\nDEGREE_MIN = 0\n")
    opts = config.read_keys("PSF_MODEL_RUNNER", KEYS)
    assert opts["DEGREE_SELECTION"].upper() == "NONE" and opts["DEGREE_MIN"] == 0
