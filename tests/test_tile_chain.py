"""End to end on the tiny simulated survey: example/config_exp.ini, then the whole
example/config_tile.ini, to the final shear catalogue."""

import glob
import json
import os
import re

import numpy as np
import pytest
from astropy.io import fits

from shapepipe.utils.stamp_store import open_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _derive(name, modules, replace, tmp_path):
    """A copy of an example config with another MODULE list and some keys replaced."""
    with open(os.path.join(REPO, "example", name)) as handle:
        text = handle.read()
    text = re.sub(r"^MODULE = .*?(?=^MODE)", f"MODULE = {modules}\n", text,
                  flags=re.S | re.M)
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.slow
def test_exposure_then_tile_chain_to_the_final_catalogue(tmp_path, monkeypatch):
    from shapepipe.run import main
    from shapepipe.sim import make_survey, tiny_params

    data, runs = tmp_path / "data", tmp_path / "runs"
    make_survey(str(data), seed=3, params=tiny_params())
    monkeypatch.setenv("SP_DATA", str(data))
    monkeypatch.setenv("SP_RUN", str(runs))
    monkeypatch.chdir(REPO)  # the example configs name auxiliary files from the repo root
    # The example configs as shipped (every CCD split, CCD sizes from the headers), but for
    # the star count of a usable PSF model: the tiny CCDs hold ~15 PSF stars each.
    exp = _derive("config_exp.ini", "split_exp_runner, merge_headers_runner, mask_runner, "
                  "sextractor_runner, setools_runner, psf_model_runner", {}, tmp_path)
    assert main(["-c", exp, "-q"]) == 0
    with open(os.path.join(REPO, "example", "config_tile.ini")) as handle:
        modules = re.search(r"^MODULE = (.*?)^MODE", handle.read(), re.S | re.M).group(1)
    tile = _derive("config_tile.ini", " ".join(modules.split()),
                   {"STAR_THRESH = 20": "STAR_THRESH = 5"}, tmp_path)
    assert main(["-c", tile, "-q"]) == 0

    run = glob.glob(str(runs / "run_sp_tile_*"))[0]

    def out(module, name):
        path = os.path.join(run, module, "output", name)
        assert os.path.isfile(path), path
        return path

    num = "-" + os.path.basename(glob.glob(str(data / "tiles" / "CFIS_image-*.fits"))[0]
                                 ).split("-", 1)[1][:-5]
    with fits.open(out("sextractor_runner", f"tile_sexcat{num}.fits")) as hdul:
        objects = hdul["LDAC_OBJECTS"].data
        assert objects["VIGNET"].shape[1:] == (51, 51)
        ids = objects["NUMBER"]
        n_epoch = objects["N_EPOCH"]
    sm = fits.getdata(out("spread_model_runner", f"sexcat_sm{num}.fits"), "LDAC_OBJECTS")
    np.testing.assert_array_equal(sm["NUMBER"], ids)
    # defined wherever a PSF exists (the tiny tile extends beyond the exposures: N_EPOCH 0)
    on_ccd = n_epoch > 0
    assert on_ccd.sum() > 100
    assert np.isfinite(sm["SPREAD_MODEL"][on_ccd]).mean() > 0.9
    assert np.all(sm["SPREAD_MODEL_FLAGS"][~on_ccd] & 1)
    # PSF and vignet stores cover the same objects and, per object, the same epochs
    psf = open_store(out("psfex_interp_runner", f"galaxy_psf{num}.sqlite"), "r")
    stores = {t: open_store(out("vignetmaker_runner_run_2", f"{t}_vignet{num}.sqlite"), "r")
              for t in ("flag", "image", "weight", "background")}
    try:
        n_with = n_bright = 0
        for obj, ne in zip(ids[:200], n_epoch[:200]):
            entry = stores["image"][str(obj)]
            if ne == 0:
                assert entry == "empty"
                continue
            n_with += 1
            assert len(entry) == ne
            # PSF epochs are those vignet epochs whose CCD has a usable PSF model
            psf_entry = psf[str(obj)]
            assert psf_entry == "empty" or set(psf_entry) <= set(entry)
            for store in stores.values():
                assert set(store[str(obj)]) == set(entry)
            key = next(iter(entry))
            stamp = entry[key]["VIGNET"]
            # a bright object sits at the centre of its exposure stamp (background subtracted)
            sub = stamp - stores["background"][str(obj)][key]["VIGNET"]
            w = stores["weight"][str(obj)][key]["VIGNET"]
            if w[20:31, 20:31].min() > 0 and sub[20:31, 20:31].max() > 30 * np.std(sub[:10]):
                n_bright += 1
                j, i = np.unravel_index(np.argmax(sub[15:36, 15:36]), (21, 21))
                assert abs(j - 10) <= 1 and abs(i - 10) <= 1
        assert n_with > 50 and n_bright > 10
    finally:
        psf.close()
        for s in stores.values():
            s.close()

    # ngmix ran as N_SPLIT = 2 jobs on the tile, combined into one catalogue of every object.
    summary = json.load(open(os.path.join(run, "summary.json")))["modules"]["ngmix_runner"]
    assert summary["failed"] == []
    ngmix = fits.open(out("ngmix_runner", f"ngmix{num}.fits"))
    np.testing.assert_array_equal(ngmix["NOSHEAR"].data["id"], ids)
    final = fits.getdata(out("make_catalog_runner", f"final_cat{num}.fits"), "RESULTS")
    np.testing.assert_array_equal(final["NUMBER"], ids)
    assert "VIGNET" not in final.columns.names
    ok = (final["NGMIX_MCAL_FLAGS"] == 0) & (final["SPREAD_CLASS"] == 1)
    assert ok.sum() > 50
    ell = final["NGMIX_ELL_NOSHEAR"][ok]
    assert np.all(np.abs(ell) < 1) and np.all(final["NGMIX_N_EPOCH"][ok] >= 1)
    # Objects on no exposure were not measured: NaN, never 0.
    off = n_epoch == 0
    if off.any():
        assert np.all(np.isnan(final["NGMIX_ELL_NOSHEAR"][off]))

    # Metadetection: every step present, each with about the same detections, and the
    # measured shapes are shapes (|e| < 1) where unflagged.
    mdet = fits.getdata(out("metadetect_runner", f"metadetect_cat{num}.fits"), "METADETECT")
    assert sorted(np.unique(mdet["MDET_STEP"])) == sorted(["noshear", "1p", "1m", "2p", "2m"])
    good = (mdet["MDET_FLAGS"] == 0) & (mdet["MDET_S2N"] > 10)
    # the real detections (not the noise peaks of the 0.8-sigma threshold) are the same
    # objects in every step
    _, counts = np.unique(mdet["MDET_STEP"][good], return_counts=True)
    print("metadetect S/N > 10 per step:", counts)
    assert counts.min() > 0.97 * counts.max()
    assert np.sum(good & (mdet["MDET_STEP"] == "noshear")) > 50
    assert np.all(np.hypot(mdet["MDET_G1"][good], mdet["MDET_G2"][good]) < 1)
    assert np.all(np.isfinite(mdet["RA"])) and np.all(mdet["PSF_T"] > 0)
    assert np.all(mdet["MDET_T_RATIO_ERR"][good & np.isfinite(mdet["MDET_T_RATIO"])] > 0)
    # positions are on the tile, unique numbers
    assert len(np.unique(mdet["NUMBER"])) == len(mdet)
    with fits.open(str(data / "tiles" / f"CFIS_image{num}.fits")) as hdul:
        ny, nx = hdul[0].data.shape
    assert np.all((mdet["X_IMAGE"] > 0.5) & (mdet["X_IMAGE"] < nx + 0.5))
    assert np.all((mdet["Y_IMAGE"] > 0.5) & (mdet["Y_IMAGE"] < ny + 0.5))
