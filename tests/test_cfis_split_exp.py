"""split_exp with N_HDU optional: every image HDU by default, the same count in every file."""

import logging
import os

import numpy as np
import pytest
from astropy.io import fits

from shapepipe.modules.split_exp import check_ccd_counts, split_exposure
from shapepipe.modules.split_exp.split_exp import SplitError
from shapepipe.modules.split_exp_runner import split_exp_runner
from shapepipe.pipeline.config import ShapePipeConfig

SHAPE = (24, 16)
KINDS = ("image", "weight", "flag")


def write_exposure(path, kind, n_ccd, seed=0):
    rng = np.random.default_rng(seed)
    hdus = [fits.PrimaryHDU()]
    hdus[0].header["EXPTIME"] = 200.0
    for ccd in range(n_ccd):
        if kind == "flag":
            data = (rng.random(SHAPE) < 0.1).astype(np.int16)
        else:
            data = rng.normal(100.0, 5.0, SHAPE).astype(np.float32)
        header = fits.Header()
        header["CCDNUM"] = ccd
        hdus.append(fits.CompImageHDU(data, header=header))
    fits.HDUList(hdus).writeto(path)
    return str(path)


def _inputs(tmp_path, counts):
    return [write_exposure(tmp_path / f"{kind}-2000001.fits.fz", kind, n, seed=i)
            for i, (kind, n) in enumerate(zip(KINDS, counts))]


def _run(tmp_path, inputs, n_hdu_line=""):
    ini = tmp_path / "config.ini"
    ini.write_text(f"[SPLIT_EXP_RUNNER]\nOUTPUT_SUFFIX = image, weight, flag\n{n_hdu_line}")
    config = ShapePipeConfig(str(ini))
    config.read(str(ini))
    out = tmp_path / "output"
    out.mkdir(exist_ok=True)
    split_exp_runner(inputs, {"output": str(out)}, "-2000001", config, "SPLIT_EXP_RUNNER",
                     logging.getLogger("test"))
    return out


@pytest.mark.parametrize("n_hdu_line", ["", "N_HDU = 5\n"])
def test_runner_with_and_without_n_hdu(tmp_path, n_hdu_line):
    inputs = _inputs(tmp_path, (5, 5, 5))
    out = _run(tmp_path, inputs, n_hdu_line)
    expected = sorted([f"{k}-2000001-{c}.fits" for k in KINDS for c in range(5)]
                      + ["headers-2000001.npy"])
    assert sorted(os.listdir(out)) == expected
    with fits.open(inputs[2]) as src:
        for ccd in range(5):
            data = fits.getdata(out / f"flag-2000001-{ccd}.fits")
            np.testing.assert_array_equal(data, src[ccd + 1].data)
            assert fits.getheader(out / f"flag-2000001-{ccd}.fits")["CCDNUM"] == ccd


def test_mismatched_counts_without_n_hdu_fail_before_writing(tmp_path):
    inputs = _inputs(tmp_path, (4, 3, 4))
    with pytest.raises(SplitError) as info:
        _run(tmp_path, inputs)
    message = str(info.value)
    assert ("image-2000001.fits.fz 4, weight-2000001.fits.fz 3, flag-2000001.fits.fz 4"
            in message) and "the same number" in message
    assert os.listdir(tmp_path / "output") == []


def test_n_hdu_different_from_a_file_names_it(tmp_path):
    inputs = _inputs(tmp_path, (4, 4, 3))
    with pytest.raises(SplitError, match=r"flag-2000001.fits.fz: expected N_HDU = 4 .* found 3"):
        _run(tmp_path, inputs, "N_HDU = 4\n")
    assert os.listdir(tmp_path / "output") == []


def test_n_hdu_must_be_positive(tmp_path):
    inputs = _inputs(tmp_path, (2, 2, 2))
    with pytest.raises(ValueError, match="N_HDU = 0: expected a positive integer"):
        _run(tmp_path, inputs, "N_HDU = 0\n")


def test_split_every_extension_and_empty_file(tmp_path):
    path = write_exposure(tmp_path / "image-2000009.fits.fz", "image", 7)
    files, headers = split_exposure(path, "image", "-2000009", str(tmp_path))
    assert len(files) == 7 and [h["CCDNUM"] for h in headers] == list(range(7))
    assert check_ccd_counts([path, path]) == 7
    empty = tmp_path / "image-2000010.fits"
    fits.PrimaryHDU(np.zeros(SHAPE, np.float32)).writeto(empty)
    with pytest.raises(SplitError, match="no CCD extension after the primary HDU"):
        check_ccd_counts([str(empty)])
    junk = tmp_path / "weight-2000010.fits"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(SplitError, match="weight-2000010.fits: cannot read as FITS"):
        check_ccd_counts([str(junk)])


def test_40_ccds_megacam_like_counted_without_n_hdu(tmp_path):
    # plain extensions: the count is the same code for any layout, and 40 compressed HDUs
    # per file would make this the slowest test of the file
    paths = []
    for kind in KINDS:
        hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(np.zeros((4, 4), np.float32))
                                      for _ in range(40)]
        paths.append(str(tmp_path / f"{kind}-2000001.fits"))
        fits.HDUList(hdus).writeto(paths[-1])
    assert check_ccd_counts(paths) == 40
    assert check_ccd_counts(paths, 40) == 40
    with pytest.raises(SplitError, match="expected N_HDU = 36 CCD extensions .* found 40"):
        check_ccd_counts(paths, 36)


def test_n_hdu_checked_before_any_job(tmp_path, capsys):
    from shapepipe.run import main

    ini = tmp_path / "config.ini"
    ini.write_text(f"""[EXECUTION]
MODULE = split_exp_runner
[FILE]
INPUT_DIR = {tmp_path}
OUTPUT_DIR = {tmp_path / 'out'}
[SPLIT_EXP_RUNNER]
OUTPUT_SUFFIX = image, weight, flag
N_HDU = -4
""")
    _inputs(tmp_path, (2, 2, 2))
    assert main(["-c", str(ini), "-q"]) == 2
    captured = capsys.readouterr()
    assert "[SPLIT_EXP_RUNNER]: N_HDU = -4: expected a positive integer" in (
        captured.out + captured.err)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.fits"))
