"""vignetmaker: vectorised cutting, CLASSIC files, MULTI-EPOCH stores, bad inputs, the runner."""

import os

import numpy as np
import pytest
from astropy.io import fits

from shapepipe.modules.vignetmaker import (
    cut_stamps,
    make_classic,
    make_multi_epoch,
    read_vignet_file,
)
from shapepipe.utils.pixels import stamp_corner
from shapepipe.utils.stamp_store import open_store
from tests.tile_data import make_wcs, write_image, write_log_wcs, write_tile_catalog

S = 11


def _slice(image, x0, y0, size, fill):
    """Reference: one stamp by explicit pixel loops (slow, obviously right)."""
    out = np.full((size, size), fill, dtype=np.float32)
    for j in range(size):
        for i in range(size):
            y, x = y0 + j, x0 + i
            if 0 <= y < image.shape[0] and 0 <= x < image.shape[1]:
                out[j, i] = image[y, x]
    return out


def test_cut_stamps_equal_direct_slices_including_edges():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(40, 60)).astype(np.float32)
    x0 = np.array([0, 10, -5, 55, 49, 20, -20])
    y0 = np.array([0, 5, 30, -3, 29, 35, 10])
    stamps = cut_stamps(image, x0, y0, S, fill=7.0)
    for k in range(len(x0)):
        np.testing.assert_array_equal(stamps[k], _slice(image, x0[k], y0[k], S, 7.0))
    assert stamps[-1].min() == 7.0  # entirely off the image
    assert cut_stamps(image, [], [], S).shape == (0, S, S)


def _tile(tmp_path, n=6):
    """A tile image with WCS and a catalogue of n objects (PIX and world positions)."""
    wcs = make_wcs(crpix=(40.0, 30.0))
    rng = np.random.default_rng(5)
    image = rng.normal(size=(60, 80)).astype(np.float32)
    path_img = str(tmp_path / "CFIS_weight-000-000.fits")
    write_image(path_img, image, wcs)
    x = rng.uniform(-2, 82, n)  # 1-based, some near or beyond the edges
    y = rng.uniform(1, 60, n)
    ra, dec = wcs.all_pix2world(x, y, 1)
    cat = str(tmp_path / "tile_sexcat-000-000.fits")
    write_tile_catalog(cat, {"NUMBER": np.arange(1, n + 1), "XWIN_IMAGE": x, "YWIN_IMAGE": y,
                             "XWIN_WORLD": ra, "YWIN_WORLD": dec})
    return cat, path_img, image, x, y


