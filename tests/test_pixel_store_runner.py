"""pixel_store_runner + pixel_store_merge_runner through shapepipe_run on generated CCD files."""

import os
import textwrap

import numpy as np
import pytest
from astropy.io import fits
from test_pixel_store import header, moffat_psf_file

from shapepipe.modules.merge_headers import merge_headers
from shapepipe.modules.pixel_store import MetaStore, PixelStore, PSFStore
from shapepipe.run import main

EXPOSURES = ["2000001", "2000002"]
NX, NY = 120, 88


def make_inputs(tmp_path, with_psf=True):
    split, psf_dir, head_dir = tmp_path / "split", tmp_path / "psf", tmp_path / "headers"
    for d in (split, psf_dir, head_dir):
        d.mkdir()
    rng = np.random.default_rng(5)
    for e, exp in enumerate(EXPOSURES):
        headers = []
        for ccd in range(2):
            hdr = header(NX, NY, ra=150.0 + 0.01 * ccd, dec=2.0 + 0.01 * e)
            headers.append(hdr.tostring())
            number = f"-{exp}-{ccd}"
            image = rng.normal(300.0, 4.0, (NY, NX)).astype(np.float32)
            flags = np.zeros((NY, NX), np.int16)
            flags[:, 30] = 1
            for kind, data in (("image", image), ("weight", np.full((NY, NX), 1 / 16, "f4")),
                               ("flag", flags)):
                fits.PrimaryHDU(data, header=hdr).writeto(str(split / f"{kind}{number}.fits"))
            if with_psf:
                moffat_psf_file(psf_dir / f"star_split_ratio_80{number}.psf", size=25)
        np.save(head_dir / f"headers-{exp}.npy", np.array(headers, dtype="S"))
    merge_headers(sorted(str(p) for p in head_dir.iterdir()),
                  str(head_dir / "log_exp_headers.sqlite"))
    return split, psf_dir, head_dir


def write_config(tmp_path, split, psf_dir, head_dir):
    path = tmp_path / "config.ini"
    path.write_text(textwrap.dedent(f"""
        [DEFAULT]
        RUN_NAME = ps
        [EXECUTION]
        MODULE = pixel_store_runner, pixel_store_merge_runner
        [FILE]
        INPUT_DIR = {split}
        OUTPUT_DIR = {tmp_path / 'out'}
        [JOB]
        SMP_BATCH_SIZE = 2
        [PIXEL_STORE_RUNNER]
        LOG_WCS = {head_dir}
        PSF_DIR = {psf_dir}
        PSF_GRID = 2
        BITMASK = 0x1
        [PIXEL_STORE_MERGE_RUNNER]
    """))
    return str(path)


def merged_output(tmp_path):
    runs = sorted((tmp_path / "out").glob("ps_*"))
    return runs[-1] / "pixel_store_merge_runner" / "output"


@pytest.mark.slow  # two pipeline modules with SMP workers: ~10-20 s on a loaded machine
def test_runner_builds_the_three_stores(tmp_path):
    split, psf_dir, head_dir = make_inputs(tmp_path)
    assert main(["-c", write_config(tmp_path, split, psf_dir, head_dir), "-q"]) == 0
    out = merged_output(tmp_path)
    assert sorted(os.listdir(out)) == ["exposures.fits", "meta_store.json", "pixel_store.h5",
                                       "psf_store.h5"]
    store = PixelStore(str(out / "pixel_store.h5"))
    expected = sorted(("R.MP9602", f"{e}-{c}") for e in EXPOSURES for c in range(2))
    assert sorted(store.exposures()) == expected
    im, ierr = store.get_image("R.MP9602", "2000002-1")
    assert im.shape == (NX, NY)  # forcepho's (nx, ny)
    assert np.all(ierr[30] == 0) and np.all(ierr[31] == 0.25)  # bad column x = 30 masked
    assert abs(np.median(im)) < 0.5  # sep background subtracted
    store.close()
    meta = MetaStore(str(out / "meta_store.json"))
    assert meta.nexp == 4
    # the centre of CCD 1 of exposure 2000002 is found in that CCD only
    ra, dec = meta.get_wcs("R.MP9602", "2000002-1").all_pix2world([[NX / 2, NY / 2]], 0)[0]
    assert meta.find_exposures((ra, dec), ["R.MP9602"])[0] == ["2000002-1"]
    psf = PSFStore(str(out / "psf_store.h5"))
    pars = psf.lookup("R.MP9602", xy=(100, 80), expID="2000001-0")
    assert pars.shape == (3,) and abs(pars["amp"].sum() - 1) < 1e-5
    psf.close()


def test_missing_psf_fails_the_job_and_writes_no_store(tmp_path):
    split, psf_dir, head_dir = make_inputs(tmp_path, with_psf=False)
    assert main(["-c", write_config(tmp_path, split, psf_dir, head_dir), "-q"]) == 1
    runs = sorted((tmp_path / "out").glob("ps_*"))
    merged = runs[-1] / "pixel_store_merge_runner" / "output"
    assert not (merged / "pixel_store.h5").exists()
