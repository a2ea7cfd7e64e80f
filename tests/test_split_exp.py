"""Tests of split_exp: multi-HDU exposures -> single-CCD files + text headers file."""

import logging
import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from shapepipe.modules.split_exp import load_headers, save_headers, split_exposure
from shapepipe.modules.split_exp.split_exp import SplitError
from shapepipe.modules.split_exp_runner import split_exp_runner
from shapepipe.pipeline.config import ShapePipeConfig

N_CCD = 3
SHAPE = (60, 40)


def ccd_header(ccd):
    header = fits.Header()
    header["CTYPE1"] = "RA---TAN"
    header["CTYPE2"] = "DEC--TAN"
    header["CRVAL1"] = 150.0 + 0.02 * ccd
    header["CRVAL2"] = 2.0 - 0.01 * ccd
    header["CRPIX1"] = 20.5
    header["CRPIX2"] = 30.5
    header["CD1_1"] = -0.187 / 3600
    header["CD1_2"] = 1e-7
    header["CD2_1"] = -1e-7
    header["CD2_2"] = 0.187 / 3600
    header["GAIN"] = 1.5 + ccd
    header["EXTNAME"] = f"CCD{ccd:02d}"
    return header


def write_exposure(path, kind, n_ccd=N_CCD, compress=True, seed=0, table_at=None):
    """A multi-extension exposure file like the simulated/CFHT ones."""
    rng = np.random.default_rng(seed)
    primary = fits.PrimaryHDU()
    primary.header["EXPTIME"] = 40.0
    primary.header["FILTER"] = "r.MP9602"
    hdus = [primary]
    for ccd in range(n_ccd):
        if kind == "flag":
            data = (rng.random(SHAPE) < 0.05).astype(np.int16) * np.int16(1 << (ccd % 3))
        elif kind == "weight":
            data = rng.uniform(0.5, 2.0, SHAPE).astype(np.float32)
        else:
            data = rng.normal(100.0, 5.0, SHAPE).astype(np.float32)
        cls = fits.CompImageHDU if compress else fits.ImageHDU
        hdus.append(cls(data=data, header=ccd_header(ccd)))
        if table_at == ccd:
            hdus[-1] = fits.BinTableHDU.from_columns([fits.Column("A", "E", array=[1.0])])
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.mark.parametrize("ext,compress", [(".fits.fz", True), (".fitsfz", True), (".fits", False)])
def test_split_writes_every_ccd_with_data_and_wcs(tmp_path, ext, compress):
    path = write_exposure(str(tmp_path / f"image-2000001{ext}"), "image", compress=compress)
    out = tmp_path / "out"
    out.mkdir()
    files, headers = split_exposure(path, "image", "-2000001", str(out), N_CCD)
    assert [os.path.basename(f) for f in files] == [f"image-2000001-{i}.fits" for i in range(3)]
    with fits.open(path) as src:
        for ccd, name in enumerate(files):
            with fits.open(name) as hdul:
                assert len(hdul) == 1
                np.testing.assert_array_equal(hdul[0].data, src[ccd + 1].data)
                header = hdul[0].header
                assert header["CRVAL1"] == pytest.approx(150.0 + 0.02 * ccd)
                assert header["GAIN"] == pytest.approx(1.5 + ccd)
                # exposure-level cards are inherited, extension cards are not
                assert header["EXPTIME"] == 40.0
                assert "XTENSION" not in header and "ZIMAGE" not in header
                sky = WCS(header).pixel_to_world_values(10.0, 20.0)
                ref = WCS(src[ccd + 1].header).pixel_to_world_values(10.0, 20.0)
                np.testing.assert_allclose(sky, ref, rtol=0, atol=1e-12)
    assert len(headers) == N_CCD


def test_flags_are_integers(tmp_path):
    path = write_exposure(str(tmp_path / "flag-2000001.fits.fz"), "flag")
    files, _ = split_exposure(path, "flag", "-2000001", str(tmp_path), N_CCD)
    with fits.open(path) as src:
        for ccd, name in enumerate(files):
            data = fits.getdata(name)
            assert data.dtype.kind == "i"
            np.testing.assert_array_equal(data, src[ccd + 1].data)
            assert data.max() == 1 << (ccd % 3)


def test_float_flags_converted_and_non_integer_refused(tmp_path):
    path = str(tmp_path / "flag-2000002.fits")
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(np.full(SHAPE, 4.0, dtype=np.float32))]
    fits.HDUList(hdus).writeto(path)
    files, _ = split_exposure(path, "flag", "-2000002", str(tmp_path), 1)
    assert fits.getdata(files[0]).dtype.kind == "i"
    hdus[1].data[0, 0] = 0.5
    fits.HDUList(hdus).writeto(path, overwrite=True)
    with pytest.raises(SplitError, match="non-integer"):
        split_exposure(path, "flag", "-2000002", str(tmp_path), 1)


