"""End-to-end: split_exp -> merge_headers -> mask through shapepipe_run on generated exposures."""

import glob
import os
import textwrap

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from shapepipe.modules.merge_headers import read_exp_wcs
from shapepipe.run import main

EXAMPLE_MASK = os.path.join(os.path.dirname(__file__), "..", "example", "mask", "config.mask")
SCALE = 0.187 / 3600
NX, NY = 300, 360
EXPOSURES = ["2000001", "2000002"]


def ccd_header(exp_index, ccd):
    h = fits.Header()
    h["EXTNAME"] = f"ccd{ccd:02d}"
    h["CCDNUM"] = ccd
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 216.8654 + 0.01 * exp_index, 51.5
    # CCD 0 left of the optical axis, CCD 1 right of it
    h["CRPIX1"], h["CRPIX2"] = (NX + 10.0, NY / 2) if ccd == 0 else (-10.0, NY / 2)
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -SCALE, 0.0, 0.0, SCALE
    h["GAIN"], h["SATURATE"] = 1.6, 60000.0
    return h


@pytest.fixture
def exposures(tmp_path):
    data_dir = tmp_path / "exposures"
    data_dir.mkdir()
    rng = np.random.default_rng(11)
    for index, exp in enumerate(EXPOSURES):
        for kind in ("image", "weight", "flag"):
            hdus = [fits.PrimaryHDU()]
            hdus[0].header["EXPNUM"] = int(exp)
            hdus[0].header["EXPTIME"] = 200.0
            for ccd in range(2):
                if kind == "flag":
                    data = np.zeros((NY, NX), np.int16)
                    data[:, 100] = 1  # a bad column
                elif kind == "weight":
                    data = np.full((NY, NX), 0.01, np.float32)
                else:
                    data = rng.normal(170, 10, (NY, NX)).astype(np.float32)
                hdus.append(fits.CompImageHDU(data, header=ccd_header(index, ccd)))
            fits.HDUList(hdus).writeto(str(data_dir / f"{kind}-{exp}.fits.fz"))
    # one bright star on CCD 1 of the first exposure, pixel (150, 180) 0-based
    ra, dec = WCS(ccd_header(0, 1)).all_pix2world([150.0], [180.0], 0)
    stars = Table({"RA": ra, "DEC": dec, "MAG": [11.0]})
    stars.write(str(tmp_path / "ref_stars.fits"))
    return data_dir


def test_split_merge_mask_chain(tmp_path, exposures):
    out = tmp_path / "out"
    config = tmp_path / "config_exp.ini"
    config.write_text(textwrap.dedent(f"""
        [DEFAULT]
        RUN_NAME = exp
        [EXECUTION]
        MODULE = split_exp_runner, merge_headers_runner, mask_runner
        MODE = SMP
        [FILE]
        INPUT_DIR = {exposures}
        OUTPUT_DIR = {out}
        [JOB]
        SMP_BATCH_SIZE = 2
        [SPLIT_EXP_RUNNER]
        OUTPUT_SUFFIX = image, weight, flag
        N_HDU = 2
        [MERGE_HEADERS_RUNNER]
        [MASK_RUNNER]
        MASK_CONFIG_PATH = {EXAMPLE_MASK}
        USE_EXT_FLAG = True
        STAR_CAT_PATH = {tmp_path / 'ref_stars.fits'}
        PREFIX = pipeline
        """))
    assert main(["-c", str(config), "-q"]) == 0
    run_dir = glob.glob(str(out / "exp_*"))[0]
    split_out = sorted(os.listdir(os.path.join(run_dir, "split_exp_runner", "output")))
    assert split_out == sorted(
        [f"{k}-{e}-{c}.fits" for k in ("image", "weight", "flag") for e in EXPOSURES
         for c in (0, 1)] + [f"headers-{e}.npy" for e in EXPOSURES])
    sqlite = os.path.join(run_dir, "merge_headers_runner", "output", "log_exp_headers.sqlite")
    wcs = read_exp_wcs(sqlite)
    assert sorted(wcs) == EXPOSURES and all(len(v) == 2 for v in wcs.values())
    ref = WCS(ccd_header(1, 1))
    np.testing.assert_allclose(wcs["2000002"][1].all_pix2world([[5.0, 6.0]], 0),
                               ref.all_pix2world([[5.0, 6.0]], 0), rtol=0, atol=1e-12)
    mask_dir = os.path.join(run_dir, "mask_runner", "output")
    assert sorted(os.listdir(mask_dir)) == sorted(
        f"pipeline_flag-{e}-{c}.fits" for e in EXPOSURES for c in (0, 1))
    flag = fits.getdata(os.path.join(mask_dir, "pipeline_flag-2000001-1.fits"))
    # star: halo (64) + spike (128); bad column from the external flag (1); border (8)
    assert flag[180, 150] == 64 | 128
    assert flag[200, 100] & 1 and flag[0, 200] & 8
    assert flag[180 + 60, 150 + 60] == 64
    # the star is off CCD 0, 171 px right of its edge: no halo there (radius 92 px), but its
    # 368 px spike along -x crosses the gap and reaches CCD 0 down to x = 470 - 368 = 102
    other = fits.getdata(os.path.join(mask_dir, "pipeline_flag-2000001-0.fits"))
    assert not (other & 64).any()
    assert other[180, 110] & 128 and not other[180, 95] & 128
    assert not (other[:170] & 128).any()


