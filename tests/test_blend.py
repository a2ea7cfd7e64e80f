"""shapepipe-blender: produce / concatenate / convert / plot on small generated stamp sets."""

import csv
import os

import numpy as np
import pytest

from shapepipe.modules.blend import concatenate as concat_mod
from shapepipe.modules.blend.cli import main
from shapepipe.modules.blend.concatenate import concatenate, convert
from shapepipe.modules.blend.io import CATALOGUE_HEADER, BlendError
from shapepipe.modules.blend.produce import draw_pairs, produce, shift_stamp
from shapepipe.modules.blend.segmap import (
    bogg_masks,
    dilate,
    gg_masks,
    neighbour_regions,
    ogg_masks,
)
from shapepipe.modules.blend.synthetic import make_inputs


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("blend") / "data"
    cat = make_inputs(str(path), 80, seed=3)
    return str(path), cat


def read_cat(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def roll_shift(stamp, dx, dy):
    """Reference shift: pad, roll (rows by dy, columns by dx), crop (CANDELS-blender's way)."""
    n = stamp.shape[-1]
    padded = np.pad(stamp, n // 2)
    rolled = np.roll(np.roll(padded, dx, axis=1), dy, axis=0)
    return rolled[n // 2:n // 2 + n, n // 2:n // 2 + n]


def run_produce(data_dir, outdir, **kw):
    kw.setdefault("n_blends", 20)
    return produce([data_dir], outdir=str(outdir), echo=quiet, **kw)


def test_produce_files_and_catalogue(data, tmp_path):
    data_dir, _ = data
    out = run_produce(data_dir, tmp_path, n_blends=20, test_ratio=0.25, seed=7)
    assert os.path.basename(out) == "output-s_7-n_20"
    assert os.path.exists(os.path.join(out, "candels-blender.log"))
    for prefix, n in (("train", 15), ("test", 5)):
        header, rows = read_cat(os.path.join(out, f"{prefix}_catalogue.csv"))
        assert tuple(header) == CATALOGUE_HEADER
        assert [int(r[0]) for r in rows] == list(range(n))
        for idx in range(n):
            img = np.load(os.path.join(out, f"{prefix}_blend_{idx:06d}.npy"))
            seg = np.load(os.path.join(out, f"{prefix}_blend_seg_{idx:06d}.npy"))
            assert img.shape == (128, 128, 2) and img.dtype == np.float32
            assert seg.shape == (2, 128, 128) and seg.dtype == np.uint8
            assert set(np.unique(seg)) <= {0, 1}
        assert not os.path.exists(os.path.join(out, f"{prefix}_blend_{n:06d}.npy"))
    # nothing but the output directory was created (the temporary one was renamed)
    assert os.listdir(tmp_path) == ["output-s_7-n_20"]


def test_shift_x_is_along_columns(data, tmp_path):
    data_dir, _ = data
    img_in = np.load(os.path.join(data_dir, "candels_img.npy"))
    seg_in = np.load(os.path.join(data_dir, "candels_seg.npy"))
    out = run_produce(data_dir, tmp_path, n_blends=12, seed=11, test_ratio=0.0)
    _, rows = read_cat(os.path.join(out, "train_catalogue.csv"))
    saw_asymmetric = False
    for row in rows:
        idx, dist, dx, dy = int(row[0]), float(row[1]), int(row[2]), int(row[3])
        g1, g2 = int(row[4]) - 1, int(row[9]) - 1  # synthetic IDs are index + 1
        assert dist == pytest.approx(np.hypot(dx, dy), abs=1e-6)
        img = np.load(os.path.join(out, f"train_blend_{idx:06d}.npy"))
        seg = np.load(os.path.join(out, f"train_blend_seg_{idx:06d}.npy"))
        # without cleaning, channel 0 is galaxy 1 as cut, channel 1 galaxy 2 moved by
        # shift_x columns and shift_y rows
        np.testing.assert_array_equal(img[..., 0], img_in[g1])
        np.testing.assert_array_equal(img[..., 1], roll_shift(img_in[g2], dx, dy))
        central = (seg_in[g2] == seg_in[g2][64, 64]).astype(np.uint8)
        np.testing.assert_array_equal(seg[1], roll_shift(central, dx, dy))
        np.testing.assert_array_equal(seg[0], seg_in[g1] == seg_in[g1][64, 64])
        saw_asymmetric |= dx != dy
    assert saw_asymmetric


def test_pair_rules_and_cuts(data, tmp_path):
    data_dir, cat = data
    out = run_produce(data_dir, tmp_path, n_blends=60, seed=2, mag_low=19.5, mag_high=23.5,
                      mag_diff=1.0, rad_diff=3.0, excluded_types=["irr", "sph"])
    by_id = {str(i): k for k, i in enumerate(cat["ID"])}
    for prefix in ("train", "test"):
        _, rows = read_cat(os.path.join(out, f"{prefix}_catalogue.csv"))
        for row in rows:
            m1, r1, m2, r2 = float(row[5]), float(row[6]), float(row[10]), float(row[11])
            assert row[4] != row[9]  # never a galaxy with itself
            for gid, mag, typ in ((row[4], m1, row[8]), (row[9], m2, row[13])):
                assert 19.5 < mag < 23.5
                assert typ in ("disk", "sphd")
                assert cat["galtype"][by_id[gid]] == typ
            assert abs(m1 - m2) < 1.0
            r_max = min(min(r1, r2) * 3.0, 64)
            r_min = max(r1, r2) if max(r1, r2) < r_max else 0.8 * r_max
            assert r_min - 1e-6 <= float(row[1]) <= r_max + 1e-6


def test_train_test_galaxies_disjoint(data, tmp_path):
    data_dir, _ = data
    out = run_produce(data_dir, tmp_path, n_blends=50, seed=5, test_ratio=0.3)
    ids = {}
    for prefix in ("train", "test"):
        _, rows = read_cat(os.path.join(out, f"{prefix}_catalogue.csv"))
        ids[prefix] = {r[4] for r in rows} | {r[9] for r in rows}
    assert len(ids["test"]) > 3
    assert not ids["train"] & ids["test"]
    assert len(read_cat(os.path.join(out, "test_catalogue.csv"))[1]) == 15


def test_same_seed_same_bytes(data, tmp_path):
    data_dir, _ = data
    a = run_produce(data_dir, tmp_path / "a", seed=9, use_clean_galaxies=True)
    b = run_produce(data_dir, tmp_path / "b", seed=9, use_clean_galaxies=True)
    c = run_produce(data_dir, tmp_path / "c", seed=10, use_clean_galaxies=True)
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    for name in names:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name
    with open(os.path.join(a, "train_blend_000000.npy"), "rb") as fa, \
            open(os.path.join(c, "train_blend_000000.npy"), "rb") as fc:
        assert fa.read() != fc.read()


def test_clean_galaxies_replace_neighbours(data, tmp_path):
    data_dir, _ = data
    img_in = np.load(os.path.join(data_dir, "candels_img.npy"))
    seg_in = np.load(os.path.join(data_dir, "candels_seg.npy"))
    out = run_produce(data_dir, tmp_path, n_blends=30, seed=4, test_ratio=0.0,
                      use_clean_galaxies=True)
    _, rows = read_cat(os.path.join(out, "train_catalogue.csv"))
    checked = 0
    for row in rows:
        g1 = int(row[4]) - 1
        nb, sigma, _ = neighbour_regions(img_in[g1:g1 + 1], seg_in[g1:g1 + 1])
        img = np.load(os.path.join(out, f"train_blend_{int(row[0]):06d}.npy"))[..., 0]
        background = ~dilate(seg_in[g1:g1 + 1] != 0, 5)[0]
        # noise was added everywhere: background rms = sqrt(2) x the input's (1.0)
        assert np.std(img[background]) == pytest.approx(np.sqrt(2.0), rel=0.06)
        if nb[0].sum() > 50:
            # the neighbours' light is gone: mean ~ 0, rms ~ sqrt(2)
            assert img_in[g1][nb[0]].mean() > 0.5
            assert abs(img[nb[0]].mean()) < 5 * np.sqrt(2.0 / nb[0].sum())
            assert np.std(img[nb[0]]) == pytest.approx(np.sqrt(2.0), rel=0.15)
            checked += 1
        # the central galaxy is untouched apart from the added noise
        central = seg_in[g1] == seg_in[g1][64, 64]
        assert np.std(img[central] - img_in[g1][central]) == pytest.approx(1.0, rel=0.2)
    assert checked >= 5


def test_background_sigma_from_background_pixels():
    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 2.0, (20, 128, 128)).astype(np.float32)
    seg = np.zeros((20, 128, 128), np.int32)
    seg[:, 34:94, 34:94] = 1  # a big central source
    seg[:, 5:25, 5:25] = 2  # a neighbour
    img[seg > 0] += 50.0
    _, sigma, n = neighbour_regions(img, seg)
    assert np.all(np.abs(sigma - 2.0) < 0.06)
    assert np.all(n > 5000)
    # CANDELS-blender's estimate (std with the sources zeroed) is biased low
    dilated = dilate(seg != 0, 5)
    old = np.std(img * ~dilated, axis=(1, 2))
    assert np.all(old < 1.7)


def test_dilate_matches_scipy():
    from scipy.ndimage import binary_dilation, generate_binary_structure

    mask = np.random.default_rng(1).random((4, 128, 128)) > 0.997
    mask[0, 0, 0] = mask[1, -1, 64] = True  # edges
    for it in (1, 5):
        ref = binary_dilation(mask, structure=generate_binary_structure(2, 1)[None],
                              iterations=it)
        np.testing.assert_array_equal(dilate(mask, it), ref)


def test_bounded_redraws(tmp_path):
    data_dir = tmp_path / "tiny"
    make_inputs(str(data_dir), 10, seed=1)
    cat_path = data_dir / "candels_cat.csv"
    lines = cat_path.read_text().splitlines()
    # radii of 0.3 px and rad_diff 1: the annulus [0.24, 0.3] holds no integer shift
    head = lines[0].split(",")
    col = head.index("radius")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[col] = "0.3"
    cat_path.write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    with pytest.raises(BlendError, match="found no shift"):
        produce([str(data_dir)], n_blends=5, outdir=str(tmp_path / "out"), echo=quiet,
                mag_diff=10.0, rad_diff=1.0, test_ratio=0.0)
    assert os.listdir(tmp_path / "out") == []


def test_draw_pairs_uniform_annulus():
    rng = np.random.default_rng(3)
    mag = np.array([20.0, 20.5, 21.0])
    rad = np.array([3.0, 3.0, 3.0])
    g1, g2, dx, dy = draw_pairs(rng, mag, rad, np.arange(3), 4000, 2.0, 4.0)
    d = np.hypot(dx, dy)
    assert d.min() >= 3.0 and d.max() <= 12.0
    # the shift is uniform over lattice points: every quadrant and both axes' signs appear
    assert abs(np.mean(dx)) < 0.5 and abs(np.mean(dy)) < 0.5
    assert np.all(g1 != g2)


def test_shift_stamp_matches_roll():
    a = np.arange(128 * 128, dtype=np.float32).reshape(128, 128)
    for dx, dy in ((3, -7), (-20, 5), (0, 0), (64, -64)):
        np.testing.assert_array_equal(shift_stamp(a, dx, dy), roll_shift(a, dx, dy))


@pytest.mark.parametrize("method", ["gg_masks", "ogg_masks", "bogg_masks", "single_images"])
def test_concatenate_methods(data, tmp_path, monkeypatch, method):
    monkeypatch.setattr(concat_mod, "CHUNK", 4)  # several chunks, a partial last one
    data_dir, _ = data
    out = run_produce(data_dir, tmp_path, n_blends=14, seed=1, test_ratio=0.3)
    per = {p: [(np.load(os.path.join(out, f"{p}_blend_{i:06d}.npy")),
                np.load(os.path.join(out, f"{p}_blend_seg_{i:06d}.npy")))
               for i in range({"train": 10, "test": 4}[p])] for p in ("train", "test")}
    concatenate(out, method, delete=True, echo=quiet)
    for prefix, items in per.items():
        blends = np.load(os.path.join(out, f"{prefix}_blends.npy"))
        target = np.load(os.path.join(out, f"{prefix}_{method}.npy"))
        assert blends.shape == (len(items), 128, 128) and blends.dtype == np.float32
        imgs = np.stack([i for i, _ in items])
        segs = np.stack([s for _, s in items]).astype(bool)
        np.testing.assert_array_equal(blends, imgs.sum(axis=-1))
        s1, s2 = segs[:, 0], segs[:, 1]
        expected = {
            "gg_masks": segs.astype(np.uint8),
            "ogg_masks": np.stack([s1 & s2, s1, s2], -1).astype(np.uint8),
            "bogg_masks": np.stack([~s1 & ~s2, s1 & s2, s1 & ~s2, s2 & ~s1], -1)
            .astype(np.uint8),
            "single_images": imgs,
        }[method]
        assert target.dtype == expected.dtype
        np.testing.assert_array_equal(target, expected)
        if method == "bogg_masks":
            assert np.all(target.sum(axis=-1) == 1)  # one-hot
    left = sorted(os.listdir(out))
    assert not [n for n in left if "_blend_" in n]
    assert not [n for n in left if n.startswith(".")]


def test_mask_encodings_shapes():
    seg = np.zeros((3, 2, 128, 128), np.uint8)
    seg[:, 0, 10:20, 10:20] = 1
    seg[:, 1, 15:25, 15:25] = 1
    assert gg_masks(seg).shape == (3, 2, 128, 128)
    o = ogg_masks(seg)
    assert o.shape == (3, 128, 128, 3) and o[0, 17, 17].tolist() == [1, 1, 1]
    b = bogg_masks(seg)
    assert b.shape == (3, 128, 128, 4) and b[0, 12, 12].tolist() == [0, 0, 1, 0]
    assert b[0, 22, 22].tolist() == [0, 0, 0, 1] and b[0, 0, 0].tolist() == [1, 0, 0, 0]


def test_concatenate_keeps_existing_and_checks_numbering(data, tmp_path):
    data_dir, _ = data
    out = run_produce(data_dir, tmp_path, n_blends=6, seed=1, test_ratio=0.0)
    concatenate(out, "gg_masks", echo=quiet)
    before = os.path.getmtime(os.path.join(out, "train_blends.npy"))
    concatenate(out, "ogg_masks", echo=quiet)  # blends exist: only the new target is written
    assert os.path.getmtime(os.path.join(out, "train_blends.npy")) == before
    assert np.load(os.path.join(out, "train_ogg_masks.npy")).shape == (6, 128, 128, 3)
    assert np.load(os.path.join(out, "test_blends.npy")).shape == (0, 128, 128)
    os.remove(os.path.join(out, "train_blend_000003.npy"))
    os.remove(os.path.join(out, "train_bogg_masks.npy")) if os.path.exists(
        os.path.join(out, "train_bogg_masks.npy")) else None
    with pytest.raises(BlendError, match="train_blend_000003.npy: missing"):
        concatenate(out, "bogg_masks", echo=quiet)
    assert not os.path.exists(os.path.join(out, "train_bogg_masks.npy"))


def test_convert(data, tmp_path):
    data_dir, _ = data
    out = run_produce(data_dir, tmp_path, n_blends=10, seed=1)
    convert(out, echo=quiet)
    for prefix, n in (("train", 8), ("test", 2)):
        _, rows = read_cat(os.path.join(out, f"{prefix}_catalogue.csv"))
        flux = np.load(os.path.join(out, f"{prefix}_flux.npy"))
        mags = np.array([[float(r[5]), float(r[10])] for r in rows])
        assert flux.shape == (n, 2)
        np.testing.assert_allclose(flux, 10 ** (-0.4 * (mags - 25.96)), rtol=1e-12)
    assert main(["convert", "-d", out, "--zeropoint=25.5"]) == 0
    flux = np.load(os.path.join(out, "train_flux.npy"))
    _, rows = read_cat(os.path.join(out, "train_catalogue.csv"))
    assert flux[0, 1] == pytest.approx(10 ** (-0.4 * (float(rows[0][10]) - 25.5)))


def test_cli_end_to_end_and_options(data, tmp_path, capsys):
    data_dir, cat = data
    other = tmp_path / "other"
    make_inputs(str(other), 30, seed=8)
    args = ["produce", "-n", "16", "-e", "irr", "--excluded_type", "sph", "-d", data_dir,
            "-d", str(other), "-s", "3", "-t", "0.25", "--mag_high", "23.8", "--mag_low",
            "19.2", "--mag_diff", "1.5", "--rad_diff", "3", "--use_clean_galaxies", "-o",
            str(tmp_path)]
    assert main(args) == 0
    out = str(tmp_path / "output-s_3-n_16")
    log = open(os.path.join(out, "candels-blender.log")).read()
    assert "Excluded galaxy types: irr, sph" in log and "Use clean galaxies: True" in log
    assert "110 read" in log  # 80 + 30: both directories pooled
    assert main(["concatenate", "-d", out, "--method", "bogg_masks"]) == 0
    assert main(["convert", "-d", out]) == 0
    png = str(tmp_path / "blends.png")
    assert main(["plot", "-d", out, "-o", png, "-n", "2"]) == 0
    with open(png, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert np.load(os.path.join(out, "test_flux.npy")).shape == (4, 2)


def _bad(tmp_path, capsys, args, words):
    before = set(os.listdir(tmp_path))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    for word in words:
        assert word in err, err
    assert set(os.listdir(tmp_path)) == before  # nothing half written
    return err


def test_bad_inputs(tmp_path, capsys):
    good = tmp_path / "good"
    make_inputs(str(good), 12, seed=2)
    out = ["-o", str(tmp_path)]

    short = tmp_path / "short"
    make_inputs(str(short), 12, seed=2)
    lines = (short / "candels_cat.csv").read_text().splitlines()
    (short / "candels_cat.csv").write_text("\n".join(lines[:-2]) + "\n")
    _bad(tmp_path, capsys, ["produce", "-d", str(short)] + out,
         ["candels_cat.csv", "10 rows for 12 stamps"])

    nocol = tmp_path / "nocol"
    make_inputs(str(nocol), 12, seed=2)
    text = (nocol / "candels_cat.csv").read_text().replace("galtype", "kind", 1)
    (nocol / "candels_cat.csv").write_text(text)
    _bad(tmp_path, capsys, ["produce", "-d", str(nocol)] + out,
         ["candels_cat.csv", "missing column(s) galtype"])

    small = tmp_path / "small"
    make_inputs(str(small), 12, seed=2, size=64)
    _bad(tmp_path, capsys, ["produce", "-d", str(small)] + out,
         ["candels_img.npy", "(12, 64, 64)", "(N, 128, 128)"])

    _bad(tmp_path, capsys, ["produce", "-d", str(good), "--mag_high", "19.3"] + out,
         ["cuts leave", "at least 2"])
    _bad(tmp_path, capsys, ["produce", "-d", str(good), "-n", "40", "-t", "0.05"] + out,
         ["test split has 0 galaxies"])

    assert main(["produce", "-d", str(good), "-n", "4"] + out) == 0
    capsys.readouterr()
    _bad(tmp_path, capsys, ["produce", "-d", str(good), "-n", "4"] + out,
         ["output-s_42-n_4", "exists"])
    _bad(tmp_path, capsys, ["concatenate", "-d", str(good), "-m", "ogg_masks"],
         ["no train blends"])
