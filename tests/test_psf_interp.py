"""Tests of psfex_interp (CLASSIC, VALIDATION, MULTI-EPOCH), the stores and the runners."""

import glob
import os
import pickle
import shutil
import textwrap

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from shapepipe.modules.psf_model.build import build_psf_model
from shapepipe.modules.psfex.caller import psfex_errors
from shapepipe.modules.psfex.dotpsf import read_psf
from shapepipe.modules.psfex.ldac_fix import needs_preparation, prepare_for_psfex
from shapepipe.modules.psfex_interp import (
    hsm_shapes,
    process_classic,
    process_multi_epoch,
    process_validation,
)
from shapepipe.sim.psf_stars import make_star_catalogue
from shapepipe.utils.ldac import read_ldac, write_ldac
from shapepipe.utils.stamp_store import decode, encode, open_store

EXAMPLE_PSFEX = os.path.join(os.path.dirname(__file__), "..", "example", "psfex",
                             "default.psfex")
NUM = "-0000001-0"


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    """A star catalogue and the built-in model's .psf and psfex_cat for it."""
    d = tmp_path_factory.mktemp("interp")
    cat = str(d / f"star_selection{NUM}.fits")
    truth = make_star_catalogue(cat, n_stars=80, size=25, n_outliers=2, seed=11)
    psf = str(d / f"star_selection{NUM}.psf")
    pcat = str(d / f"psfex_cat{NUM}.cat")
    build_psf_model(cat, psf, pcat)
    return {"dir": d, "cat": cat, "psf": psf, "psfex_cat": pcat, "truth": truth}


