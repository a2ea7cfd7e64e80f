"""scripts/shear_bias.py: the paired-field estimators on synthetic catalogues of known bias."""

import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sb():
    spec = importlib.util.spec_from_file_location(
        "shear_bias", os.path.join(ROOT, "scripts", "shear_bias.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _half(rng, n, shear, m, c, psf, noise, resp=0.8):
    # Responses scatter per object; the measured ellipticity is R ((1 + m) g + c) + noise, with
    # c including the PSF leakage alpha psf.
    r = np.zeros((n, 2, 2))
    r[:, 0, 0] = resp + 0.05 * rng.standard_normal(n)
    r[:, 1, 1] = resp + 0.05 * rng.standard_normal(n)
    g = resp * ((1 + m) * np.asarray(shear) + np.asarray(c)) + noise
    return {"g": g, "R": r, "R_S": np.zeros((2, 2)), "psf": np.tile(psf, (n, 1)),
            "snr": rng.uniform(10, 100, n), "t_ratio": rng.uniform(0.5, 3, n)}


def _fields(k, shear, m, c, psf=(0.0, 0.0), alpha=0.0, seed=0, n=4000, sigma_e=0.26,
            rotated=False):
    rng = np.random.default_rng(seed)
    out = []
    for j in range(k):
        if not rotated or j % 2 == 0:
            shape = sigma_e * rng.standard_normal((n, 2))  # shared by the two halves (paired)
        # A rotated twin (odd j) has the previous field's shapes turned by 90 degrees.
        noise = -shape if rotated and j % 2 else shape
        cc = np.asarray(c) + alpha * np.asarray(psf)
        out.append({"plus": _half(rng, n, shear, m, cc, psf, noise),
                    "minus": _half(rng, n, -np.asarray(shear), m, cc, psf, noise)})
    return out


def test_paired_fields_recover_m_and_c(sb):
    shear = (0.02, -0.01)
    b = sb.biases(_fields(5, shear, m=0.03, c=(1e-3, -2e-3)), shear)
    # Shape noise cancels in the pairs; what is left is the scatter of the responses.
    assert b["m"] == pytest.approx(0.03, abs=4 * b["m_err"] + 1e-4)
    assert b["m1"] == pytest.approx(0.03, abs=5e-3) and b["m2"] == pytest.approx(0.03, abs=1e-2)
    # c keeps the shape noise (it does not cancel in the sum of the halves).
    assert b["c1"] == pytest.approx(1e-3, abs=4 * b["c1_err"])
    assert b["c2"] == pytest.approx(-2e-3, abs=4 * b["c2_err"])
    assert 5e-4 < b["c1_err"] < 5e-3
    assert 0 < b["m_err"] < 0.01 and b["n_objects"] == 5 * 2 * 4000
    # A bin keeps only its objects.
    binned = sb.biases(_fields(3, shear, m=0.0, c=(0, 0)), shear, ("snr", 10, 20))
    assert 0 < binned["n_objects"] < 3 * 2 * 4000


def test_rotated_twins_cancel_the_shape_noise_in_c(sb):
    shear = (0.02, 0.0)
    fields = _fields(6, shear, m=0.0, c=(1e-3, -5e-4), seed=7, rotated=True)
    groups = [[0, 1], [2, 3], [4, 5]]
    b = sb.biases(fields, shear, groups=groups)
    # Only the responses' scatter is left: c is measured to ~1e-5, not ~2e-3.
    assert b["c1"] == pytest.approx(1e-3, abs=1e-4)
    assert b["c2"] == pytest.approx(-5e-4, abs=1e-4)
    assert 0 < b["c1_err"] < 1e-4
    # Leaving out one field of a twin pair would bring the shape noise back into the error.
    assert sb.biases(fields, shear)["c1_err"] > 10 * b["c1_err"]


def test_one_response_for_both_halves_keeps_the_shape_noise_cancelled(sb):
    shear = (0.02, 0.0)
    fields = _fields(3, shear, m=0.0, c=(0.0, 0.0), seed=9, n=300)
    # One object whose sheared fits switched minima: its response is -50 in one half only.
    fields[0]["minus"]["R"][0, 0, 0] = -50.0
    b = sb.biases(fields, shear)
    # The outlier moves the common response by ~50 / 1800 / 0.8 = 3.5%: m by about that,
    # not by the shape noise of a half (0.26 / sqrt(900) / 0.02 ~ 0.4) times a 10% change.
    assert b["m"] == pytest.approx(0.035, abs=0.01)


def test_paired_leakage_uses_only_the_repeated_skies(sb):
    shear = (0.02, 0.0)
    normal = _fields(4, shear, m=0.0, c=(0.0, 0.0), seed=3, n=2000)
    leaky = _with_psf(normal[:2], (0.03, 0.03), alpha=0.05, seed=4)
    lk = sb.leakage(normal, leaky, paired=True)
    # The two fields without a leakage twin carry shape noise ~0.26 / sqrt(8000): they must
    # not enter the difference.
    assert lk["alpha1"] == pytest.approx(0.05, abs=3e-3)


def test_leakage_is_the_change_of_c_with_the_psf(sb):
    shear = (0.02, 0.0)
    # Little shape noise, so that alpha is measured to ~1e-3 from a few fields.
    normal = _fields(3, shear, m=0.0, c=(5e-4, 0.0), seed=1, sigma_e=0.01)
    leaky = _fields(3, shear, m=0.0, c=(5e-4, 0.0), psf=(0.03, 0.03), alpha=0.1, seed=2,
                    sigma_e=0.01)
    lk = sb.leakage(normal, leaky, paired=False)
    assert lk["alpha1"] == pytest.approx(0.1, abs=0.02)
    assert lk["alpha2"] == pytest.approx(0.1, abs=0.02)
    assert np.isfinite(lk["alpha1_err"])


def _with_psf(fields, psf, alpha, seed):
    # The same skies (shapes and noise) seen through a PSF with a mean shear ``psf``.
    rng = np.random.default_rng(seed)
    out = []
    for f in fields:
        new = {}
        for half in ("plus", "minus"):
            h = dict(f[half])
            shift = alpha * np.asarray(psf) * h["R"].diagonal(axis1=1, axis2=2)
            h["g"] = h["g"] + shift + 1e-4 * rng.standard_normal(h["g"].shape)
            h["psf"] = h["psf"] + np.asarray(psf)
            new[half] = h
        out.append(new)
    return out


def test_paired_leakage_cancels_the_shape_noise(sb):
    shear = (0.02, 0.0)
    # Full shape noise: independent skies cannot measure alpha from 4 fields, paired ones can.
    normal = _fields(4, shear, m=0.0, c=(0.0, 0.0), seed=3, n=2000)
    leaky = _with_psf(normal, (0.03, 0.03), alpha=0.05, seed=4)
    paired = sb.leakage(normal, leaky, paired=True)
    assert paired["alpha1"] == pytest.approx(0.05, abs=3e-3)
    assert paired["alpha2"] == pytest.approx(0.05, abs=3e-3)
    assert 0 < paired["alpha1_err"] < 3e-3
    unpaired = sb.leakage(normal, _with_psf(_fields(4, shear, m=0.0, c=(0.0, 0.0), seed=5,
                                                    n=2000), (0.03, 0.03), 0.05, 6),
                          paired=False)
    assert unpaired["alpha1_err"] > 10 * paired["alpha1_err"]


def test_configs_are_copied_with_the_model_and_workers(sb, tmp_path):
    paths = sb.write_configs(str(tmp_path), "psfex", 3)
    tile = open(paths["config_tile.ini"]).read()
    assert "ME_DOT_PSF_DIR = last:psfex_runner" in tile and "SMP_BATCH_SIZE = 3" in tile
    assert "SEED_BY = POSITION" in tile and "SEED_BY = ID" not in tile
    tile_id = open(sb.write_configs(str(tmp_path / "id"), "psf_model", 1, "id")
                   ["config_tile.ini"]).read()
    assert "SEED_BY = ID" in tile_id
    # A sheared scene: the half's shear and centre map positions back for the seed cells.
    tile_scene = open(sb.write_configs(str(tmp_path / "s"), "psf_model", 1, "position",
                                       (-0.02, 0.0, 216.25, 51.5))["config_tile.ini"]).read()
    assert "SEED_BY = POSITION\nSEED_SCENE_SHEAR = -0.02, 0, 216.25, 51.5\n" in tile_scene
    tile_nomask = open(sb.write_configs(str(tmp_path / "n"), "psf_model", 1, "position",
                                        mask_neighbours=False)["config_tile.ini"]).read()
    assert "SEED_BY = POSITION\nMASK_NEIGHBOURS = False\n" in tile_nomask
    assert "MASK_NEIGHBOURS" not in tile
    # PSFEx models need the PSFEx run between the exposure and tile chains.
    assert list(paths) == ["config_exp.ini", "config_exp_psfex.ini", "config_tile.ini"]
    assert "SMP_BATCH_SIZE = 3" in open(paths["config_exp_psfex.ini"]).read()
    assert list(sb.write_configs(str(tmp_path / "m"), "psf_model", 1)) == [
        "config_exp.ini", "config_tile.ini"]
    assert sb.field_seed(7, 2) != sb.field_seed(7, 3)


def test_compare_measures_the_change_between_runs_on_the_same_skies(sb):
    shear = (0.02, 0.0)
    normal = _fields(4, shear, m=0.0, c=(0.0, 0.0), seed=11, n=2000, rotated=True)
    leaky = _with_psf(normal[:2], (0.03, 0.03), alpha=0.02, seed=12)
    # Run b: the same objects, a response 1% lower in the ellipticities (m -> -0.01) and a
    # leakage larger by 0.03.
    def changed(fields, factor, shift):
        out = []
        for f in fields:
            out.append({h: dict(f[h], g=f[h]["g"] * factor + shift) for h in ("plus", "minus")})
        return out
    run_a = {"normal": normal, "leaky": leaky}
    run_b = {"normal": changed(normal, 0.99, 0.0),
             "leaky": changed(_with_psf(normal[:2], (0.03, 0.03), alpha=0.05, seed=12), 0.99,
                              0.0)}
    d = sb.compare(run_a, run_b, shear, [[0, 1], [2, 3]])
    assert d["d_m"] == pytest.approx(-0.01, abs=1e-3)
    assert d["d_alpha1"] == pytest.approx(0.03 * 0.99, abs=3e-3)
    assert 0 < d["d_m_err"] < 2e-3


def _with_truth(fields, seed=0):
    rng = np.random.default_rng(seed)
    for f in fields:
        n = len(f["plus"]["g"])
        near = rng.uniform(0, 5, n)
        star = rng.uniform(0, 1, n) < 0.3
        for h in ("plus", "minus"):
            f[h]["truth_idx"] = np.arange(n)
            f[h]["neighbour_dist"] = near
            f[h]["neighbour_is_star"] = star
    return fields


def test_response_check_compares_the_real_response_with_metacal(sb):
    shear = (0.02, 0.0)
    fields = _with_truth(_fields(2, shear, m=-0.05, c=(0.0, 0.0), seed=13, n=3000))
    rows = sb.response_check(fields, shear)
    assert rows[0]["bin"] == "all" and rows[0]["n"] == 6000
    assert rows[0]["ratio_minus_1"] == pytest.approx(-0.05, abs=5e-3)
    assert 0 < rows[0]["err"] < 5e-3
    assert sum(r["n"] for r in rows[1:] if r["neighbour"] == "any") == 6000
    # Each distance bin splits into objects whose nearest neighbour is a star or a galaxy.
    for k in range(1, len(rows), 3):
        any_, star, gal = rows[k: k + 3]
        assert (any_["neighbour"], star["neighbour"], gal["neighbour"]) == ("any", "star",
                                                                            "galaxy")
        assert star["n"] + gal["n"] == any_["n"] and 0 < star["n"] < gal["n"]


def test_leakage_check_separates_the_objects_from_the_selection(sb):
    shear = (0.02, 0.0)
    normal = _with_truth(_fields(2, shear, m=0.0, c=(0.0, 0.0), seed=14, n=2000))
    leaky = _with_truth(_with_psf(normal, (0.03, 0.03), alpha=0.05, seed=15))
    # The leakage fields lose 100 objects of each half: a selection the matched part ignores.
    for f in leaky:
        for h in ("plus", "minus"):
            f[h] = {k: (v[100:] if isinstance(v, np.ndarray) and v.ndim and len(v) == 2000
                        else v) for k, v in f[h].items()}
    out = sb.leakage_check(normal, leaky)
    assert out["flips"] == 2 * 2 * 100 and out["both"] == 2 * 2 * 1900
    assert out["matched_alpha1"] == pytest.approx(0.05, abs=3e-3)


def test_star_distance_skips_the_detections_own_star(sb):
    arc = 1.0 / 3600.0
    truth = {"RA": np.array([10.0, 10.0 + 1.5 * arc, 10.0 + 10 * arc, 10.0 + 30 * arc]),
             "DEC": np.zeros(4), "IS_STAR": np.array([0, 1, 1, 0])}
    # Detections on the galaxy, on the star at 10", on the far galaxy; one unmatched.
    cat = {"XWIN_WORLD": np.array([10.0, 10.0 + 10 * arc, 10.0 + 30 * arc, 10.0 + 50 * arc]),
           "YWIN_WORLD": np.zeros(4)}
    idx = np.array([0, 2, 3, -1])
    d = sb._star_distance(cat, truth, idx)
    # the galaxy: the star 1.5" away; the star: the other star, not itself; the far galaxy
    # and the unmatched detection: the star at 10".
    assert d == pytest.approx([1.5, 8.5, 20.0, 40.0], abs=1e-6)


def test_noise_budget_splits_the_numerator_into_matched_objects_and_flips(sb):
    shear = (0.02, 0.0)
    fields = _with_truth(_fields(4, shear, m=0.0, c=(0.0, 0.0), seed=21, n=1000))
    rng = np.random.default_rng(22)
    # Each +g half loses 30 objects and gains 30 unmatched ones with their whole shape: flips.
    for f in fields:
        h = f["plus"]
        h.update({k: v[30:] for k, v in h.items() if isinstance(v, np.ndarray) and v.ndim
                  and len(v) == 1000})
        extra = 0.26 * rng.standard_normal((30, 2))
        h["g"] = np.vstack([h["g"], extra])
        h["R"] = np.vstack([h["R"], h["R"][:30]])
        h["truth_idx"] = np.concatenate([h["truth_idx"], np.full(30, -1)])
        h["psf"] = np.vstack([h["psf"], h["psf"][:30]])
    rows = [sb.pairing(f, shear=shear) for f in fields]
    for f, row in zip(fields, rows):
        p, m = f["plus"], f["minus"]
        total = (p["g"][:, 0].sum() - m["g"][:, 0].sum()) / 1000
        assert row["flips"] == 60 and row["both"] == 970
        assert row["numerator_both"] + row["numerator_flips"] == pytest.approx(total)
        # The matched objects' difference is the shear's: 2 g R over the kept share.
        assert row["numerator_both"] == pytest.approx(2 * 0.02 * 0.8 * 0.97, rel=2e-2)
        assert row["response_along"][0] == pytest.approx(0.8, abs=0.01)
    nb = sb.noise_budget(rows)
    # The flips carry whole shapes: their scatter dwarfs the matched objects'.
    assert nb["flips"]["std"] > 10 * nb["both"]["std"]
    assert nb["flips"]["std"] == pytest.approx(0.26 * np.sqrt(60) / 1000, rel=0.6)
    assert nb["flips_per_field"] == 60 and nb["response"]["per"] == "half"
    assert "noise budget" in sb.format_summary(_summary_for_format(sb, fields, shear))


def _summary_for_format(sb, fields, shear):
    run_info = sb.biases(fields, shear)
    rows = [dict(sb.biases([f], shear), pairing=sb.pairing(f, shear=shear)) for f in fields]
    empty = [dict(run_info, bin="all")]
    return {"all": run_info, "true_galaxies_only": run_info, "n_fields": len(fields),
            "shear": list(shear), "by_snr": empty, "by_size": empty, "per_field": rows,
            "noise_budget": sb.noise_budget([r["pairing"] for r in rows])}
