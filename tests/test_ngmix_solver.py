"""Tests of the fitting engine (compiled kernel, Newton finish, multi-start) and of the
variance-reduction tools of the shear-bias simulations (importance sampling, rotated noise)."""

import numpy as np
import pytest

import shapepipe.modules.ngmix.fitting as fitting
from shapepipe.modules.ngmix import GMix, make_stamp_obs, measure_object, profile_mixture
from shapepipe.modules.ngmix._kernels import HAVE_KERNEL
from shapepipe.modules.ngmix.fitting import levenberg_marquardt, normal_equations
from shapepipe.sim.shear_stamps import (
    bias_from_groups,
    draw_group,
    paired_bias_difference,
    sample_snr,
    snr_from_weight,
)

SCALE = 0.187


def _grid(n=41):
    y, x = np.mgrid[0:n, 0:n]
    c = (n - 1) / 2
    return ((x - c) * SCALE).ravel(), ((y - c) * SCALE).ravel()


@pytest.mark.skipif(not HAVE_KERNEL, reason="numba not installed")
@pytest.mark.parametrize("model", ["gauss", "exp", "dev"])
def test_kernel_matches_numpy_normal_equations(model, monkeypatch):
    u, v = _grid()
    p, f = profile_mixture(model)
    psf = GMix([0.6, 0.4], [0.0, 0.02], [0.0, -0.01], [0.05, 0.14], [0.06, 0.11],
               [0.004, -0.01])
    rng = np.random.default_rng(3)
    data = rng.normal(0.0, 0.01, u.size)
    sw = rng.uniform(50.0, 150.0, u.size)
    x = np.array([0.05, -0.03, 0.25, -0.12, 0.45, 1.3])
    parts = [slice(None)]
    monkeypatch.setattr(fitting, "HAVE_KERNEL", True)
    fast = fitting._pixel_equations(u, v, SCALE ** 2, data, sw, p, f, [psf], parts)(x)
    monkeypatch.setattr(fitting, "HAVE_KERNEL", False)
    ref = fitting._pixel_equations(u, v, SCALE ** 2, data, sw, p, f, [psf], parts)(x)
    assert fast[0] == pytest.approx(ref[0], rel=1e-12)
    np.testing.assert_allclose(fast[1], ref[1], rtol=1e-9, atol=1e-12 * np.abs(ref[1]).max())
    np.testing.assert_allclose(fast[2], ref[2], rtol=1e-9, atol=1e-12 * np.abs(ref[2]).max())
    # Undefined model (negative size beyond the PSF): both say so.
    bad = x.copy()
    bad[4] = -10.0
    assert fitting._pixel_equations(u, v, SCALE ** 2, data, sw, p, f, [psf], parts)(bad) is None


def test_newton_finish_on_a_large_residual_problem():
    # Dennis & Schnabel's example r(x) = (x + 1, 0.9 x^2 + x - 1): the residuals do not
    # vanish at the minimum x = 0, and Gauss-Newton-type steps converge only linearly
    # (rate 0.9), like low-S/N galaxy fits; the Newton phase converges quadratically.
    def func(z):
        x = z[0]
        r = np.array([x + 1.0, 0.9 * x * x + x - 1.0])
        return normal_equations(r, np.array([[1.0, 1.8 * x + 1.0]]))

    res = levenberg_marquardt(func, [1.0], maxiter=400, ftol=1e-15)
    plain = levenberg_marquardt(func, [1.0], maxiter=400, ftol=1e-15, newton_after=None)
    assert res["converged"] and abs(res["x"][0]) < 1e-8
    assert res["nfev"] < plain["nfev"] / 3
    assert abs(plain["x"][0]) > 10 * abs(res["x"][0])


def test_zero_residual_minimum_is_converged():
    # Rosenbrock residuals reach chi^2 = 0 exactly: a zero gradient is convergence.
    def func(z):
        x, y = z
        r = np.array([10.0 * (y - x * x), 1.0 - x])
        return normal_equations(r, np.array([[-20.0 * x, -1.0], [10.0, 0.0]]))

    res = levenberg_marquardt(func, [-1.2, 1.0], maxiter=200, ftol=1e-14)
    assert res["converged"]
    np.testing.assert_allclose(res["x"], [1.0, 1.0], atol=1e-6)