def test_classic_stamps_are_normalised_with_shapes(products, tmp_path):
    out = str(tmp_path / f"galaxy_psf{NUM}.fits")
    assert process_classic(products["psf"], products["cat"], out) is None
    data, _ = read_ldac(out)
    assert data["VIGNET"].shape == (80, 25, 25)
    np.testing.assert_allclose(data["VIGNET"].sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert np.all(data["FLAG_PSF_HSM"] == 0) and np.all(data["FLAG_PSF_MODEL"] == 0)
    # PSF shapes follow the truth's shear pattern.
    g1_true = products["truth"]["psf"].params(products["truth"]["x"], products["truth"]["y"])[1]
    assert np.corrcoef(g1_true, data["E1_PSF_HSM"])[0, 1] > 0.95


def test_unusable_model_flags_objects_instead_of_failing(products, tmp_path):
    out = str(tmp_path / "galaxy_psf.fits")
    assert process_classic(products["psf"], products["cat"], out, star_thresh=10_000) \
        == "Fail_stars"
    data, _ = read_ldac(out)
    assert np.all(data["FLAG_PSF_MODEL"] == 1) and np.all(data["FLAG_PSF_HSM"] == 1)
    assert np.all(data["VIGNET"] == np.float32(-1e30))
    assert process_classic(products["psf"], products["cat"], out, chi2_thresh=1e-6) \
        == "Fail_chi2"
    assert read_ldac(out)[0]["FLAG_PSF_MODEL"][0] == 2
    missing = str(tmp_path / "nothing.psf")
    assert process_classic(missing, products["cat"], out, pos_params=["XWIN_IMAGE",
                                                                      "YWIN_IMAGE"]) \
        == "File_not_found"
    assert read_ldac(out)[0]["FLAG_PSF_MODEL"][0] == 4


def test_validation_output(products, tmp_path):
    out = str(tmp_path / f"validation_psf{NUM}.fits")
    process_validation(products["psf"], products["cat"], products["psfex_cat"], out)
    data, _ = read_ldac(out)
    for col in ("NUMBER", "X", "Y", "RA", "DEC", "MAG", "SNR", "ACCEPTED", "E1_PSF_HSM",
                "E2_PSF_HSM", "SIGMA_PSF_HSM", "FLAG_PSF_HSM", "E1_STAR_HSM", "E2_STAR_HSM",
                "SIGMA_STAR_HSM", "FLAG_STAR_HSM"):
        assert col in data.dtype.names, col
    outlier = products["truth"]["outlier"]
    assert np.all(data["ACCEPTED"][outlier] == 0) and data["ACCEPTED"].sum() >= 75
    ok = (data["ACCEPTED"] == 1) & (data["FLAG_STAR_HSM"] == 0)
    de1 = data["E1_STAR_HSM"][ok] - data["E1_PSF_HSM"][ok]
    dsize = data["SIGMA_STAR_HSM"][ok] / data["SIGMA_PSF_HSM"][ok] - 1
    assert abs(np.mean(de1)) < 3e-3 and abs(np.mean(dsize)) < 5e-3
    assert np.std(de1) < 0.02  # star noise (S/N 50-500), not model error


def test_hsm_shapes_mask_bad_pixels():
    import galsim

    img = galsim.Gaussian(sigma=2.0).shear(g1=0.1, g2=0.0).drawImage(nx=25, ny=25, scale=1.0,
                                                                     method="no_pixel")
    stamp = img.array.copy()
    stamp[3, 3] = -1e30
    shapes = hsm_shapes(np.array([stamp]), masked_value=-1e29)
    assert shapes[0, 3] == 0 and abs(shapes[0, 0] - 0.1) < 2e-3


def test_store_roundtrip_and_no_pickle(tmp_path):
    value = {"1-2": {"VIGNET": np.arange(6, dtype=np.float32).reshape(2, 3),
                     "SHAPES": {"E1_PSF_HSM": np.float64(0.5), "FLAG_PSF_HSM": np.int16(0)}}}
    back = decode(encode(value))
    np.testing.assert_array_equal(back["1-2"]["VIGNET"], value["1-2"]["VIGNET"])
    assert back["1-2"]["VIGNET"].dtype == np.float32
    assert back["1-2"]["SHAPES"] == {"E1_PSF_HSM": 0.5, "FLAG_PSF_HSM": 0}
    with pytest.raises(ValueError):
        decode(pickle.dumps(value))
    with pytest.raises(TypeError):
        encode({"x": object()})


def _tile_catalogue(path, products, wcs):
    """A tile catalogue: 40 objects on CCD 0 of exposure 0000001 (some also on a second
    exposure without a .psf file), 5 objects on no CCD."""
    data, _ = read_ldac(products["cat"])
    x, y = data["XWIN_IMAGE"][:40], data["YWIN_IMAGE"][:40]
    ra, dec = wcs.all_pix2world(x, y, 1)
    ra = np.concatenate([ra, np.full(5, 10.0)])
    dec = np.concatenate([dec, np.full(5, -30.0)])
    n = len(ra)
    table = np.zeros(n, dtype=[("NUMBER", ">i4"), ("XWIN_WORLD", ">f8"), ("YWIN_WORLD", ">f8")])
    table["NUMBER"] = np.arange(101, 101 + n)
    table["XWIN_WORLD"], table["YWIN_WORLD"] = ra, dec
    write_ldac(path, fits.Header(), table)
    ccd_a = np.r_[np.zeros(40, int), -np.ones(5, int)]
    ccd_b = np.r_[np.zeros(10, int), -np.ones(35, int)]
    with fits.open(path) as hdul:
        hdus = list(hdul)
        for i, (exp, ccd) in enumerate((("0000001", ccd_a), ("0000002", ccd_b))):
            hdu = fits.BinTableHDU.from_columns([
                fits.Column(name="NUMBER", format="J", array=table["NUMBER"]),
                fits.Column(name="EXP_NAME", format="7A", array=np.full(n, exp)),
                fits.Column(name="CCD_N", format="J", array=ccd),
            ])
            hdu.header["EXTNAME"] = f"EPOCH_{i}"
            hdus.append(hdu)
        fits.HDUList(hdus).writeto(path + ".tmp.fits")
    os.replace(path + ".tmp.fits", path)
    return x, y


def test_multi_epoch_store(products, tmp_path):
    _, header = read_ldac(products["cat"])
    wcs = WCS(header)
    tile = str(tmp_path / "final_cat-000-000.fits")
    x, y = _tile_catalogue(tile, products, wcs)
    out = str(tmp_path / "galaxy_psf-000-000.sqlite")
    counts = process_multi_epoch(tile, out, [str(tmp_path / "none"), str(products["dir"])],
                                 "star_selection", {"0000001": [wcs], "0000002": [wcs]})
    assert counts["objects"] == 45 and counts["empty"] == 5 and counts["epochs"] == 40
    assert [c[0] for c in counts["failed_ccds"]] == ["0000002-0"]
    model = read_psf(products["psf"])
    expected = model.pixel_stamps(np.stack([x, y], axis=1))
    with open_store(out, flag="r") as store:
        assert store["145"] == "empty"
        entry = store["101"]
        assert list(entry) == ["0000001-0"]
        # World -> CCD pixel through the WCS lands on the object's own 1-based position.
        np.testing.assert_allclose(entry["0000001-0"]["VIGNET"], expected[0], atol=2e-6)
        assert set(entry["0000001-0"]["SHAPES"]) == {"E1_PSF_HSM", "E2_PSF_HSM",
                                                     "SIGMA_PSF_HSM", "FLAG_PSF_HSM"}
    with pytest.raises(ValueError, match="EPOCH"):
        process_multi_epoch(products["cat"], out, [str(products["dir"])], "star_selection", {})


def test_ldac_fix_for_psfex(products, tmp_path):
    # Catalogues written by astropy pad header cards with NULs and lack SEXBKDEV/SEXGAIN:
    # PSFEx 3.21 crashes on them; the prepared copy is clean.
    assert needs_preparation(products["cat"])
    fixed = str(tmp_path / "fixed.fits")
    prepare_for_psfex(products["cat"], fixed)
    assert not needs_preparation(fixed)
    a, _ = read_ldac(products["cat"])
    b, hdr = read_ldac(fixed)
    np.testing.assert_array_equal(a["VIGNET"], b["VIGNET"])
    assert list(hdr.keys())[0] == "SIMPLE" and 5 < hdr["SEXBKDEV"] < 15


def test_psfex_error_lines():
    assert psfex_errors("", "> *Error*: SNR_WIN parameter not found in catalogue x.fits\n") \
        == "*Error*: SNR_WIN parameter not found in catalogue x.fits"
    assert psfex_errors("All done", "") is None


def _config(tmp_path, body):
    path = tmp_path / "config.ini"
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.skipif(shutil.which("psfex") is None, reason="PSFEx not installed")
def test_psfex_runner_real_psfex_and_interp(products, tmp_path):
    from shapepipe.modules.psfex_runner import psfex_runner
    from shapepipe.pipeline.config import read_config

    cfg_text = open(EXAMPLE_PSFEX).read().replace("PSF_SIZE        51,51", "PSF_SIZE 25,25")
    dot_psfex = tmp_path / "test.psfex"
    dot_psfex.write_text(cfg_text)
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    config = read_config(_config(tmp_path, f"""
        [PSFEX_RUNNER]
        DOT_PSFEX_FILE = {dot_psfex}
        """))
    run_dirs = {"output": str(out), "tmp": str(tmp)}
    psfex_runner([products["cat"]], run_dirs, NUM, config, "PSFEX_RUNNER", _Log())
    psf = out / f"star_selection{NUM}.psf"
    assert psf.is_file() and (out / f"psfex_cat{NUM}.cat").is_file()
    model = read_psf(str(psf))
    assert model.polnames == ["XWIN_IMAGE", "YWIN_IMAGE"] and model.mask.shape == (6, 25, 25)
    # Both producers' files are read the same way and agree on the PSF.
    val_a, val_b = str(tmp_path / "a.fits"), str(tmp_path / "b.fits")
    process_validation(str(psf), products["cat"], str(out / f"psfex_cat{NUM}.cat"), val_a)
    process_validation(products["psf"], products["cat"], products["psfex_cat"], val_b)
    a, b = read_ldac(val_a)[0], read_ldac(val_b)[0]
    # PSFEx's model from 80 stars is noisy (e rms ~0.01-0.02 vs truth), so the check is that
    # its polynomial is evaluated right: the same shear pattern and size as psf_model's.
    assert np.corrcoef(a["E1_PSF_HSM"], b["E1_PSF_HSM"])[0, 1] > 0.8
    assert abs(np.mean(a["SIGMA_PSF_HSM"] / b["SIGMA_PSF_HSM"]) - 1) < 0.03

    # A catalogue PSFEx refuses (no SNR_WIN): the job fails with PSFEx's own message.
    data, header = read_ldac(products["cat"])
    names = [n for n in data.dtype.names if n != "SNR_WIN"]
    table = np.zeros(len(data), dtype=[(n, data.dtype[n]) for n in names])
    for name in names:
        table[name] = data[name]
    bad = str(tmp_path / f"bad{NUM}.fits")
    write_ldac(bad, header, table)
    from shapepipe.pipeline.errors import ExecutionError

    with pytest.raises(ExecutionError, match="SNR_WIN"):
        psfex_runner([bad], run_dirs, NUM, config, "PSFEX_RUNNER", _Log())


class _Log:
    def info(self, *args):
        pass

    warning = info


@pytest.mark.slow
def test_pipeline_psf_model_then_validation(products, sp):
    shutil.copy(products["cat"], sp.data)
    config = sp.config(f"""
        [PSF_MODEL_RUNNER]
        FILE_PATTERN = star_selection
        FILE_EXT = .fits
        NUMBERING_SCHEME = -0000000-0
        [PSFEX_INTERP_RUNNER]
        MODE = VALIDATION
        INPUT_DIR = last:psf_model_runner, {sp.data}
        FILE_PATTERN = star_selection, star_selection, psfex_cat
        FILE_EXT = .psf, .fits, .cat
        NUMBERING_SCHEME = -0000000-0
        STAR_THRESH = 20
        CHI2_THRESH = 2
        """, modules="psf_model_runner, psfex_interp_runner")
    assert sp.run(config) == 0
    assert sp.outputs("psf_model_runner") == [f"psfex_cat{NUM}.cat", f"star_selection{NUM}.psf"]
    assert sp.outputs("psfex_interp_runner") == [f"validation_psf{NUM}.fits"]
    run = sp.runs()[-1]
    data, _ = read_ldac(glob.glob(os.path.join(run, "psfex_interp_runner", "output",
                                               "*.fits"))[0])
    assert data["ACCEPTED"].sum() >= 75


def test_me_log_wcs_forms(tmp_path):
    from shapepipe.modules.merge_headers import OUTPUT_NAME, find_log_wcs

    out = tmp_path / "merge_headers_runner" / "output"
    out.mkdir(parents=True)
    (out / OUTPUT_NAME).write_text("")
    expected = str(out / OUTPUT_NAME)
    assert find_log_wcs(expected, None) == expected
    assert find_log_wcs(str(out), None) == expected
    assert find_log_wcs("merge_headers_runner", lambda spec: [str(out)]) == expected
    with pytest.raises(FileNotFoundError, match="ME_LOG_WCS = nowhere"):
        find_log_wcs("nowhere", lambda spec: [str(tmp_path)], key="[S] ME_LOG_WCS")


def test_psfex_command_check_images():
    from shapepipe.modules.psfex.caller import psfex_command

    cmd = psfex_command("psfex", "/in/star_selection-1-2.fits", "a.psfex", "/out", "/out/c.cat",
                        ["chi", "RESIDUALS"], "star_selection", "-1-2")
    assert cmd[:4] == ["psfex", "/in/star_selection-1-2.fits", "-c", "a.psfex"]
    i = cmd.index("-CHECKIMAGE_TYPE")
    assert cmd[i + 1] == "CHI,RESIDUALS"
    assert cmd[i + 3] == "/out/star_selectionchi-1-2.fits,/out/star_selectionresiduals-1-2.fits"
    assert "NONE" in psfex_command("psfex", "x.fits", "a", "/o", "/o/c")


def test_accepted_matches_by_position(products, tmp_path):
    from shapepipe.modules.psfex_interp.interp import accepted_from_psfex_cat

    data, _ = read_ldac(products["cat"])
    flags = read_ldac(products["psfex_cat"])[0]["FLAGS_PSF"]
    x, y = data["XWIN_IMAGE"], data["YWIN_IMAGE"]
    by_pos = accepted_from_psfex_cat(products["psfex_cat"], len(x), x, y)
    np.testing.assert_array_equal(by_pos, flags == 0)
    np.testing.assert_array_equal(accepted_from_psfex_cat(products["psfex_cat"], len(x)),
                                  flags == 0)
    # Stars of another catalogue (a held-out split) were not used in the fit.
    held_out = accepted_from_psfex_cat(products["psfex_cat"], 10, x[:10] + 0.5, y[:10])
    assert not held_out.any()
