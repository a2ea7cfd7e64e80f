"""scripts/shear_bias.py --method metadetect on fabricated metadetect catalogues of known bias.

Each fabricated object has an intrinsic shape ``e`` and a noise shared by the two halves of a
field (paired); every metadetect step measures ``G = e + R0 (gamma + delta_step) + noise`` with
``gamma = (1 + m) g + c + alpha psf`` for a galaxy and ``c + alpha psf`` for a star (a lens
does not shear stars, metadetect's sheared images do). The catalogues and truth tables are
real FITS files in the layout the script's runs leave.
"""

import difflib
import importlib.util
import json
import os
import re

import numpy as np
import pytest
from astropy.io import fits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("noshear", "1p", "1m", "2p", "2m")
DELTA = {"noshear": (0, 0), "1p": (1, 0), "1m": (-1, 0), "2p": (0, 1), "2m": (0, -1)}
R0 = 0.4
CUTS = {"flags": True, "snr_min": 10.0, "t_ratio_min": 0.5}


@pytest.fixture(scope="module")
def sb():
    spec = importlib.util.spec_from_file_location(
        "shear_bias", os.path.join(ROOT, "scripts", "shear_bias.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sky(rng, n, sigma_e=0.26, star_frac=0.1):
    # A 5" grid (unambiguous truth matches); ~3% of rows flagged, ~3% masked.
    side = int(np.ceil(np.sqrt(n)))
    k = np.arange(n)
    arc = 1.0 / 3600.0
    return {"ra": 216.25 + (k % side) * 5 * arc / np.cos(np.radians(51.5)),
            "dec": 51.5 + (k // side) * 5 * arc,
            "e": sigma_e * rng.standard_normal((n, 2)),
            "noise": 0.05 * rng.standard_normal((n, 2)),
            "s0": 10 * np.exp(rng.uniform(-0.3, 2.0, n)),
            "t": np.exp(rng.uniform(np.log(0.2), np.log(4.0), n)),
            "star": rng.uniform(size=n) < star_frac,
            "bad": rng.uniform(size=n) < 0.03, "masked": rng.uniform(size=n) < 0.03,
            "psf_scatter": 0.005 * rng.standard_normal((n, 2))}


def _twin(sky):
    # The rotated twin: every intrinsic shape turned by 90 degrees, the noise negated.
    return dict(sky, e=-sky["e"], noise=-sky["noise"])


def _catalogue(sky, shear, m=0.0, c=(0.0, 0.0), psf=(0.0, 0.0), alpha=0.0, kappa=0.0,
               step=0.01, half_noise=None):
    """METADETECT columns of one half; ``kappa`` makes S/N fall with |G|^2 (a selection that
    responds to the shear); ``half_noise`` (n, 2) is this half's own noise (all steps)."""
    n = len(sky["ra"])
    common = np.asarray(c) + alpha * np.asarray(psf)
    gamma = np.where(sky["star"][:, None], common, (1 + m) * np.asarray(shear) + common)
    noise = sky["noise"] + (0.0 if half_noise is None else half_noise)
    parts = []
    for name in STEPS:
        g = sky["e"] + R0 * (gamma + step * np.asarray(DELTA[name])) + noise
        g = np.where(sky["bad"][:, None], 3.0, g)  # flagged: garbage the cut must remove
        parts.append({
            "MDET_STEP": np.full(n, name), "NUMBER": np.arange(n) + 1,
            "RA": sky["ra"], "DEC": sky["dec"],
            "MDET_FLAGS": sky["bad"].astype(np.int32),
            "MASK_FLAGS": sky["masked"].astype(np.int32),
            "MDET_S2N": sky["s0"] * (1 - kappa * (g ** 2).sum(axis=1)),
            "MDET_T_RATIO": np.where(sky["star"], sky["t"] / 4, sky["t"]),
            "MDET_T_RATIO_ERR": np.full(n, 0.1),
            "MDET_G1": g[:, 0], "MDET_G2": g[:, 1],
            "PSF_G1": psf[0] + sky["psf_scatter"][:, 0],
            "PSF_G2": psf[1] + sky["psf_scatter"][:, 1]})
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["NUMBER"] = np.arange(len(out["RA"])) + 1
    return out


def _write_catalogue(path, cat, step=0.01):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    hdu = fits.BinTableHDU.from_columns(
        [fits.Column(name=k, format="7A" if k == "MDET_STEP" else
                     ("K" if k == "NUMBER" else "J" if k.endswith("FLAGS") else "D"),
                     array=v) for k, v in cat.items()], name="METADETECT")
    hdu.header["MDETSTEP"] = step
    hdu.writeto(path)


def _write_truth(truth_dir, sky, shear):
    os.makedirs(truth_dir, exist_ok=True)
    n = len(sky["ra"])
    cols = {"ID": np.arange(n), "RA": sky["ra"], "DEC": sky["dec"],
            "IS_STAR": sky["star"].astype(np.int16), "MAG": np.full(n, 22.0),
            "G1": np.full(n, shear[0]), "G2": np.full(n, shear[1])}
    fits.BinTableHDU.from_columns(
        [fits.Column(name=k, format="K" if k == "ID" else ("I" if k == "IS_STAR" else "D"),
                     array=v) for k, v in cols.items()]).writeto(
        os.path.join(truth_dir, "objects.fits"))
    with open(os.path.join(truth_dir, "survey.json"), "w") as fh:
        json.dump({"shear": list(shear)}, fh)


def _write_run(out, n_fields, n_leak, shear, n=2500, seed=0, leak_psf=(0.03, 0.03),
               half_sigma=2e-4, **kw):
    """A shear_bias.py output directory with ``n_fields`` fields (rotated twins: fields 2i and
    2i+1 share a sky) and ``n_leak`` leakage fields (field j's sky seen with a PSF offset).
    Returns the field_info list ``collect_fields`` would give."""
    rng = np.random.default_rng(seed)
    skies = []
    for _ in range((n_fields + 1) // 2):
        sky = _sky(rng, n)
        skies += [sky, _twin(sky)]
    info = []
    for k in range(n_fields + n_leak):
        leak = k >= n_fields
        j = k - n_fields if leak else k
        fdir = os.path.join(out, "fields", f"{'leak' if leak else 'field'}_{k:03d}")
        cats, truth = {}, {}
        for half, sign in (("plus", 1), ("minus", -1)):
            g = (sign * shear[0], sign * shear[1])
            truth[half] = os.path.join(fdir, "data", half, "truth")
            _write_truth(truth[half], skies[j], g)
            path = os.path.join(fdir, "runs", half, "run_sp_tile_1", "metadetect_runner",
                                "output", "metadetect_cat-270-283.fits")
            _write_catalogue(path, _catalogue(
                skies[j], g, psf=leak_psf if leak else (0.0, 0.0),
                half_noise=half_sigma * rng.standard_normal((n, 2)), **kw))
            cats[half] = [path]
            with open(os.path.join(fdir, f"{half}.done"), "w") as fh:
                fh.write(path + "\n")
        info.append({"cats": cats, "leakage": leak, "sky": j // 2, "truth": truth})
    return info, skies


def test_metadetect_recovers_m_c_and_alpha(sb, tmp_path):
    shear, m, c, alpha = (0.02, 0.0), 0.03, (1e-3, -2e-3), 0.1
    info, skies = _write_run(str(tmp_path), 4, 2, shear, m=m, c=c, alpha=alpha)
    s = sb.analyse(info, shear, dict(CUTS), print, method="metadetect")
    # The selection does not depend on the shear here: R is R0, with nothing of selection.
    assert s["response"]["R11"] == pytest.approx(R0, rel=1e-6)
    assert s["response"]["R22"] == pytest.approx(R0, rel=1e-6)
    # Galaxies: m; what is left is each half's own noise (2e-4 per object: ~2.5e-4 in m; the
    # jackknife over two skies estimates it poorly).
    t = s["true_galaxies_only"]
    assert t["m"] == pytest.approx(m, abs=max(4 * t["m_err"], 1e-3))
    assert 0 < t["m_err"] < 1e-3
    # Selected stars respond to metadetect's shear but not to the lens: m is diluted by
    # their share of the noshear selection, known from the fabricated skies.
    sel = [(~sk["bad"]) & (~sk["masked"]) & (sk["s0"] > 10)
           & (np.where(sk["star"], sk["t"] / 4, sk["t"]) > 0.5) for sk in skies[:4]]
    star_share = sum((k & sk["star"]).sum() for k, sk in zip(sel, skies)) / sum(
        k.sum() for k in sel)
    assert 0.01 < star_share < 0.1
    a = s["all"]
    assert a["n_objects"] == 2 * sum(k.sum() for k in sel)
    assert a["m"] == pytest.approx((1 - star_share) * (1 + m) - 1, abs=max(4 * a["m_err"],
                                                                           1e-3))
    # Rotated twins cancel the shape noise and the shared noise in c.
    assert a["c1"] == pytest.approx(c[0], abs=max(4 * a["c1_err"], 2e-5))
    assert a["c2"] == pytest.approx(c[1], abs=max(4 * a["c2_err"], 2e-5))
    assert a["c1_err"] < 1e-4
    # Leakage: the PSF shear is PSF_G of the selected noshear rows.
    lk = s["leakage"]
    assert lk["alpha1"] == pytest.approx(alpha, abs=max(4 * lk["alpha1_err"], 2e-3))
    assert lk["alpha2"] == pytest.approx(alpha, abs=max(4 * lk["alpha2_err"], 2e-3))
    assert lk["matched_alpha1"] == pytest.approx(alpha, abs=5e-3)
    # Bins split each step's own rows; together they hold every selected noshear row.
    assert sum(r["n_objects"] for r in s["by_snr"]) == a["n_objects"]
    assert sum(r["n_objects"] for r in s["by_size"]) == a["n_objects"]
    # Fields combine by their sums: the per-field sums add up to the whole.
    assert sum(f["sums"][h]["n"][0] for f in s["per_field"] for h in ("plus", "minus")) \
        == a["n_objects"]
    assert isinstance(s["response_check"], str)
    text = sb.format_summary(s)
    assert text.startswith("pipeline shear bias (metadetect): 4 paired fields")
    assert "R11 = 0.4000, R22 = 0.4000" in text and "not applicable" in text
    sb.plot(str(tmp_path / "p.png"), s)
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_metadetect_response_includes_the_selection(sb, tmp_path):
    # S/N falls with |G|^2: objects sheared along their shape drop out of the selection.
    shear, m = (0.02, 0.0), 0.03
    info, _ = _write_run(str(tmp_path), 4, 0, shear, n=3000, seed=5, m=m, kappa=2.0)
    select = sb.mdet_selector(CUTS)
    fields = sb.field_sums(info, select, method="metadetect")["normal"]
    b = sb.biases(fields, shear, groups=[[0, 1], [2, 3]])
    _, resp, _ = sb._mdet_means([f[h] for f in fields for h in ("plus", "minus")])
    # The shear response alone is R0 = 0.4; the selection takes ~25% of it away ...
    assert resp[0, 0] < 0.9 * R0 and resp[1, 1] < 0.9 * R0
    # ... and m comes back with it inside (dividing by R0 would give m ~ +0.4).
    assert b["m"] == pytest.approx(m, abs=0.12)
    assert (1 + b["m"]) * resp[0, 0] / R0 - 1 < b["m"] - 0.15


def test_metadetect_sums_combine_fields(sb):
    rng = np.random.default_rng(3)
    halves = []
    for _ in range(3):
        cat = _catalogue(_sky(rng, 400), (0.02, 0.0))
        tab = {"method": "metadetect", "step": 0.01, "steps": {}}
        for name in STEPS:
            rows = cat["MDET_STEP"] == name
            tab["steps"][name] = {"g": np.column_stack([cat["MDET_G1"], cat["MDET_G2"]])[rows],
                                  "psf": np.column_stack([cat["PSF_G1"],
                                                          cat["PSF_G2"]])[rows]}
        halves.append(tab)
    g, resp, n = sb._mdet_means(halves)
    pooled = np.concatenate([h["steps"]["noshear"]["g"] for h in halves])
    assert n == len(pooled) and g == pytest.approx(pooled.mean(axis=0))
    total = sb.mdet_sums(halves[0])
    for h in halves[1:]:
        total = {k: total[k] + v for k, v in sb.mdet_sums(h).items()}
    assert np.allclose(sb.mdet_response(total, 0.01), resp)
    with pytest.raises(ValueError, match="different shear steps"):
        sb._mdet_means([halves[0], dict(halves[1], step=0.02)])


def test_metadetect_compare_measures_a_change_on_the_same_skies(sb, tmp_path):
    shear = (0.02, 0.0)
    select = sb.mdet_selector(CUTS)
    runs = {}
    for name, m in (("a", 0.0), ("b", -0.01)):
        info, _ = _write_run(str(tmp_path / name), 4, 2, shear, n=800, seed=2, m=m,
                             alpha=0.02 if name == "a" else 0.05)
        runs[name] = sb.field_sums(info, select, method="metadetect")
    d = sb.compare(runs["a"], runs["b"], shear, sb.sky_groups(runs["b"]["skies"]))
    # Stars dilute both runs alike: the change of m is (1 - star share) * -0.01.
    assert d["d_m"] == pytest.approx(-0.0095, abs=1e-3)
    assert d["d_alpha1"] == pytest.approx(0.03, abs=2e-3)


def _example(tmp_path, section=True, module=True):
    root = tmp_path / "root"
    (root / "example").mkdir(parents=True)
    for name in ("config_exp.ini", "config_tile.ini"):
        text = open(os.path.join(ROOT, "example", name)).read()
        if name == "config_tile.ini":
            if section and "[METADETECT_RUNNER]" not in text:
                text += "\n[METADETECT_RUNNER]\nINPUT_MODULE = sextractor_runner\n"
            if not section:
                text = text.replace("[METADETECT_RUNNER]", "[OTHER_RUNNER]")
            if not module:
                text = text.replace("\nMODULE =", "\n# MODULE =")
        (root / "example" / name).write_text(text)
    return str(root)


def test_metadetect_configs_set_the_module_line(sb, tmp_path, monkeypatch):
    monkeypatch.setattr(sb, "ROOT", _example(tmp_path))
    paths = sb.write_configs(str(tmp_path / "c"), "psf_model", 2, method="metadetect")
    tile = open(paths["config_tile.ini"]).read()
    lines = [ln for ln in tile.splitlines() if ln.startswith("MODULE")]
    assert lines == ["MODULE = mask_runner, sextractor_runner, psfex_interp_runner, "
                     "metadetect_runner"]
    # The continuation line of the old MODULE value is gone, the next key kept.
    assert "MODULE = mask_runner, sextractor_runner, psfex_interp_runner, metadetect_runner\n" \
           "MODE = SMP" in tile
    assert "ngmix_runner, make_catalog_runner" not in tile
    # Only that line changes; the exposure chain is as for metacal.
    metacal = sb.write_configs(str(tmp_path / "m"), "psf_model", 2)
    assert open(paths["config_exp.ini"]).read() == open(metacal["config_exp.ini"]).read()
    diff = list(difflib.ndiff(open(metacal["config_tile.ini"]).read().splitlines(),
                              tile.splitlines()))
    assert [d[2:] for d in diff if d.startswith("+ ")] == lines
    old = re.search(r"(?m)^MODULE\s*=.*(?:\n[ \t]+\S.*)*", open(metacal["config_tile.ini"]).read())
    assert [d[2:] for d in diff if d.startswith("- ")] == old.group(0).splitlines()
    assert len(old.group(0).splitlines()) > 1  # the example's value has a continuation


def test_metadetect_configs_fail_clearly(sb, tmp_path, monkeypatch):
    monkeypatch.setattr(sb, "ROOT", _example(tmp_path / "a", module=False))
    with pytest.raises(SystemExit, match=r"config_tile.ini: expected one MODULE line in "
                                         r"\[EXECUTION\], found 0"):
        sb.write_configs(str(tmp_path / "c"), "psf_model", 2, method="metadetect")
    monkeypatch.setattr(sb, "ROOT", _example(tmp_path / "b", section=False))
    with pytest.raises(SystemExit, match=r"config_tile.ini: no \[METADETECT_RUNNER\] section"):
        sb.write_configs(str(tmp_path / "d"), "psf_model", 2, method="metadetect")


def test_load_metadetect_rejects_bad_catalogues(sb, tmp_path):
    cat = _catalogue(_sky(np.random.default_rng(0), 50), (0.02, 0.0))
    good = str(tmp_path / "good.fits")
    _write_catalogue(good, cat)
    tab, step = sb.load_metadetect([good])
    assert step == 0.01 and sorted(set(tab["MDET_STEP"])) == sorted(STEPS)
    bad = str(tmp_path / "nocol.fits")
    _write_catalogue(bad, {k: v for k, v in cat.items() if k != "MDET_T_RATIO"})
    with pytest.raises(SystemExit, match="nocol.fits: missing column.* MDET_T_RATIO"):
        sb.load_metadetect([bad])
    other = str(tmp_path / "step.fits")
    _write_catalogue(other, cat, step=0.02)
    with pytest.raises(SystemExit, match="MDETSTEP"):
        sb.load_metadetect([good, other])
    fits.BinTableHDU.from_columns([fits.Column(name="A", format="D", array=np.zeros(2))],
                                  name="RESULTS").writeto(str(tmp_path / "final.fits"))
    with pytest.raises(SystemExit, match="final.fits: no HDU METADETECT"):
        sb.load_metadetect([str(tmp_path / "final.fits")])
    # The finder: the metadetect catalogues at any depth of a run directory.
    assert sb.find_catalogues(str(tmp_path), "metadetect") == []
    os.makedirs(tmp_path / "run" / "a" / "output")
    os.rename(good, tmp_path / "run" / "a" / "output" / "metadetect_cat-1-2.fits")
    assert sb.find_catalogues(str(tmp_path / "run"), "metadetect") == [
        str(tmp_path / "run" / "a" / "output" / "metadetect_cat-1-2.fits")]


def test_report_records_and_names_the_method(sb, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sb, "ROOT", _example(tmp_path))
    out = str(tmp_path / "run")
    _write_run(out, 2, 0, (0.02, 0.0), n=600, m=0.0)
    args = ["--output", out, "--report", "--fields", "2"]
    assert sb.main(args + ["--method", "metadetect"]) == 0
    text = capsys.readouterr().out
    assert "pipeline shear bias (metadetect): 2 paired fields" in text
    plan = json.load(open(os.path.join(out, "plan.json")))
    summary = json.load(open(os.path.join(out, "shear_bias.json")))
    assert plan["method"] == "metadetect" and summary["method"] == "metadetect"
    assert summary["plan"] == plan and "spread_class" not in summary["cuts"]
    assert os.path.getsize(os.path.join(out, "shear_bias.png")) > 1000
    # Without --method the plan's method is used; another method is another plan.
    assert sb.main(args) == 0
    assert "(metadetect)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sb.main(args + ["--method", "metacal"])
    assert "records another plan" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sb.main(args + ["--round-cuts"])
    assert "--round-cuts: not applicable with --method metadetect" in capsys.readouterr().err


def test_compare_uses_the_fields_both_runs_have(sb, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sb, "ROOT", _example(tmp_path))
    shear = (0.02, 0.0)
    big, small = str(tmp_path / "big"), str(tmp_path / "small")
    # The same skies (seed 2): four fields and a leakage field in one run, two in the other.
    _write_run(big, 4, 1, shear, n=600, seed=2, m=0.0)
    _write_run(small, 2, 0, shear, n=600, seed=2, m=-0.01)
    base = ["--report", "--method", "metadetect", "--seed", "7"]
    assert sb.main(["--output", big, "--fields", "4", "--leakage-fields", "1"] + base) == 0
    capsys.readouterr()
    assert sb.main(["--output", small, "--fields", "2", "--compare", big] + base) == 0
    assert "on the 2 fields both have" in capsys.readouterr().out
    d = json.load(open(os.path.join(small, "shear_bias.json")))["compare"]
    assert d["n_fields"] == 2 and d["n_leakage_fields"] == 0
    assert d["d_m"] == pytest.approx(-0.0095, abs=2e-3)
    # Another seed is another sky: refused, naming both seeds.
    other = str(tmp_path / "other")
    _write_run(other, 2, 0, shear, n=600, seed=3)
    assert sb.main(["--output", other, "--fields", "2", "--report", "--method", "metadetect",
                    "--seed", "8"]) == 0
    with pytest.raises(SystemExit):
        sb.main(["--output", small, "--fields", "2", "--compare", other] + base)
    assert "seed 8, this run's is 7: not the same skies" in capsys.readouterr().err


def test_mdet_step_sets_the_metadetect_step(sb, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sb, "ROOT", _example(tmp_path))
    paths = sb.write_configs(str(tmp_path / "c"), "psf_model", 2, method="metadetect",
                             mdet_step=0.1)
    steps = [ln for ln in open(paths["config_tile.ini"]).read().splitlines()
             if re.match(r"STEP\s*=", ln)]
    assert steps == ["STEP = 0.1"]
    with pytest.raises(SystemExit):
        sb.main(["--output", str(tmp_path / "r"), "--report", "--mdet-step", "0.1"])
    assert "--mdet-step: only with --method metadetect" in capsys.readouterr().err