def test_classic_pix_and_sphe_give_the_same_stamps(tmp_path):
    cat, img, image, x, y = _tile(tmp_path)
    out_pix = tmp_path / "pix"
    out_sphe = tmp_path / "sphe"
    out_pix.mkdir()
    out_sphe.mkdir()
    make_classic(cat, [img], ["weight"], str(out_pix), "-000-000", ["XWIN_IMAGE", "YWIN_IMAGE"],
                 "PIX", S)
    make_classic(cat, [img], ["weight"], str(out_sphe), "-000-000",
                 ["XWIN_WORLD", "YWIN_WORLD"], "SPHE", S)
    num, vp = read_vignet_file(str(out_pix / "weight_vignet-000-000.fits"))
    _, vs = read_vignet_file(str(out_sphe / "weight_vignet-000-000.fits"))
    np.testing.assert_array_equal(num, np.arange(1, 7))
    np.testing.assert_array_equal(vp, vs)
    x0, y0, _, _ = stamp_corner(x - 1, y - 1, S)
    for k in range(len(x)):
        np.testing.assert_array_equal(vp[k], _slice(image, x0[k], y0[k], S, 0.0))
    with fits.open(out_pix / "weight_vignet-000-000.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "LDAC_IMHEAD", "LDAC_OBJECTS"]
        assert hdul["LDAC_OBJECTS"].header["VIGPOSX"] == "XWIN_IMAGE"
    with pytest.raises(ValueError, match="one prefix per image"):
        make_classic(cat, [img], ["a", "b"], str(out_pix), "-000-000",
                     ["XWIN_IMAGE", "YWIN_IMAGE"], "PIX", S)


# --------------------------------------------------------------------------- multi-epoch
TYPES = ["flag", "image", "weight", "background"]


def _exposures(tmp_path, n_obj=8):
    """Two exposures of two CCDs (distinct pixel values per file), a tile catalogue whose
    EPOCH HDUs also name a third exposure absent from the headers file, one object on no
    CCD, and the CCD 1 weight file of exposure 2000002 missing."""
    img_dir = tmp_path / "ccds"
    img_dir.mkdir()
    ccd_wcs = {}
    rng = np.random.default_rng(8)
    for e, exp in enumerate(("2000001", "2000002")):
        ccd_wcs[exp] = []
        for ccd in range(2):
            # CCD 1 sits 100 px to the east; exposures dithered by a fraction of a pixel
            w = make_wcs(crval=(150.0, 2.0), crpix=(30.3 + 0.37 * e + 100 * ccd, 25.6 - 0.21 * e))
            ccd_wcs[exp].append(w)
            for t_index, t in enumerate(TYPES):
                if (exp, ccd, t) == ("2000002", 1, "weight"):
                    continue
                data = rng.normal(size=(50, 60)) + 100 * t_index
                dtype = np.int16 if t == "flag" else np.float32
                write_image(str(img_dir / f"{t}-{exp}-{ccd}.fits"),
                            (data * (4 if t == "flag" else 1)).astype(dtype), w)
    log = str(tmp_path / "log_exp_headers.sqlite")
    write_log_wcs(log, ccd_wcs)
    base = make_wcs(crval=(150.0, 2.0), crpix=(30.0, 25.0))
    x = np.r_[rng.uniform(0, 60, n_obj - 1), 500.0]  # last object on no CCD
    y = np.r_[rng.uniform(0, 50, n_obj - 1), 25.0]
    ra, dec = base.all_pix2world(x, y, 0)
    ccd = np.where(x < 60, 0, -1)
    ids = np.arange(10, 10 + n_obj)[::-1]  # ids not in row order: stores follow id order
    cat = str(tmp_path / "tile_sexcat-000-000.fits")
    write_tile_catalog(cat, {"NUMBER": ids, "XWIN_WORLD": ra, "YWIN_WORLD": dec},
                       epochs=[("2000001", ccd), ("2000002", np.where(ccd == 0, 1 - (x > 40), -1)),
                               ("2000003", ccd)])
    return cat, str(img_dir), log, ccd_wcs, ids, ra, dec


def test_multi_epoch_stores(tmp_path):
    cat, img_dir, log, ccd_wcs, ids, ra, dec = _exposures(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    messages = []

    class Log:
        def info(self, *a):
            pass

        def warning(self, fmt, *a):
            messages.append(fmt % a)

    from shapepipe.modules.merge_headers import read_exp_wcs

    counts = make_multi_epoch(cat, {t: [img_dir] for t in TYPES}, TYPES,
                              lambda names: read_exp_wcs(log, names), str(out), "-000-000",
                              stamp_size=S, log=Log())
    skipped = dict(counts["skipped"])
    assert set(skipped) == {"2000002-1", "2000003-0"}
    assert "weight-2000002-1.fits" in skipped["2000002-1"]
    assert "headers" in skipped["2000003-0"]
    assert any("2000003-0" in m for m in messages)
    assert sorted(os.listdir(out)) == sorted(f"{t}_vignet-000-000.sqlite" for t in TYPES)
    stores = {t: open_store(str(out / f"{t}_vignet-000-000.sqlite"), "r") for t in TYPES}
    try:
        assert list(stores["image"].keys()) == [str(i) for i in sorted(ids)]
        assert stores["flag"][str(ids[-1])] == "empty" and counts["empty"] == 1
        n_ok = 0
        for k, obj in enumerate(ids[:-1]):
            entry = stores["image"][str(obj)]
            for t in TYPES:  # every type holds the same epochs
                assert set(stores[t][str(obj)]) == set(entry)
            for key in entry:
                exp, ccd = key.split("-")
                x, y = ccd_wcs[exp][int(ccd)].all_world2pix(ra[k], dec[k], 0)
                x0, y0, _, _ = stamp_corner(float(x), float(y), S)
                for t in TYPES:
                    with fits.open(os.path.join(img_dir, f"{t}-{key}.fits")) as h:
                        image = h[0].data
                    got = stores[t][str(obj)][key]["VIGNET"]
                    assert got.dtype == np.float32 and got.shape == (S, S)
                    fill = 1.0 if t == "flag" else 0.0
                    np.testing.assert_array_equal(got, _slice(image, x0, y0, S, fill))
                    n_ok += 1
        assert n_ok == counts["epochs"] * len(TYPES)
    finally:
        for s in stores.values():
            s.close()


def test_multi_epoch_through_the_pipeline(tmp_path, sp):
    cat, img_dir, log, _, ids, _, _ = _exposures(tmp_path)
    os.replace(cat, sp.data / os.path.basename(cat))
    config = sp.config(f"""
        [VIGNETMAKER_RUNNER]
        FILE_PATTERN = tile_sexcat
        FILE_EXT = .fits
        NUMBERING_SCHEME = -000-000
        MODE = MULTI-EPOCH
        COORD = SPHE
        POSITION_PARAMS = XWIN_WORLD, YWIN_WORLD
        STAMP_SIZE = {S}
        ME_IMAGE_DIR = {img_dir}
        ME_IMAGE_PATTERN = flag, image, weight, background
        ME_LOG_WCS = {log}
        """, modules="vignetmaker_runner")
    assert sp.run(config) == 0
    assert sp.outputs("vignetmaker_runner") == sorted(
        f"{t}_vignet-000-000.sqlite" for t in TYPES)
    bad = sp.config(f"""
        [VIGNETMAKER_RUNNER]
        FILE_PATTERN = tile_sexcat
        FILE_EXT = .fits
        NUMBERING_SCHEME = -000-000
        MODE = MULTI-EPOCH
        COORD = PIX
        ME_IMAGE_DIR = {img_dir}, {img_dir}
        ME_LOG_WCS = {log}
        """, modules="vignetmaker_runner", name="bad.ini")
    assert sp.run(bad) != 0


def test_classic_through_the_pipeline_and_masking(tmp_path, sp):
    cat, img, image, x, y = _tile(tmp_path)
    for p in (cat, img):
        os.replace(p, sp.data / os.path.basename(p))
    config = sp.config(f"""
        [VIGNETMAKER_RUNNER]
        FILE_PATTERN = tile_sexcat, CFIS_weight
        FILE_EXT = .fits, .fits
        NUMBERING_SCHEME = -000-000
        MODE = CLASSIC
        COORD = PIX
        POSITION_PARAMS = XWIN_IMAGE, YWIN_IMAGE
        STAMP_SIZE = {S}
        PREFIX = weight
        """, modules="vignetmaker_runner")
    assert sp.run(config) == 0
    assert sp.outputs("vignetmaker_runner") == ["weight_vignet-000-000.fits"]
    # An even STAMP_SIZE is refused before any job runs.
    with open(config) as handle:
        text = handle.read()
    even = str(tmp_path / "even.ini")
    with open(even, "w") as handle:
        handle.write(text.replace(f"STAMP_SIZE = {S}", "STAMP_SIZE = 10"))
    assert sp.run(even) != 0


def test_masking_mode_rewrites_the_catalogue_vignets(tmp_path, sp):
    vign = np.ones((3, S, S), dtype=np.float32)
    vign[1, 2:4, 5] = -1e30
    write_tile_catalog(str(sp.data / "tile_sexcat-000-000.fits"),
                       {"NUMBER": np.array([4, 5, 6]), "VIGNET": vign})
    config = sp.config("""
        [VIGNETMAKER_RUNNER]
        FILE_PATTERN = tile_sexcat
        FILE_EXT = .fits
        NUMBERING_SCHEME = -000-000
        MASKING = True
        MASK_VALUE = -7
        """, modules="vignetmaker_runner")
    assert sp.run(config) == 0
    run = sp.runs()[-1]
    num, out = read_vignet_file(os.path.join(run, "vignetmaker_runner", "output",
                                             "cat_vignet-000-000.fits"))
    np.testing.assert_array_equal(num, [4, 5, 6])
    assert np.all(out[1, 2:4, 5] == -7) and np.count_nonzero(out != 1) == 2


def test_store_bulk_write_and_read(tmp_path):
    from shapepipe.utils.stamp_store import get_many, write_entries

    path = str(tmp_path / "s.sqlite")
    arr = np.arange(9, dtype=np.float32).reshape(3, 3)
    n = write_entries(path, ((str(i), {"e-0": {"VIGNET": arr * i}} if i % 3 else "empty")
                             for i in range(7)), batch=2)
    assert n == 7
    with open_store(path, "r") as store:  # sqlitedict reads what write_entries wrote
        assert list(store.keys()) == [str(i) for i in range(7)]
        np.testing.assert_array_equal(store["5"]["e-0"]["VIGNET"], arr * 5)
        assert store["3"] == "empty"
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute('REPLACE INTO "unnamed" VALUES (?, ?)', ("4", "{not json"))
    errors = []
    got = get_many(path, ["1", "4", "9", "3"], on_error=lambda k, e: errors.append(k))
    assert set(got) == {"1", "3"} and errors == ["4"]
    np.testing.assert_array_equal(got["1"]["e-0"]["VIGNET"], arr)
    with pytest.raises(ValueError):
        get_many(path, ["4"])


def test_unreadable_file_drops_the_epoch_for_every_type(tmp_path):
    cat, img_dir, log, ccd_wcs, ids, ra, dec = _exposures(tmp_path)
    # the last type of CCD 2000001-0 is corrupt: the types cut before it are rolled back
    with open(os.path.join(img_dir, "background-2000001-0.fits"), "wb") as handle:
        handle.write(b"not a FITS file" * 100)
    out = tmp_path / "out"
    out.mkdir()
    counts = make_multi_epoch(cat, {t: [img_dir] for t in TYPES}, TYPES, ccd_wcs, str(out),
                              "-000-000", stamp_size=S)
    assert "unreadable" in dict(counts["skipped"])["2000001-0"]
    for t in TYPES:
        with open_store(str(out / f"{t}_vignet-000-000.sqlite"), "r") as store:
            keys = set()
            for obj in ids:
                entry = store[str(obj)]
                if entry != "empty":
                    keys |= set(entry)
            assert "2000001-0" not in keys and "2000002-0" in keys