def test_multi_start_keeps_the_lower_minimum():
    # A low-S/N galaxy (from the shear-bias set) whose likelihood has two minima along
    # the size-ellipticity degeneracy: one start from the adaptive-moments size lands in
    # the higher one, the three-start fit finds the lower chi^2.
    st = draw_group(1167, 2025, (0.01, -0.01))
    k = 6
    obs = [make_stamp_obs(st["image"][k, 0], st["weight"][k, 0], st["psf"][k, 0], SCALE)]
    oid = 1167 * 2 + 1
    one = measure_object(obs, oid, seed=2024, noise_sign=st["nsign"][k], start_T_factors=(1.0,))
    multi = measure_object(obs, oid, seed=2024, noise_sign=st["nsign"][k])
    assert multi["noshear"]["chi2"] < one["noshear"]["chi2"] - 0.05
    assert abs(multi["noshear"]["T"] - one["noshear"]["T"]) > 0.2


def test_importance_weights_restore_the_log_uniform_population():
    lo, hi = 10.0, 100.0
    snr, w = sample_snr(np.random.default_rng(7), (lo, hi), 1.45, size=200_000)
    assert np.all((snr >= lo) & (snr <= hi))
    # Low S/N is drawn more often than log-uniform (median below the geometric mean)...
    assert np.median(snr) < 0.8 * np.sqrt(lo * hi)
    # ...and the weights give the log-uniform moments back: E[ln snr], E[1/snr].
    assert np.mean(w) == pytest.approx(1.0, abs=0.01)
    assert np.sum(w * np.log(snr)) / np.sum(w) == pytest.approx(0.5 * np.log(lo * hi),
                                                                  abs=0.01)
    expect_inv = (1 / lo - 1 / hi) / np.log(hi / lo)
    assert np.sum(w / snr) / np.sum(w) == pytest.approx(expect_inv, rel=0.01)
    # A group carries its draw and weight.
    g = draw_group(3, 7, (0.0, 0.0), stamp_size=9, snr_slope=1.45, rotations=(0,))
    assert g["image"].shape[0] == 4 and lo <= g["snr"] <= hi and g["snr_weight"] > 0


def test_snr_recovered_from_the_importance_weight():
    snr, weight = sample_snr(np.random.default_rng(3), (10, 100), 1.45, size=1000)
    np.testing.assert_allclose(snr_from_weight(weight, (10, 100), 1.45), snr, rtol=1e-12)
    with pytest.raises(ValueError, match="snr_slope"):
        snr_from_weight(weight, (10, 100), 0.0)


def test_rotated_noise_stamp_is_the_exact_rotation():
    # Round PSF: the 90-degree stamp with rotated noise is the rotation of the unrotated
    # stamp of opposite shear, and with the correction noise rotated too the measured
    # shapes are exactly opposite; the additive bias of the pair is then only PSF leakage.
    st = draw_group(4, 11, (0.02, -0.01), psf_g_max=0.0, rotate_noise=True,
                    snr_range=(30.0, 30.0))
    # Stamp 0: 0 deg, +g; stamp 3: 90 deg, -g (both +n).
    assert st["rot"][0] == 0 and st["rot"][3] == 90 and st["sign"][0] == -st["sign"][3]
    np.testing.assert_allclose(np.rot90(st["image"][0, 0], -1), st["image"][3, 0],
                               atol=1e-6 * st["image"][0, 0].max())
    rows = [measure_object([make_stamp_obs(st["image"][k, 0], st["weight"][k, 0],
                                           st["psf"][k, 0], SCALE)], 8, seed=5,
                           noise_sign=st["nsign"][k], noise_rotation=st["nrot"][k])
            for k in (0, 3)]
    a, b = rows[0]["noshear"], rows[1]["noshear"]
    assert abs(a["g1"]) > 0.01
    assert a["g1"] == pytest.approx(-b["g1"], abs=2e-4)
    assert a["g2"] == pytest.approx(-b["g2"], abs=2e-4)
    # Without rotating the correction noise the cancellation is far worse.
    c = measure_object([make_stamp_obs(st["image"][3, 0], st["weight"][3, 0],
                                       st["psf"][3, 0], SCALE)], 8, seed=5)["noshear"]
    assert abs(a["g1"] + c["g1"]) > 10 * abs(a["g1"] + b["g1"])