@pytest.mark.parametrize("n_in_file,n_hdu", [(2, 3), (4, 3)])
def test_missing_or_extra_hdu_is_a_clear_error(tmp_path, n_in_file, n_hdu):
    path = write_exposure(str(tmp_path / "image-2000001.fits.fz"), "image", n_ccd=n_in_file)
    with pytest.raises(SplitError, match=f"expected N_HDU = {n_hdu} .* found {n_in_file}"):
        split_exposure(path, "image", "-2000001", str(tmp_path), n_hdu)
    # nothing half-done is left under a final name
    assert not [f for f in os.listdir(tmp_path) if f.startswith("image-2000001-")]


def test_non_image_extension_refused(tmp_path):
    path = write_exposure(str(tmp_path / "image-2000001.fits"), "image", compress=False,
                          table_at=1)
    with pytest.raises(SplitError, match="HDU 2 .CCD 1. is a BinTableHDU"):
        split_exposure(path, "image", "-2000001", str(tmp_path), N_CCD)


def test_headers_file_is_text_not_pickle(tmp_path):
    path = write_exposure(str(tmp_path / "image-2000001.fits.fz"), "image")
    _, headers = split_exposure(path, "image", "-2000001", str(tmp_path), N_CCD)
    npy = str(tmp_path / "headers-2000001.npy")
    save_headers(headers, npy)
    array = np.load(npy, allow_pickle=False)  # would raise on an object (pickled) array
    assert array.dtype.kind == "S" and array.shape == (N_CCD,)
    back = load_headers(npy)
    for ccd, header in enumerate(back):
        assert header["CRVAL1"] == pytest.approx(150.0 + 0.02 * ccd)
        assert header["NAXIS1"] == SHAPE[1] and header["NAXIS2"] == SHAPE[0]


def _config(tmp_path, text):
    ini = tmp_path / "config.ini"
    ini.write_text(text)
    config = ShapePipeConfig(str(ini))
    config.read(str(ini))
    return config


def test_runner_splits_three_inputs_and_saves_image_headers(tmp_path):
    inputs = [write_exposure(str(tmp_path / f"{kind}-2000001.fits.fz"), kind, seed=i)
              for i, kind in enumerate(["image", "weight", "flag"])]
    out = tmp_path / "output"
    out.mkdir()
    config = _config(tmp_path, "[SPLIT_EXP_RUNNER]\nOUTPUT_SUFFIX = image, weight, flag\n"
                               "N_HDU = 3\n")
    run_dirs = {"output": str(out)}
    split_exp_runner(inputs, run_dirs, "-2000001", config, "SPLIT_EXP_RUNNER",
                     logging.getLogger("test"))
    names = sorted(os.listdir(out))
    expected = sorted([f"{k}-2000001-{c}.fits" for k in ("image", "weight", "flag")
                       for c in range(3)] + ["headers-2000001.npy"])
    assert names == expected
    headers = load_headers(str(out / "headers-2000001.npy"))
    assert [h["EXTNAME"] for h in headers] == ["CCD00", "CCD01", "CCD02"]
    # headers come from the image input, whose data are floats
    assert all(h["BITPIX"] == -32 for h in headers)


def test_runner_suffix_count_mismatch(tmp_path):
    inputs = [write_exposure(str(tmp_path / "image-2000001.fits.fz"), "image")]
    config = _config(tmp_path, "[SPLIT_EXP_RUNNER]\nOUTPUT_SUFFIX = image, weight\nN_HDU = 3\n")
    with pytest.raises(ValueError, match="OUTPUT_SUFFIX has 2 entries"):
        split_exp_runner(inputs, {"output": str(tmp_path)}, "-2000001", config,
                         "SPLIT_EXP_RUNNER", logging.getLogger("test"))


def test_scamp_tan_pv_becomes_tpv(tmp_path):
    header = ccd_header(0)
    header["PV1_0"], header["PV1_1"], header["PV1_4"] = 0.0, 1.0, 50.0
    header["PV2_0"], header["PV2_1"], header["PV2_4"] = 0.0, 1.0, -30.0
    path = str(tmp_path / "image-2000003.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros(SHAPE, np.float32),
                                                   header=header)]).writeto(path)
    files, _ = split_exposure(path, "image", "-2000003", str(tmp_path), 1)
    out = fits.getheader(files[0])
    assert out["CTYPE1"] == "RA---TPV" and out["CTYPE2"] == "DEC--TPV"
    # the distortion is now applied: positions differ from the plain TAN ones
    tpv = WCS(out).all_pix2world([[39.0, 59.0]], 0)
    tan = WCS(ccd_header(0)).all_pix2world([[39.0, 59.0]], 0)
    assert np.abs(tpv - tan).max() * 3600 > 0.01
    # plain TAN headers are left alone
    files, _ = split_exposure(write_exposure(str(tmp_path / "image-2000004.fits"), "image",
                                             compress=False), "image", "-2000004",
                              str(tmp_path), N_CCD)
    assert fits.getheader(files[0])["CTYPE1"] == "RA---TAN"
