"""Tests of scripts/psf_validation.py on VALIDATION outputs of a generated field."""

import importlib.util
import json
import os

import numpy as np
import pytest
from astropy.io import fits

from shapepipe.modules.psf_model.build import build_psf_model
from shapepipe.modules.psfex_interp import process_validation
from shapepipe.sim.psf_stars import make_star_catalogue

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "psf_validation.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("psf_validation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    d = tmp_path_factory.mktemp("val")
    out = d / "psfex_interp_runner" / "output"
    out.mkdir(parents=True)
    truth_rows = []
    for ccd in range(2):
        num = f"-0000007-{ccd}"
        cat = str(d / f"star_selection{num}.fits")
        truth = make_star_catalogue(cat, n_stars=100, size=25, seed=40 + ccd)
        build_psf_model(cat, str(d / f"s{num}.psf"), str(d / f"psfex_cat{num}.cat"))
        process_validation(str(d / f"s{num}.psf"), cat, str(d / f"psfex_cat{num}.cat"),
                           str(out / f"validation_psf{num}.fits"))
        truth_rows.append((ccd, truth))
    # A truth table in the simulated survey's layout (psf_stars.fits).
    import galsim

    cols = {k: [] for k in ("EXP_NUM", "CCD", "X", "Y", "HSM_G1", "HSM_G2", "HSM_SIGMA")}
    for ccd, truth in truth_rows:
        for x, y in zip(truth["x"], truth["y"]):
            res = galsim.hsm.FindAdaptiveMom(galsim.ImageD(truth["psf"].draw(x, y, 25)))
            for key, value in zip(cols, (7, ccd, x, y, res.observed_shape.g1,
                                         res.observed_shape.g2, res.moments_sigma)):
                cols[key].append(value)
    tdir = d / "truth"
    tdir.mkdir()
    hdu = fits.BinTableHDU.from_columns([fits.Column(name=k, format="D", array=np.array(v))
                                         for k, v in cols.items()])
    hdu.header["EXTNAME"] = "PSF_STARS"
    hdu.writeto(tdir / "psf_stars.fits")
    return d, tdir


def test_validation_script_outputs(run_output, tmp_path):
    run_dir, truth_dir = run_output
    script = _load_script()
    out = tmp_path / "val"
    assert script.main([str(run_dir), "-o", str(out), "--truth", str(truth_dir)]) == 0
    for name in ("psf_summary.txt", "psf_summary.json", "psf_residual_histograms.png",
                 "psf_focal_plane.png", "psf_rho_stats.png", "psf_rho_stats.txt"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "psf_summary.json").read_text())
    assert summary["n_files"] == 2 and summary["n_stars"] == 200
    truth = summary["samples"]["model-truth"]
    assert truth["e1"]["n"] >= 190
    assert abs(truth["e1"]["mean"]) < 2e-3 and abs(truth["e2"]["mean"]) < 2e-3
    assert abs(truth["size"]["mean"]) < 5e-3
    star = summary["samples"]["star-model accepted"]
    assert abs(star["size"]["mean"]) < 5e-3 and star["e1"]["rms"] < 0.03
    lines = (out / "psf_rho_stats.txt").read_text().splitlines()
    names = {line.split()[0] for line in lines if not line.startswith("#")}
    assert names == {f"rho{i}" for i in range(1, 6)}


def test_validation_script_without_inputs(tmp_path):
    assert _load_script().main([str(tmp_path)]) == 2
