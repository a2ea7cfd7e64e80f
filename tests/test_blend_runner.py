"""blend_runner: isolated-galaxy stamps from a tile; the simulator's GALTYPE and Z truth."""

import csv
import glob
import os

import numpy as np
import pytest
from astropy.wcs import WCS

from shapepipe.modules.blend.cli import main as blender
from shapepipe.modules.blend.stamps import _relabel, select_and_cut, write_inputs
from shapepipe.utils.pixels import stamp_corner

SCALE = 0.187 / 3600.0


def _wcs(nx, ny):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [nx / 2, ny / 2]
    w.wcs.cd = [[-SCALE, 0], [0, SCALE]]
    return w


def _scene():
    """A tile with: an isolated galaxy, a close pair, one at the edge, a star, a hidden blend."""
    ny, nx = 400, 700
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1.0, (ny, nx)).astype(np.float32)
    weight = np.ones((ny, nx), np.float32)
    seg = np.zeros((ny, nx), np.int32)
    # (x, y) 0-based, truth kind, in a sexcat
    objects = [((150.3, 160.6), "gal"), ((350.0, 150.0), "gal"), ((358.0, 150.0), "gal"),
               ((30.0, 200.0), "gal"), ((500.0, 250.0), "star"), ((600.0, 300.0), "gal")]
    yy, xx = np.mgrid[0:ny, 0:nx]
    for number, ((x, y), _) in enumerate(objects, start=1):
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        image += (50 * np.exp(-r2 / (2 * 3.0**2))).astype(np.float32)
        seg[(r2 < 5.0**2) & (seg == 0)] = number
    w = _wcs(nx, ny)
    pos = np.array([p for p, _ in objects])
    ra, dec = w.all_pix2world(pos[:, 0], pos[:, 1], 0)
    sexcat = np.zeros(len(objects), dtype=[("NUMBER", "i4"), ("XWIN_IMAGE", "f8"),
                                           ("YWIN_IMAGE", "f8"), ("XWIN_WORLD", "f8"),
                                           ("YWIN_WORLD", "f8"), ("FLAGS", "i2"),
                                           ("MAG_AUTO", "f4"), ("FLUX_RADIUS", "f4")])
    sexcat["NUMBER"] = np.arange(1, len(objects) + 1)
    sexcat["XWIN_IMAGE"], sexcat["YWIN_IMAGE"] = pos[:, 0] + 1, pos[:, 1] + 1
    sexcat["XWIN_WORLD"], sexcat["YWIN_WORLD"] = ra, dec
    sexcat["MAG_AUTO"] = 21.5
    sexcat["FLUX_RADIUS"] = 2.5
    # truth: the objects (shifted by 0.1") plus a hidden companion inside the last segment
    t_ra, t_dec = w.all_pix2world(np.r_[pos[:, 0] + 0.5, 602.0], np.r_[pos[:, 1], 301.0], 0)
    truth = {"ID": np.arange(101, 108), "RA": t_ra, "DEC": t_dec,
             "IS_STAR": np.array([0, 0, 0, 0, 1, 0, 0], np.int16),
             "MAG": np.array([20.5, 21, 21, 21, 18, 21, 22.0], np.float32),
             "HLR": np.array([0.5, 0.4, 0.4, 0.4, 0, 0.4, 0.3], np.float32),
             "GALTYPE": np.array(["disk", "sph", "sph", "sphd", "star", "disk", "disk"]),
             "Z": np.array([0.7, 0.5, 0.5, 0.5, 0, 0.9, 1.1], np.float32)}
    return image, weight, seg, sexcat, truth, w


def test_select_and_cut_keeps_only_isolated_galaxies():
    image, weight, seg, sexcat, truth, w = _scene()
    img, segs, cat, counts = select_and_cut(image, weight, seg, sexcat, truth, w)
    assert counts == {"detections": 6, "matched": 6, "galaxies": 5, "flags ok": 5,
                      "inside": 4, "not hidden blends": 3, "isolated": 1}
    assert list(cat["ID"]) == [101]
    assert cat["galtype"].tolist() == ["disk"]
    assert cat["z"][0] == pytest.approx(0.7)
    assert cat["mag"][0] == pytest.approx(20.5)
    assert cat["radius"][0] == pytest.approx(0.5 / 0.187, rel=1e-6)
    x0, y0, _, _ = stamp_corner(150.3, 160.6, 128)
    np.testing.assert_array_equal(img[0], image[y0:y0 + 128, x0:x0 + 128])
    assert img.dtype == np.float32 and segs.dtype == np.uint8
    assert segs[0, 64, 64] == 1
    assert set(np.unique(segs[0])) == {0, 1}
    # measured magnitude and radius instead of the truth
    _, _, cat_m, _ = select_and_cut(image, weight, seg, sexcat, truth, w,
                                    mag_source="measured", radius_source="measured")
    assert cat_m["mag"][0] == pytest.approx(21.5) and cat_m["radius"][0] == pytest.approx(2.5)
    # a zero weight in the stamp, or a flag, leaves it out
    weight[170, 170] = 0
    assert select_and_cut(image, weight, seg, sexcat, truth, w)[0].shape[0] == 0
    weight[170, 170] = 1
    sexcat["FLAGS"][0] = 2
    assert select_and_cut(image, weight, seg, sexcat, truth, w)[0].shape[0] == 0


