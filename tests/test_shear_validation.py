"""scripts/shear_validation.py on a synthetic final catalogue matched to a tiny simulated truth."""

import importlib.util
import json
import os

import numpy as np
import pytest
from astropy.io import fits

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "shear_validation.py")
TYPES = ("NOSHEAR", "1P", "1M", "2P", "2M")
DELTA = {"NOSHEAR": (0, 0), "1P": (0.01, 0), "1M": (-0.01, 0), "2P": (0, 0.01),
         "2M": (0, -0.01)}


def _load_script():
    spec = importlib.util.spec_from_file_location("shear_validation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sv = _load_script()


def synthetic_columns(rng, n, shear, e_int=None, resp=0.7, noise=0.0, snr=None, snr_slope=0.0):
    """Metacal columns of a toy estimator: g_T = R (e + shear + delta_T) + noise.

    ``snr_slope`` makes the measured S/N depend on the measured |g| of each metacal image
    (an isotropic, shape-dependent selection, which only the selection response corrects).
    """
    e = np.zeros((n, 2)) if e_int is None else e_int
    nz = noise * rng.standard_normal((n, 2))
    snr0 = rng.uniform(5, 60, n) if snr is None else snr
    cols = {}
    for t in TYPES:
        g = resp * (e + np.asarray(shear) + np.asarray(DELTA[t])) + nz
        cols[f"NGMIX_ELL_{t}"] = g
        cols[f"NGMIX_FLAGS_{t}"] = np.zeros(n, np.int32)
        cols[f"NGMIX_SNR_{t}"] = snr0 * (1 + snr_slope * np.hypot(g[:, 0], g[:, 1]))
        cols[f"NGMIX_T_{t}"] = np.full(n, 0.3)
        cols[f"NGMIX_Tpsf_{t}"] = np.full(n, 0.4)
    cols["FLAGS"] = np.zeros(n, np.int16)
    cols["NGMIX_MCAL_FLAGS"] = np.zeros(n, np.int32)
    cols["SPREAD_CLASS"] = np.ones(n, np.int16)
    return cols


CUTS = {"flags": True, "snr_min": 10.0, "t_ratio_min": 0.5, "spread_class": 1}


def test_mean_shear_exact_without_shape_noise():
    rng = np.random.default_rng(1)
    cols = synthetic_columns(rng, 500, (0.03, -0.02))
    res = sv.mean_shear(sv.metacal_tables(cols), sv.make_selector(CUTS), n_boot=50)
    np.testing.assert_allclose(res["g"], [0.03, -0.02], atol=1e-10)
    np.testing.assert_allclose(res["R"], 0.7 * np.eye(2), atol=1e-10)
    assert res["n"] == int(np.sum(cols["NGMIX_SNR_NOSHEAR"] > 10))


def test_selection_response_corrects_shape_dependent_cut():
    rng = np.random.default_rng(2)
    n = 40000
    # Intrinsic shapes in rotated pairs: they cancel exactly in the mean unless a cut
    # depending on the measured shape keeps more of one orientation.
    e = rng.normal(0, 0.25, (n // 2, 2))
    e = np.concatenate([e, -e])
    snr = np.tile(rng.uniform(4, 14, n // 2), 2)
    cols = synthetic_columns(rng, n, (0.02, 0.0), e_int=e, snr=snr, snr_slope=6.0)
    tables = sv.metacal_tables(cols)
    select = sv.make_selector(CUTS)
    res = sv.mean_shear(tables, select, n_boot=100)
    # The cut favours elongated images, hence those aligned with the shear: without R_S
    # the mean is biased high.
    sel = select(tables["noshear"])
    naive = np.mean(cols["NGMIX_ELL_NOSHEAR"][sel], axis=0) / 0.7
    assert naive[0] - 0.02 > 0.001
    assert res["R_S"][0, 0] > 0.03 and res["R_S"][1, 1] > 0.03
    assert abs(res["g"][0] - 0.02) < 0.2 * abs(naive[0] - 0.02)
    assert abs(res["g"][0] - 0.02) < 3 * res["g_err"][0] + 1e-3
    # Removing the cut's shape dependence removes the selection response.
    cols0 = synthetic_columns(rng, n, (0.02, 0.0), e_int=e, snr=snr)
    res0 = sv.mean_shear(sv.metacal_tables(cols0), select, n_boot=20)
    np.testing.assert_allclose(res0["R_S"], 0.0, atol=1e-12)


def test_bootstrap_error_matches_shape_noise():
    rng = np.random.default_rng(3)
    n = 4000
    e = rng.normal(0, 0.25, (n, 2))
    cols = synthetic_columns(rng, n, (0.0, 0.0), e_int=e, snr=np.full(n, 30.0))
    res = sv.mean_shear(sv.metacal_tables(cols), sv.make_selector(CUTS), n_boot=300)
    expected = 0.25 / np.sqrt(n)
    assert np.all(np.abs(np.asarray(res["g_err"]) / expected - 1) < 0.2)


def test_match_one_to_one():
    ra = np.array([10.0, 10.001, 10.002])
    dec = np.array([0.0, 0.0, 0.0])
    cat_ra = np.array([10.0, 10.00001, 10.002 + 0.3 / 3600, 10.01])
    cat_dec = np.zeros(4)
    idx = sv.match(cat_ra, cat_dec, ra, dec, radius=0.6)
    # Two detections of truth 0: the nearer keeps it; the far one matches nothing.
    assert list(idx) == [0, -1, 2, -1]


def test_match_dominant_takes_the_object_whose_light_the_detection_is():
    """A detection 0.3" from a faint star and 0.5" from a galaxy 2 mag brighter is the
    galaxy's (the nearest match says star); an isolated star is itself; of two detections of
    one object, the one it dominates more keeps it; nothing within 1": no match."""
    a = 1.0 / 3600
    truth = {"RA": np.array([0.0, 0.8 * a, 20 * a, 40 * a]), "DEC": np.zeros(4),
             "MAG": np.array([23.0, 21.0, 20.0, 20.0]), "HLR": np.array([0.0, 0.5, 0.0, 0.0])}
    cat_ra = np.array([0.3 * a, 20.05 * a, 20.4 * a, 60 * a])
    idx = sv.match_dominant(cat_ra, np.zeros(4), truth)
    assert list(idx) == [1, 2, -1, -1]
    assert list(sv.match(cat_ra, np.zeros(4), truth["RA"], truth["DEC"], 0.6)) == [0, 2, -1, -1]
    # the same detection next to a star of equal brightness: the nearer star
    truth["MAG"][1], truth["HLR"][1] = 23.0, 0.0
    assert sv.match_dominant(cat_ra[:1], np.zeros(1), truth)[0] == 0


@pytest.fixture(scope="module")
def truth_dir(tmp_path_factory):
    from shapepipe.sim import make_survey, tiny_params

    d = tmp_path_factory.mktemp("sv_truth")
    make_survey(str(d), seed=1, params=tiny_params(), shear=(0.04, -0.02))
    return str(d / "truth")


def _final_cat(truth_dir, out_path, seed=4):
    """A final catalogue in make_catalog's layout from the truth: what a chain might give."""
    rng = np.random.default_rng(seed)
    with fits.open(os.path.join(truth_dir, "objects.fits")) as hdul:
        t = hdul[1].data
        ra, dec, star, mag = (np.array(t[c]) for c in ("RA", "DEC", "IS_STAR", "MAG"))
        e_int = np.column_stack([t["E1_INT"], t["E2_INT"]]).astype(float)
    det = (mag < 24.0) & (rng.uniform(size=mag.size) < 0.97)
    k = np.flatnonzero(det)
    n = k.size
    jitter = 0.1 / 3600
    # Misclassify 2% of the faint objects.
    cls = np.where(star[k] == 1, 0, 1)
    flip = (mag[k] > 22) & (rng.uniform(size=n) < 0.02)
    cls = np.where(flip, 1 - cls, cls)
    snr = 10 ** (0.4 * (26.0 - mag[k]))
    cols = synthetic_columns(rng, n, (0.04, -0.02), e_int=np.where(star[k, None] == 1, 0.0,
                                                                   e_int[k]),
                             noise=0.05, snr=snr)
    cols["SPREAD_CLASS"] = cls.astype(np.int16)
    columns = [
        fits.Column(name="NUMBER", format="J", array=np.arange(1, n + 1)),
        fits.Column(name="XWIN_WORLD", format="D", array=ra[k] + rng.normal(0, jitter, n)),
        fits.Column(name="YWIN_WORLD", format="D", array=dec[k] + rng.normal(0, jitter, n)),
        fits.Column(name="MAG_AUTO", format="E", array=mag[k] + rng.normal(0, 0.05, n)),
        fits.Column(name="FLUX_RADIUS", format="E",
                    array=np.where(star[k] == 1, 2.0, 3.0 + rng.uniform(0, 3, n))),
        fits.Column(name="SNR_WIN", format="E", array=snr),
        fits.Column(name="SPREAD_MODEL", format="E",
                    array=np.where(cls == 1, 0.01, 0.0)),
        fits.Column(name="NGMIX_ELL_PSFo_NOSHEAR", format="2D",
                    array=rng.normal(0, 0.02, (n, 2))),
    ]
    for name, value in cols.items():
        if value.ndim == 2:
            columns.append(fits.Column(name=name, format="2D", array=value))
        else:
            fmt = {"i": "J", "f": "D"}[value.dtype.kind]
            columns.append(fits.Column(name=name, format=fmt, array=value))
    hdu = fits.BinTableHDU.from_columns(columns, name="RESULTS")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(out_path)
    return {"n": n, "flip": int(flip.sum()), "cls": cls, "star": star[k], "mag": mag[k],
            "snr": snr}


def test_validate_end_to_end(truth_dir, tmp_path):
    run = tmp_path / "run" / "make_catalog_runner" / "output"
    run.mkdir(parents=True)
    info = _final_cat(truth_dir, str(run / "final_cat-270-283.fits"))
    out = tmp_path / "val"
    summary = sv.validate(str(tmp_path / "run"), truth_dir, str(out), dict(CUTS), n_boot=100)
    assert summary["n_objects"] == info["n"]
    assert summary["n_matched"] >= 0.99 * info["n"]
    assert summary["applied_shear"] == [0.04, -0.02]
    res = summary["mean_shear"]["all"]
    assert summary["shear_within_3sigma"], res
    assert 0 < res["g_err"][0] < 0.05
    # Purity at S/N > 20 equals the fraction of non-flipped objects among class-1 ones.
    c = summary["classification"]
    sel = (info["cls"] == 1) & (info["snr"] > 20)
    assert c["galaxy_purity_snr_gt_20"] == pytest.approx(np.mean(info["star"][sel] == 0),
                                                         abs=0.01)
    assert c["galaxy_purity_snr_gt_20"] < 1.0
    det = summary["detection_completeness"]["galaxy"]
    mags = np.asarray(det["mag_bins"])
    frac = np.array([np.nan if v is None else v for v in det["fraction"]])
    bright = (mags[:-1] > 18) & (mags[1:] < 23.5)
    assert np.all(np.abs(frac[bright][np.isfinite(frac[bright])] - 0.97) < 0.1)
    faint = mags[:-1] >= 24.0
    assert np.all(frac[faint][np.isfinite(frac[faint])] == 0)
    for name in ("size_magnitude", "classification", "detection_completeness", "shear",
                 "response", "ell_vs_psf"):
        assert (out / f"{name}.png").stat().st_size > 5000, name
    loaded = json.loads((out / "shear_summary.json").read_text())
    assert loaded["n_selected"] == summary["n_selected"]
    assert "within 3 sigma" in (out / "shear_summary.txt").read_text()


def test_missing_column_one_line(truth_dir, tmp_path):
    path = tmp_path / "final_cat-1.fits"
    hdu = fits.BinTableHDU.from_columns(
        [fits.Column(name="XWIN_WORLD", format="D", array=np.zeros(2))], name="RESULTS")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    with pytest.raises(SystemExit, match="missing column"):
        sv.validate(str(path), truth_dir, str(tmp_path / "o"), dict(CUTS))
    with pytest.raises(SystemExit, match="no final_cat"):
        sv.validate(str(tmp_path / "nothing"), truth_dir, str(tmp_path / "o"), dict(CUTS))


def _with_round(cols, snr_r, t_r):
    out = dict(cols)
    for t in TYPES:
        out[f"NGMIX_SNR_R_{t}"] = snr_r
        out[f"NGMIX_T_R_{t}"] = t_r
    return out


def test_round_cuts_use_the_round_columns():
    rng = np.random.default_rng(7)
    n = 400
    cols = synthetic_columns(rng, n, (0.0, 0.0))
    snr_r = rng.uniform(5, 60, n)
    t_r = rng.uniform(0.0, 0.4, n)  # Tpsf = 0.4: T_r / Tpsf in 0-1
    tables = sv.metacal_tables(_with_round(cols, snr_r, t_r))
    ns = tables["noshear"]
    np.testing.assert_array_equal(ns["snr_r"], snr_r)
    np.testing.assert_array_equal(ns["T_r"], t_r)
    plain = sv.make_selector(dict(CUTS))(ns)
    # Without the key, or round False: the elliptical-model columns, as before.
    expect_plain = (ns["snr"] > 10) & (ns["T"] / ns["Tpsf"] > 0.5)
    np.testing.assert_array_equal(plain, expect_plain)
    np.testing.assert_array_equal(sv.make_selector({**CUTS, "round": False})(ns), plain)
    rnd = sv.make_selector({**CUTS, "round": True})(ns)
    np.testing.assert_array_equal(rnd, (snr_r > 10) & (t_r / 0.4 > 0.5))
    assert rnd.sum() != plain.sum()
    # Old catalogues: NaN round fields; the plain cuts still work, round cuts reject all.
    old = sv.metacal_tables(cols)
    assert np.all(np.isnan(old["1p"]["snr_r"])) and np.all(np.isnan(old["2m"]["T_r"]))
    np.testing.assert_array_equal(sv.make_selector(dict(CUTS))(old["noshear"]), plain)
    assert not sv.make_selector({**CUTS, "round": True})(old["noshear"]).any()


def test_round_cuts_flag_end_to_end(truth_dir, tmp_path):
    path = tmp_path / "final_cat-270-283.fits"
    _final_cat(truth_dir, str(path))
    with pytest.raises(SystemExit, match="round-cuts needs NGMIX_T_R"):
        sv.main([str(path), "--truth", truth_dir, "-o", str(tmp_path / "o1"), "--round-cuts",
                 "--no-plots", "--n-boot", "10"])
    # Add round columns: S/N_r 0 for every other object, T_r = T.
    with fits.open(path) as hdul:
        data = hdul["RESULTS"].data
        n = len(data)
        snr_r = np.where(np.arange(n) % 2 == 0, 0.0, np.asarray(data["NGMIX_SNR_NOSHEAR"]))
        extra = []
        for t in TYPES:
            extra += [fits.Column(name=f"NGMIX_SNR_R_{t}", format="D", array=snr_r),
                      fits.Column(name=f"NGMIX_T_R_{t}", format="D",
                                  array=np.asarray(data[f"NGMIX_T_{t}"]))]
        hdu = fits.BinTableHDU.from_columns(hdul["RESULTS"].columns + fits.ColDefs(extra),
                                            name="RESULTS")
    with_round = tmp_path / "r" / "final_cat-270-283.fits"
    with_round.parent.mkdir()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(with_round)
    assert sv.main([str(with_round), "--truth", truth_dir, "-o", str(tmp_path / "o2"),
                    "--no-plots", "--n-boot", "10"]) == 0
    assert sv.main([str(with_round), "--truth", truth_dir, "-o", str(tmp_path / "o3"),
                    "--round-cuts", "--no-plots", "--n-boot", "10"]) == 0
    plain = json.loads((tmp_path / "o2" / "shear_summary.json").read_text())
    rnd = json.loads((tmp_path / "o3" / "shear_summary.json").read_text())
    assert plain["cuts"]["round"] is False and rnd["cuts"]["round"] is True
    # The round S/N zeroes half the objects: about half as many pass.
    assert 0.4 < rnd["n_selected"] / plain["n_selected"] < 0.6