@pytest.fixture(scope="module")
def tiny_survey(tmp_path_factory):
    """The tiny simulated survey (2 exposures x 2 CCDs, ~10-20 s to render)."""
    from shapepipe.sim import make_survey, tiny_params

    path = tmp_path_factory.mktemp("sim")
    make_survey(str(path), seed=1, params=tiny_params())
    return path


@pytest.mark.slow
def test_chain_on_simulated_exposures(tmp_path, tiny_survey):
    """Saturated simulated stars get halo and spike bits, faint ones do not; the external
    flags and the 20-px border are in every output, with the configured bits."""
    out = tmp_path / "out"
    config = tmp_path / "config_exp.ini"
    config.write_text(textwrap.dedent(f"""
        [DEFAULT]
        RUN_NAME = sim
        [EXECUTION]
        MODULE = split_exp_runner, merge_headers_runner, mask_runner
        MODE = SMP
        [FILE]
        INPUT_DIR = {tiny_survey / 'exposures'}
        OUTPUT_DIR = {out}
        [JOB]
        SMP_BATCH_SIZE = 2
        [SPLIT_EXP_RUNNER]
        OUTPUT_SUFFIX = image, weight, flag
        N_HDU = 2
        [MASK_RUNNER]
        MASK_CONFIG_PATH = {EXAMPLE_MASK}
        STAR_CAT_PATH = {tiny_survey / 'star_cat' / 'ref_stars.fits'}
        """))
    assert main(["-c", str(config), "-q"]) == 0
    run_dir = glob.glob(str(out / "sim_*"))[0]
    split_dir = os.path.join(run_dir, "split_exp_runner", "output")
    mask_dir = os.path.join(run_dir, "mask_runner", "output")
    wcs = read_exp_wcs(os.path.join(run_dir, "merge_headers_runner", "output",
                                    "log_exp_headers.sqlite"))
    assert sorted(wcs) == ["2000001", "2000002"]

    stars = Table.read(str(tiny_survey / "truth" / "psf_stars.fits"))
    saturated = stars[stars["SATURATED"] == 1]
    assert len(saturated) >= 1
    faint = ((stars["MAG"] > 20) & (stars["X"] > 60) & (stars["X"] < 450)
             & (stars["Y"] > 60) & (stars["Y"] < 580))
    ref = Table.read(str(tiny_survey / "star_cat" / "ref_stars.fits"))
    bright = ref["MAG"] < 17
    checked_faint = 0
    for row, is_faint in zip(stars, faint):
        name = f"-{row['EXP_NUM']}-{row['CCD']}"
        flag = fits.getdata(os.path.join(mask_dir, f"pipeline_flag{name}.fits"))
        x, y = int(round(row["X"] - 1)), int(round(row["Y"] - 1))  # 1-based truth
        if row["SATURATED"]:
            # every saturated pixel of the star (sim flag bit 4) is inside its halo
            ext = fits.getdata(os.path.join(split_dir, f"flag{name}.fits"))
            sat = (ext[max(y - 15, 0) : y + 16, max(x - 15, 0) : x + 16] & 4) > 0
            halo = (flag[max(y - 15, 0) : y + 16, max(x - 15, 0) : x + 16] & 64) > 0
            assert sat.any() and np.all(halo[sat])
            assert flag[y, x] & 64 and flag[y, x] & 128
            # spikes along the pixel axes beyond the halo, not on the diagonals
            # (towards the CCD centre, so that the tested pixels are on the CCD)
            sx = 1 if x < flag.shape[1] / 2 else -1
            sy = 1 if y < flag.shape[0] / 2 else -1
            scale_h = 1 - 0.05 * (row["MAG"] - 13.8)
            assert flag[y, x + sx * (int(80 * scale_h) + 5)] & 128
            assert flag[y + sy * (int(80 * scale_h) + 5), x] & 128
            assert not flag[y + sy * 70, x + sx * 70] & (64 | 128)
        elif is_faint and checked_faint < 50:
            # bright reference stars (mag < SPIKE_MAG_LIM = 17), on or off this CCD
            bx, by = wcs[str(row["EXP_NUM"])][row["CCD"]].all_world2pix(
                ref["RA"][bright], ref["DEC"][bright], 0)
            dx, dy = np.abs(bx - x), np.abs(by - y)
            # away from every halo (<= 88 px) and off every spike line (half-width <= 5 px)
            if np.all((np.hypot(dx, dy) > 110) & (dx > 15) & (dy > 15)):
                assert not (flag[y - 3 : y + 4, x - 3 : x + 4] & (64 | 128)).any()
                checked_faint += 1
    assert checked_faint >= 10
    # external flags kept, border exact, only configured bits
    for name in ("-2000001-0", "-2000002-1"):
        flag = fits.getdata(os.path.join(mask_dir, f"pipeline_flag{name}.fits"))
        ext = fits.getdata(os.path.join(split_dir, f"flag{name}.fits"))
        assert np.array_equal(flag & 7, ext)
        border = np.zeros(flag.shape, bool)
        border[:20] = border[-20:] = True   # BORDER_WIDTH = 20 in example/mask/config.mask
        border[:, :20] = border[:, -20:] = True
        np.testing.assert_array_equal((flag & 8) > 0, border)
        assert not (flag & ~np.int32(1 | 2 | 4 | 8 | 16 | 32 | 64 | 128)).any()
