"""Tests of merge_headers: headers-<exp>.npy files -> log_exp_headers.sqlite (JSON, no pickle)."""

import json
import logging
import os
import sqlite3

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from shapepipe.modules.merge_headers import merge_headers, read_exp_headers, read_exp_wcs
from shapepipe.modules.merge_headers.merge_headers import exposure_name
from shapepipe.modules.merge_headers_runner import merge_headers_runner
from shapepipe.modules.split_exp import save_headers, split_exposure
from shapepipe.pipeline.config import ShapePipeConfig


def make_headers(n_ccd, exp_index):
    headers = []
    for ccd in range(n_ccd):
        header = fits.Header()
        header["NAXIS"] = 2
        header["NAXIS1"] = 2048
        header["NAXIS2"] = 4612
        header["CTYPE1"] = "RA---TAN"
        header["CTYPE2"] = "DEC--TAN"
        header["CRVAL1"] = 35.0 + 0.1 * exp_index + 0.01 * ccd
        header["CRVAL2"] = -5.0 + 0.05 * ccd
        header["CRPIX1"] = 1024.5
        header["CRPIX2"] = 2306.5
        header["CD1_1"] = -5.2e-5
        header["CD1_2"] = 2e-8
        header["CD2_1"] = 1e-8
        header["CD2_2"] = 5.2e-5
        header["CCDNAME"] = f"ccd{ccd:02d}"
        headers.append(header)
    return headers


@pytest.fixture
def header_files(tmp_path):
    files = []
    for index, exp in enumerate(["2000001", "2000002", "2100003"]):
        path = str(tmp_path / f"headers-{exp}.npy")
        save_headers(make_headers(4, index), path)
        files.append(path)
    return files


def test_round_trip(tmp_path, header_files):
    out = str(tmp_path / "log_exp_headers.sqlite")
    assert merge_headers(header_files, out) == 3
    data = read_exp_headers(out)
    assert sorted(data) == ["2000001", "2000002", "2100003"]
    for index, exp in enumerate(["2000001", "2000002", "2100003"]):
        expected = make_headers(4, index)
        assert len(data[exp]) == 4
        for got, ref in zip(data[exp], expected):
            for key in ref:
                assert got[key] == ref[key]
    wcs = read_exp_wcs(out, exposures=["2000002"])
    assert list(wcs) == ["2000002"]
    ref = WCS(make_headers(4, 1)[3])
    np.testing.assert_allclose(wcs["2000002"][3].pixel_to_world_values(100.0, 4000.0),
                               ref.pixel_to_world_values(100.0, 4000.0), atol=1e-12, rtol=0)
    # no temporary file left next to the output
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(f) for f in header_files] + ["log_exp_headers.sqlite"])


def test_sqlite_holds_json_not_pickle(tmp_path, header_files):
    out = str(tmp_path / "log_exp_headers.sqlite")
    merge_headers(header_files, out)
    with sqlite3.connect(out) as conn:
        rows = conn.execute("SELECT key, value FROM unnamed").fetchall()
    assert sorted(key for key, _ in rows) == ["2000001", "2000002", "2100003"]
    for _, value in rows:
        raw = value.encode() if isinstance(value, str) else bytes(value)
        assert not raw.startswith(b"\x80")  # pickle protocol 2+ magic
        decoded = json.loads(raw)
        assert isinstance(decoded, list) and all(isinstance(t, str) for t in decoded)
        assert decoded[0].startswith("NAXIS")


def test_rerun_replaces_file(tmp_path, header_files):
    out = str(tmp_path / "log_exp_headers.sqlite")
    merge_headers(header_files, out)
    merge_headers(header_files[:1], out)
    assert list(read_exp_headers(out)) == ["2000001"]


def test_errors(tmp_path, header_files):
    out = str(tmp_path / "x.sqlite")
    with pytest.raises(ValueError, match="duplicate"):
        merge_headers(header_files + header_files[:1], out)
    pickled = str(tmp_path / "headers-2000009.npy")
    np.save(pickled, np.array([{"header": "x"}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled ShapePipe headers files are refused"):
        merge_headers([pickled], out)
    with pytest.raises(ValueError, match="headers-<exposure>.npy"):
        exposure_name("/a/b/flag-2000001.npy")
    merge_headers(header_files, out)
    with pytest.raises(KeyError, match="2999999"):
        read_exp_headers(out, exposures=["2999999"])
    with pytest.raises(FileNotFoundError):
        read_exp_headers(str(tmp_path / "nope.sqlite"))


def test_old_pickled_sqlite_refused(tmp_path):
    from sqlitedict import SqliteDict

    path = str(tmp_path / "log_exp_headers.sqlite")
    with SqliteDict(path) as store:  # default encoder = pickle, as ShapePipe wrote it
        store["2000001"] = [{"header": "x"}]
        store.commit()
    with pytest.raises(ValueError, match="pickled ShapePipe files are refused"):
        read_exp_headers(path)


def test_split_then_merge_then_wcs(tmp_path):
    """The WCS recovered from the sqlite file equals the one of the split CCD files."""
    primary = fits.PrimaryHDU()
    hdus = [primary]
    for header in make_headers(2, 0):
        hdus.append(fits.CompImageHDU(np.zeros((30, 20), np.float32), header=header))
    exp = str(tmp_path / "image-2000001.fits.fz")
    fits.HDUList(hdus).writeto(exp)
    files, headers = split_exposure(exp, "image", "-2000001", str(tmp_path), 2)
    save_headers(headers, str(tmp_path / "headers-2000001.npy"))
    out = str(tmp_path / "log_exp_headers.sqlite")
    merge_headers([str(tmp_path / "headers-2000001.npy")], out)
    wcs = read_exp_wcs(out)["2000001"]
    for ccd, name in enumerate(files):
        ref = WCS(fits.getheader(name))
        assert wcs[ccd].pixel_shape == (20, 30)
        np.testing.assert_allclose(wcs[ccd].all_pix2world([[3.0, 7.0]], 0),
                                   ref.all_pix2world([[3.0, 7.0]], 0), atol=1e-12, rtol=0)


def test_runner_serial_with_output_path(tmp_path, header_files):
    target = tmp_path / "elsewhere"
    target.mkdir()
    ini = tmp_path / "c.ini"
    ini.write_text(f"[MERGE_HEADERS_RUNNER]\nOUTPUT_PATH = {target}\n")
    config = ShapePipeConfig(str(ini))
    config.read(str(ini))
    merge_headers_runner([[f] for f in header_files], {"output": str(tmp_path)}, "_serial",
                         config, "MERGE_HEADERS_RUNNER", logging.getLogger("test"))
    assert sorted(read_exp_headers(str(target / "log_exp_headers.sqlite"))) == [
        "2000001", "2000002", "2100003"]
    ini.write_text("[MERGE_HEADERS_RUNNER]\n")
    config = ShapePipeConfig(str(ini))
    config.read(str(ini))
    out = tmp_path / "out"
    out.mkdir()
    merge_headers_runner([[f] for f in header_files], {"output": str(out)}, "_serial",
                         config, "MERGE_HEADERS_RUNNER", logging.getLogger("test"))
    assert os.listdir(out) == ["log_exp_headers.sqlite"]