def test_weighted_bias_estimator():
    # Synthetic groups: D = (1 + m) P exactly with m = 0.01, S = c R with c = 1e-3, and
    # importance weights: the estimator returns m and c whatever the weights.
    rng = np.random.default_rng(0)
    n = 500
    P = rng.uniform(0.004, 0.01, n)
    R = P / 0.01
    groups = {"D1": 1.01 * P, "D2": 1.01 * P, "P1": P, "P2": P, "S1": 1e-3 * R,
              "S2": 1e-3 * R, "R11": R, "R22": R, "weight": rng.uniform(0.2, 3.0, n),
              "flagged": np.zeros(n, bool)}
    b = bias_from_groups(groups, (0.01, 0.01))
    assert b["m1"] == pytest.approx(0.01, abs=1e-12)
    assert b["c2"] == pytest.approx(1e-3, abs=1e-15)
    assert b["m1_err"] < 1e-12
    assert b["m"] == pytest.approx(0.01, abs=1e-12)
    noise = rng.normal(0, 1e-3, n)
    groups["D1"] = groups["D1"] + noise
    b = bias_from_groups(groups, (0.01, 0.01))
    assert 0 < b["m1_err"] < 0.05 and b["n_used"] == n
    # Along the shear, independent errors of m1 and m2 average down (by sqrt 2 for equal
    # ones); errors that are the same in both components do not.
    groups["D2"] = groups["D2"] + rng.normal(0, 1e-3, n)
    b = bias_from_groups(groups, (0.01, 0.01))
    assert b["m_err"] == pytest.approx(np.hypot(b["m1_err"], b["m2_err"]) / 2, rel=0.1)
    assert b["m"] == pytest.approx((b["m1"] + b["m2"]) / 2, abs=1e-12)
    groups["D2"] = 1.01 * P + noise
    b = bias_from_groups(groups, (0.01, 0.01))
    assert b["m_err"] == pytest.approx(b["m1_err"], rel=1e-9)


def test_paired_bias_difference_cancels_the_common_scatter():
    # Two runs on the same galaxies: large common noise, m differs by 0.004 and a little
    # independent noise; the paired error is set by the independent part only.
    rng = np.random.default_rng(1)
    n = 2000
    P = rng.uniform(0.004, 0.01, n)
    common = rng.normal(0, 5e-3, n)

    def groups(m, extra):
        d = (1 + m) * P + common + extra
        return {"D1": d, "D2": d, "P1": P, "P2": P, "S1": P, "S2": P, "R11": P, "R22": P,
                "weight": np.linspace(0.5, 2, n), "flagged": np.zeros(n, bool)}

    a = groups(0.004, rng.normal(0, 1e-4, n))
    b = groups(0.0, rng.normal(0, 1e-4, n))
    d = paired_bias_difference(a, b, (0.01, 0.01), weighted=False)
    single = bias_from_groups(dict(a, weight=np.ones(n)), (0.01, 0.01))
    assert d["dm"] == pytest.approx(single["m"] - bias_from_groups(
        dict(b, weight=np.ones(n)), (0.01, 0.01))["m"], abs=1e-12)
    assert d["dm"] == pytest.approx(0.004, abs=5 * d["dm_err"])
    assert d["dm_err"] < single["m_err"] / 20
    b["flagged"][:10] = True
    assert paired_bias_difference(a, b, (0.01, 0.01))["n_used"] == n - 10
    b["weight"] = b["weight"] * 2
    with pytest.raises(ValueError, match="same seed"):
        paired_bias_difference(a, b, (0.01, 0.01))


def test_rotated_correction_noise_needs_square_stamps():
    obs = [make_stamp_obs(np.zeros((21, 25)), np.ones((21, 25)), np.ones((21, 21)) / 441,
                          SCALE)]
    with pytest.raises(ValueError, match="square"):
        measure_object(obs, 1, noise_rotation=1)