def test_relabel_central_first():
    seg = np.zeros((2, 8, 8), np.int64)
    seg[0, 4, 4], seg[0, 0, 0], seg[0, 7, 7] = 900, 3, 1200
    seg[1, 4, 4], seg[1, 1, 1] = 2, 7
    out = _relabel(seg, np.array([900, 2]))
    assert out[0, 4, 4] == 1 and out[0, 0, 0] == 2 and out[0, 7, 7] == 3 and out[0, 1, 1] == 0
    assert out[1, 4, 4] == 1 and out[1, 1, 1] == 2 and out[1, 0, 0] == 0


def test_written_inputs_feed_produce(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.normal(0, 1, (6, 128, 128)).astype(np.float32)
    seg = np.zeros((6, 128, 128), np.uint8)
    seg[:, 60:69, 60:69] = 1
    cat = {"ID": np.arange(6) + 10, "mag": np.linspace(20, 21, 6), "radius": np.full(6, 3.0),
           "z": np.full(6, 0.5), "galtype": np.array(["disk"] * 6)}
    write_inputs(str(tmp_path / "in"), img, seg, cat)
    assert sorted(os.listdir(tmp_path)) == ["in"]
    assert blender(["produce", "-d", str(tmp_path / "in"), "-n", "5", "-t", "0", "-o",
                    str(tmp_path / "out")]) == 0


def test_sim_types_and_redshifts_are_a_separate_stream(monkeypatch):
    from shapepipe.sim import catalog, tiny_params

    cat = catalog.make_catalog(tiny_params(), 3)
    gal = cat["IS_STAR"] == 0
    b = cat["BULGE_FRAC"][gal]
    expected = np.where(b == 0, "disk", np.where(b < 0.5, "sphd", "sph"))
    assert cat["GALTYPE"][gal].tolist() == expected.tolist()
    assert set(cat["GALTYPE"][~gal]) == {"star"} and np.all(cat["Z"][~gal] == 0)
    z = cat["Z"][gal]
    assert np.all(z > 0) and 0.5 < np.median(z) < 1.2
    bright = cat["MAG"][gal] < 21
    assert np.median(z[bright]) < np.median(z[~bright])  # fainter galaxies lie further
    # the redshifts use their own generator: other columns do not depend on them
    monkeypatch.setattr(catalog, "galaxy_redshifts", lambda seed, mag: np.zeros(mag.size))
    other = catalog.make_catalog(tiny_params(), 3)
    for key in cat:
        if key != "Z":
            np.testing.assert_array_equal(cat[key], other[key], err_msg=key)


@pytest.mark.slow
def test_config_blend_end_to_end(tmp_path, monkeypatch):
    """config_blend.ini on a tiny simulated survey, then produce / concatenate / convert / plot."""
    from shapepipe.run import main as run_main
    from shapepipe.sim import make_survey, tiny_params

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data, runs = tmp_path / "sp_data", tmp_path / "runs"
    make_survey(str(data), seed=4, params=tiny_params())
    monkeypatch.setenv("SP_DATA", str(data))
    monkeypatch.setenv("SP_RUN", str(runs))
    monkeypatch.chdir(root)
    assert run_main(["-c", "example/config_blend.ini", "-q"]) == 0
    (inputs,) = glob.glob(str(runs / "run_sp_blend_*" / "blend_runner" / "output" /
                              "blend_input-270-283"))
    img = np.load(os.path.join(inputs, "candels_img.npy"))
    seg = np.load(os.path.join(inputs, "candels_seg.npy"))
    with open(os.path.join(inputs, "candels_cat.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert img.shape[0] == seg.shape[0] == len(rows) >= 20
    assert img.shape[1:] == (128, 128) and seg.dtype == np.uint8
    assert np.all(seg[:, 64, 64] == 1)
    assert {r["galtype"] for r in rows} <= {"disk", "sph", "sphd"}
    # magnitudes and types are those of the truth row of that ID
    from astropy.io import fits

    truth = fits.getdata(str(data / "truth" / "objects.fits"))
    by_id = {int(i): k for k, i in enumerate(truth["ID"])}
    for r in rows[:10]:
        t = truth[by_id[int(r["ID"])]]
        assert t["IS_STAR"] == 0 and t["GALTYPE"].strip() == r["galtype"]
        assert float(r["mag"]) == pytest.approx(float(t["MAG"]), abs=1e-5)
        assert float(r["z"]) == pytest.approx(float(t["Z"]), abs=1e-5)
    out = str(tmp_path / "sets")
    assert blender(["produce", "-n", "20", "-d", inputs, "--use_clean_galaxies", "-s", "1",
                    "-o", out]) == 0
    target = os.path.join(out, "output-s_1-n_20")
    assert blender(["concatenate", "-d", target, "--method", "ogg_masks", "--delete"]) == 0
    assert blender(["convert", "-d", target, "--zeropoint", "30"]) == 0
    assert blender(["plot", "-d", target, "-o", str(tmp_path / "blends.png")]) == 0
    assert np.load(os.path.join(target, "train_blends.npy")).shape == (16, 128, 128)
    assert np.load(os.path.join(target, "test_ogg_masks.npy")).shape == (4, 128, 128, 3)


def test_truth_without_types_is_one_clear_error(tmp_path):
    from astropy.io import fits

    from shapepipe.modules.blend.stamps import read_truth

    cols = [fits.Column(name=n, format="D", array=np.zeros(3))
            for n in ("ID", "RA", "DEC", "IS_STAR", "MAG", "HLR")]
    path = str(tmp_path / "old_truth.fits")
    fits.BinTableHDU.from_columns(cols).writeto(path)
    with pytest.raises(ValueError, match=r"old_truth.fits: missing truth column\(s\) GALTYPE, Z"):
        read_truth(path)
