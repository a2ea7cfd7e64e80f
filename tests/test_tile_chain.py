"""End to end on the tiny simulated survey: example/config_exp.ini (without the PSFEx
comparison), then example/config_tile.ini up to vignetmaker_runner_run_2."""

import glob
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
def test_exposure_then_tile_chain_to_multi_epoch_vignets(tmp_path, monkeypatch):
    from shapepipe.run import main
    from shapepipe.sim import make_survey, tiny_params

    data, runs = tmp_path / "data", tmp_path / "runs"
    make_survey(str(data), seed=3, params=tiny_params())
    monkeypatch.setenv("SP_DATA", str(data))
    monkeypatch.setenv("SP_RUN", str(runs))
    monkeypatch.chdir(REPO)  # the example configs name auxiliary files from the repo root
    exp = _derive("config_exp.ini", "split_exp_runner, merge_headers_runner, mask_runner, "
                  "sextractor_runner, setools_runner, psf_model_runner",
                  {"N_HDU = 4": "N_HDU = 2"}, tmp_path)
    assert main(["-c", exp, "-q"]) == 0
    # TODO(coordinator): once ngmix_runner is merged, run the whole MODULE list of
    # config_tile.ini here and check final_cat-<tile>.fits.
    tile = _derive("config_tile.ini", "mask_runner, sextractor_runner, psfex_interp_runner, "
                   "vignetmaker_runner, spread_model_runner, vignetmaker_runner",
                   {"CCD_SIZE = 0, 1024, 0, 1280": "CCD_SIZE = 0, 512, 0, 640",
                    # the tiny CCDs hold ~15 PSF stars each
                    "STAR_THRESH = 20": "STAR_THRESH = 5"}, tmp_path)
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
