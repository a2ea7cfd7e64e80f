"""CFIS input preparation: tile numbering, names, HISTORY parsing, field selection, links."""

import importlib.util
import os

import numpy as np
import pytest
from astropy.io import fits

from shapepipe.utils import cfis

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "scripts")


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


field_select = _script("cfis_field_select")
create_links = _script("cfis_create_image_links")


# --- tile numbering -----------------------------------------------------------------------

@pytest.mark.parametrize("ra,dec,expected", [
    # the simulated tile: y = 283, x = 216.87 * cos(51.5 deg) * 2 = 270.01
    (216.87, 51.5, (270, 283)),
    # near the edge of the row (Dec_c = 51.5): cos of the row centre, 216.87 * 0.62251 * 2
    # = 270.0 (ShapePipe's cos(51.74) gives 268.6 -> 269, a tile not containing the point)
    (216.87, 51.74, (270, 283)),
    # equator, RA near 360: x = 719.6 -> 720, which is tile 0
    (359.8, 0.1, (0, 180)),
    (359.7, 0.0, (719, 180)),
    # RA < 0 is taken modulo 360: -0.1 = 359.9 -> 719.8 -> 720 -> 0
    (-0.1, 0.0, (0, 180)),
    # Dec 60.2 -> y = 300.4 -> 300, Dec_c = 60, cos = 0.5: x = RA
    (359.9, 60.2, (360, 300)),
    (0.3, 60.0, (0, 300)),
    # high Dec: y = 340, cos(80) = 0.173648, x = 123.4 * 0.347296 = 42.86 -> 43
    (123.4, 80.1, (43, 340)),
    # the south pole row: cos(-90) = 0, every RA is tile 0
    (200.0, -89.9, (0, 0)),
])
def test_tile_numbers_hand_computed(ra, dec, expected):
    assert cfis.tile_number_from_coord(ra, dec) == expected


def test_tile_numbers_vectorised_and_inverse_of_centres():
    rng = np.random.default_rng(3)
    ra = rng.uniform(-10, 370, 2000)
    dec = rng.uniform(-85, 85, 2000)
    x, y = cfis.tile_number_from_coord(ra, dec)
    assert [cfis.tile_number_from_coord(r, d) for r, d in zip(ra[:50], dec[:50])] == list(
        zip(x[:50].tolist(), y[:50].tolist()))
    # every position lies within half a tile step (0.25 deg) of its tile's centre, in Dec
    # and along the row (RA difference times cos of the row's Dec), across RA = 0 too
    ra_c, dec_c = cfis.tile_center(x, y)
    assert np.all(np.abs(dec - dec_c) <= 0.25 + 1e-9)
    d_ra = (np.mod(ra, 360) - ra_c + 180) % 360 - 180
    assert np.all(np.abs(d_ra) * np.cos(np.deg2rad(dec_c)) <= 0.25 + 1e-9)
    # the centres map back to their own numbers (within a row: the last tiles of a row
    # have centres past RA = 360, which are numbered from 0 again)
    xs, ys = np.meshgrid(np.arange(0, 720, 7), np.arange(100, 330, 3))
    keep = xs < 720 * np.cos(np.deg2rad(ys / 2 - 90)) - 0.5
    xs, ys = xs[keep], ys[keep]
    back = cfis.tile_number_from_coord(*cfis.tile_center(xs, ys))
    np.testing.assert_array_equal(back[0], xs)
    np.testing.assert_array_equal(back[1], ys)


def test_simulated_tile_centre_has_its_number():
    from shapepipe.sim import tile_center, tiny_params

    number = tiny_params().tile_number
    assert cfis.tile_number_from_coord(*tile_center(*number)) == tuple(number)
    assert cfis.tile_center(*number) == pytest.approx(tile_center(*number))


@pytest.mark.parametrize("dec", [90.5, -91.0, np.nan])
def test_tile_number_refuses_impossible_dec(dec):
    with pytest.raises(cfis.CfisError):
        cfis.tile_number_from_coord(10.0, dec)


def test_parse_coords():
    assert cfis.parse_coords("216.87deg_51.50deg") == pytest.approx([216.87, 51.5])
    assert cfis.parse_coords("14h27m29s_+51d30m00s") == pytest.approx(
        [(14 + 27 / 60 + 29 / 3600) * 15, 51.5])
    assert cfis.parse_coords("210_50 220_53") == pytest.approx([210, 50, 220, 53])
    for bad, message in [("216.87deg", "found 1"), ("1_2_3", "found 3"),
                         ("abc_5deg", "'abc' is not an angle"), ("10deg_95deg", "outside")]:
        with pytest.raises(cfis.CfisError, match=message):
            cfis.parse_coords(bad)


def test_select_tiles_in_area_across_ra_zero():
    numbers = [(718, 180), (0, 180), (2, 180), (10, 180), (0, 186), (718, 170)]
    # centres RA 359, 0, 1, 5 at Dec 0; (0, 186) at Dec 3; (718, 170) at Dec -5
    assert cfis.select_tiles_in_area(numbers, 358, -1, 1.5, 1).tolist() == [0, 1, 2]
    assert cfis.select_tiles_in_area(numbers, 358, 1, 361.5, -1).tolist() == [0, 1, 2]
    assert cfis.select_tiles_in_area(numbers, 0.5, -1, 6, 1).tolist() == [2, 3]
    assert cfis.select_tiles_in_area(numbers, 0, -10, 360, 10).tolist() == list(range(6))
    assert cfis.select_tiles_in_area(numbers, 100, -1, 110, 1).size == 0


# --- names ------------------------------------------------------------------------------

def test_file_names_and_numbers():
    assert cfis.tile_file_name(270, 283) == "CFIS.270.283.r.fits"
    assert cfis.tile_file_name(5, 283, "weight") == "CFIS.005.283.r.weight.fits"
    assert cfis.tile_file_name(270, 283, "weight.fz", "u") == "CFIS.270.283.u.weight.fits.fz"
    assert cfis.exposure_file_name("2000001") == "2000001p.fits.fz"
    assert cfis.exposure_file_name(2000001, "exposure_flag.fz") == "2000001p.flag.fits.fz"
    assert cfis.exposure_file_name("2000001", "exposure_weight") == "2000001p.weight.fits"
    for name in ("CFIS.270.283.r.fits", "/a/b/CFIS.270.283.r.weight.fits.fz",
                 "CFIS_image-270-283.fits", "270.283", "270-283"):
        assert cfis.tile_number_from_name(name) == (270, 283)
    assert cfis.tile_number_from_name("2000001p.fits.fz") is None
    with pytest.raises(cfis.CfisError, match="tile type 'flag'"):
        cfis.tile_file_name(1, 2, "flag")


@pytest.mark.parametrize("name,kind,link", [
    ("CFIS.270.283.r.fits", "tile", "CFIS_image-270-283.fits"),
    ("CFIS.270.283.r.weight.fits.fz", "tile", "CFIS_weight-270-283.fits.fz"),
    ("CFIS.001.240.u.weight.fits", "tile", "CFIS_weight-001-240.fits"),
    ("CFIS.270.283.r.flag.fits", "tile", None),
    ("2000001p.fits.fz", "exposure", "image-2000001.fits.fz"),
    ("2000001p.weight.fits.fz", "exposure", "weight-2000001.fits.fz"),
    ("2000001p.flag.fits.fz", "exposure", "flag-2000001.fits.fz"),
    ("2000001p.flag.fits", "exposure", "flag-2000001.fits"),
    ("2000001p.fits.fz", "tile", None),
    ("CFIS.270.283.r.fits", "exposure", None),
    ("2000001p.cat", "exposure", None),
    ("notes.txt", "tile", None),
])
def test_pipeline_link_names(name, kind, link):
    assert cfis.pipeline_link_name(name, kind) == link


def test_link_name_bases():
    assert cfis.pipeline_link_name("CFIS.270.283.r.fits", "tile", "img", "wgt") == (
        "img-270-283.fits")
    assert cfis.pipeline_link_name("CFIS.270.283.r.weight.fits.fz", "tile", "img", "wgt") == (
        "wgt-270-283.fits.fz")


# --- HISTORY ------------------------------------------------------------------------------

def _tile_header(exposures, extra=()):
    header = fits.Header()
    header["OBJECT"] = "CFIS 270.283"
    for card in extra:
        header["HISTORY"] = card
    for exp in exposures:
        header["HISTORY"] = f"input exposure {exp}p.fits.fz"
    return header


def test_history_parsing_order_without_repeats():
    header = _tile_header(["2000003", "2000001", "2000003", "2145678"],
                          extra=["SWarp 2.38 resampling", "no exposure here"])
    assert cfis.exposures_from_header(header) == ["2000003", "2000001", "2145678"]
    assert cfis.exposures_from_header(fits.Header()) == []
    # the old home of the parser still works and is the same function
    from shapepipe.modules.sextractor.postprocess import HISTORY_EXP_RE, exposures_from_header

    assert exposures_from_header is cfis.exposures_from_header
    assert HISTORY_EXP_RE is cfis.HISTORY_EXP_RE


def test_exposures_of_plain_and_compressed_tiles(tmp_path):
    plain = tmp_path / "CFIS.270.283.r.fits"
    fits.PrimaryHDU(np.zeros((4, 4), np.float32), header=_tile_header(["2000001"])).writeto(plain)
    packed = tmp_path / "CFIS.270.283.r.weight.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
        np.ones((4, 4), np.float32), header=_tile_header(["2000002", "2000001"]))]).writeto(packed)
    assert cfis.exposures_of_tile(str(plain)) == ["2000001"]
    assert cfis.exposures_of_tile(str(packed)) == ["2000002", "2000001"]
    broken = tmp_path / "broken.fits"
    broken.write_bytes(b"not a FITS file at all" * 10)
    with pytest.raises(cfis.CfisError, match="broken.fits: cannot read the tile header"):
        cfis.exposures_of_tile(str(broken))


# --- cfis_field_select ----------------------------------------------------------------------

def _run(module, argv, capsys):
    code = module.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tile_list(tmp_path):
    path = tmp_path / "tiles_r.txt"
    path.write_text("# CFIS r-band tiles\n"
                    "CFIS.270.283.r.fits\nCFIS.270.283.r.weight.fits.fz\n"
                    "CFIS.271.283.r.fits\nCFIS.271.283.r.weight.fits.fz\n"
                    "CFIS.270.284.u.fits\n\n"
                    "CFIS.000.180.r.fits\n"
                    "355.300\n")
    return path


def test_field_select_position(tile_list, capsys):
    assert _run(field_select, ["-i", str(tile_list), "--coord", "216.87deg_51.50deg",
                               "-t", "tile"], capsys) == (0, "CFIS.270.283.r.fits\n", "")
    code, out, _ = _run(field_select, ["-i", str(tile_list), "--coord", "216.87deg_51.5deg",
                                       "-t", "weight"], capsys)
    assert (code, out) == (0, "CFIS.270.283.r.weight.fits.fz\n")
    # RA = 359.9 at the equator is tile 720 = 0; a bare ID in the list gives a file name
    assert _run(field_select, ["-i", str(tile_list), "--coord", "359.9_0", "-t", "tile"],
                capsys)[:2] == (0, "CFIS.000.180.r.fits\n")
    assert _run(field_select, ["-i", str(tile_list), "--coord", "355_60.1", "-t", "tile"],
                capsys)[:2] == (0, "CFIS.355.300.r.fits\n")
    assert _run(field_select, ["-i", str(tile_list), "--coord", "14h27m29s_51d30m", "-t",
                               "tile", "--out_ID_only"], capsys)[:2] == (0, "270.283\n")


def test_field_select_area_and_output_file(tile_list, tmp_path, capsys):
    out_file = tmp_path / "sel.txt"
    code, out, _ = _run(field_select, ["-i", str(tile_list), "--coord", "216_51_218.5_52",
                                       "-t", "tile", "-o", str(out_file)], capsys)
    assert (code, out) == (0, "")
    assert out_file.read_text() == "CFIS.270.283.r.fits\nCFIS.271.283.r.fits\n"
    # an area across RA = 0 (RA1 > RA2)
    code, out, _ = _run(field_select, ["-i", str(tile_list), "--area", "358_-1_2_1", "-t",
                                       "tile"], capsys)
    assert (code, out) == (0, "CFIS.000.180.r.fits\n")


def test_field_select_outside_the_survey(tile_list, capsys):
    code, out, err = _run(field_select, ["-i", str(tile_list), "--coord", "10deg_51.5deg",
                                         "-t", "tile"], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "outside the tiles of" in err and "012.283" in err
    code, _, err = _run(field_select, ["-i", str(tile_list), "--coord", "100_-10_110_-5"],
                        capsys)
    assert code == 1 and err.count("\n") == 1 and "no tile file" in err


@pytest.mark.parametrize("argv,message", [
    (["--coord", "10deg_95deg"], "Dec = 95 deg is outside"),
    (["--coord", "10deg"], "expected RA_DEC or RA1_DEC1_RA2_DEC2"),
    (["--coord", "1_2", "-t", "exposure"], "-t exposure: with --coord expected one of"),
    (["--tile", "-t", "tile"], "-t tile: with --tile expected one of"),
])
def test_field_select_bad_arguments(tile_list, capsys, argv, message):
    code, out, err = _run(field_select, ["-i", str(tile_list)] + argv, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err


def test_field_select_unreadable_input(tmp_path, capsys):
    code, _, err = _run(field_select, ["-i", str(tmp_path / "nope.txt"), "--coord", "1_2"],
                        capsys)
    assert code == 2 and err.count("\n") == 1 and "nope.txt: no such file" in err
    binary = tmp_path / "list.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    code, _, err = _run(field_select, ["-i", str(binary), "--coord", "1_2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot read the tile list" in err


def test_field_select_exposures_of_tiles(tmp_path, capsys):
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    image = np.zeros((4, 4), np.float32)
    fits.PrimaryHDU(image, header=_tile_header(["2000002", "2000001"])).writeto(
        tiles / "CFIS.270.283.r.fits")
    fits.PrimaryHDU(image, header=_tile_header(["2000003", "2000002"])).writeto(
        tiles / "CFIS.271.283.r.fits")
    # weights, other bands and other files are not read
    (tiles / "CFIS.270.283.r.weight.fits.fz").write_bytes(b"junk")
    (tiles / "CFIS.270.283.u.fits").write_bytes(b"junk")
    (tiles / "readme.txt").write_text("hello")
    for kind, suffix in [("exposure", ".fits.fz"), ("exposure_weight.fz", ".weight.fits.fz"),
                         ("exposure_flag.fz", ".flag.fits.fz"), ("exposure_flag", ".flag.fits")]:
        code, out, _ = _run(field_select, ["-i", str(tiles), "--tile", "-t", kind], capsys)
        assert code == 0
        assert out.split() == [f"{e}p{suffix}" for e in ("2000002", "2000001", "2000003")]
    # one tile file
    assert _run(field_select, ["-i", str(tiles / "CFIS.271.283.r.fits"), "--tile", "-t",
                               "exposure"], capsys)[1].split() == ["2000003p.fits.fz",
                                                                   "2000002p.fits.fz"]


def test_field_select_tile_errors(tmp_path, capsys):
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(tmp_path / "CFIS.270.283.r.fits")
    code, _, err = _run(field_select, ["-i", str(tmp_path), "--tile", "-t", "exposure"], capsys)
    assert code == 1 and "no exposure named in the HISTORY" in err
    (tmp_path / "CFIS.271.283.r.fits").write_bytes(b"\0" * 100)
    code, _, err = _run(field_select, ["-i", str(tmp_path), "--tile", "-t", "exposure"], capsys)
    assert code == 2 and err.count("\n") == 1 and "CFIS.271.283.r.fits: cannot read" in err


# --- cfis_create_image_links -------------------------------------------------------------

RAW_NAMES = ["2000001p.fits.fz", "2000001p.weight.fits.fz", "2000001p.flag.fits.fz",
             "2000002p.fits.fz", "2000002p.weight.fits.fz", "2000002p.flag.fits.fz",
             "CFIS.270.283.r.fits", "CFIS.270.283.r.weight.fits.fz", "tiles_r.txt"]


@pytest.fixture
def raw_dir(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in RAW_NAMES:
        (raw / name).write_text(name)
    return raw


def test_links_for_exposures_and_tiles(raw_dir, tmp_path, capsys):
    out = tmp_path / "links"
    code, _, err = _run(create_links, ["-i", str(raw_dir), "-o", str(out), "-t", "exposure"],
                        capsys)
    assert (code, err) == (0, "")
    expected = {f"{k}-{e}.fits.fz": f"{e}p{s}.fits.fz" for e in ("2000001", "2000002")
                for k, s in (("image", ""), ("weight", ".weight"), ("flag", ".flag"))}
    assert sorted(os.listdir(out)) == sorted(expected)
    for link, target in expected.items():
        assert os.path.islink(out / link)
        assert os.readlink(out / link) == str(raw_dir.resolve() / target)
        assert (out / link).read_text() == target
    tiles = tmp_path / "tiles"
    code, _, _ = _run(create_links, ["-i", str(raw_dir), "-o", str(tiles), "-t", "tile",
                                     "--image_base_new", "CFIS_image",
                                     "--weight_base_nw", "CFIS_wgt"], capsys)
    assert code == 0
    assert sorted(os.listdir(tiles)) == ["CFIS_image-270-283.fits", "CFIS_wgt-270-283.fits.fz"]
    assert (tiles / "CFIS_wgt-270-283.fits.fz").read_text() == "CFIS.270.283.r.weight.fits.fz"


def test_existing_link_aborts_before_any_link(raw_dir, tmp_path, capsys):
    out = tmp_path / "links"
    out.mkdir()
    # the last link in input order exists already (a dangling link counts too)
    os.symlink(str(tmp_path / "gone"), out / "weight-2000002.fits.fz")
    code, _, err = _run(create_links, ["-i", str(raw_dir), "-o", str(out), "-t", "exposure"],
                        capsys)
    assert code == 2 and err.count("\n") == 1
    assert "weight-2000002.fits.fz already exists" in err and "no link was made" in err
    assert os.listdir(out) == ["weight-2000002.fits.fz"]


def test_links_bad_inputs(raw_dir, tmp_path, capsys):
    code, _, err = _run(create_links, ["-i", str(tmp_path / "nope"), "-o", str(tmp_path / "o"),
                                       "-t", "tile"], capsys)
    assert code == 2 and "nope: not a directory" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(create_links, ["-i", str(empty), "-o", str(tmp_path / "o"), "-t",
                                       "exposure"], capsys)
    assert code == 1 and "no exposure file" in err and not os.path.exists(tmp_path / "o")
    # two bands of one tile would share a link name
    (raw_dir / "CFIS.270.283.u.fits").write_text("u")
    code, _, err = _run(create_links, ["-i", str(raw_dir), "-o", str(tmp_path / "o"), "-t",
                                       "tile"], capsys)
    assert code == 2 and "would both be linked as CFIS_image-270-283.fits" in err
    assert not os.path.exists(tmp_path / "o")


# --- the tutorial's preparation on the simulated survey -------------------------------------

def _hashes(root):
    import hashlib

    out = {}
    for folder, _, files in os.walk(root):
        if os.path.relpath(folder, root).split(os.sep)[0] == "raw":
            continue
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return out


@pytest.mark.slow
def test_config_exp_runs_on_links_of_cfis_names(tmp_path, monkeypatch, capsys):
    """--cfis-names writes raw/ and nothing else; field selection, exposures of the tile,
    links, then example/config_exp.ini's split_exp and merge_headers on the links."""
    import shutil
    import sqlite3

    from shapepipe.run import main
    from shapepipe.sim import make_survey, tiny_params
    from shapepipe.sim.survey import write_cfis_names

    sim = tmp_path / "sim"
    params = tiny_params()
    make_survey(str(sim), seed=1, params=params, cfis_names=True)
    raw = sim / "raw"
    assert sorted(os.listdir(raw)) == sorted(RAW_NAMES[:-1] + ["tiles_r.txt"])
    assert (raw / "tiles_r.txt").read_text() == (
        "CFIS.270.283.r.fits\nCFIS.270.283.r.weight.fits.fz\n")
    for exp in ("2000001", "2000002"):
        for kind, suffix in (("image", ""), ("weight", ".weight"), ("flag", ".flag")):
            assert (raw / f"{exp}p{suffix}.fits.fz").read_bytes() == (
                sim / "exposures" / f"{kind}-{exp}.fits.fz").read_bytes()
    assert (raw / "CFIS.270.283.r.fits").read_bytes() == (
        sim / "tiles" / "CFIS_image-270-283.fits").read_bytes()
    weight = fits.getdata(sim / "tiles" / "CFIS_weight-270-283.fits")
    with fits.open(raw / "CFIS.270.283.r.weight.fits.fz") as hdul:
        packed = hdul[1].data
        assert cfis.exposures_from_header(hdul[1].header) == ["2000001", "2000002"]
    assert np.array_equal(packed == 0, weight == 0)
    np.testing.assert_allclose(packed, weight, rtol=0, atol=1e-5 * np.median(weight[weight > 0]))
    # raw/ is all --cfis-names adds, and it is reproducible
    before = _hashes(sim)
    raw_before = {n: (raw / n).read_bytes() for n in os.listdir(raw)}
    shutil.rmtree(raw)
    write_cfis_names(params, 1, str(sim))
    assert _hashes(sim) == before
    assert {n: (raw / n).read_bytes() for n in os.listdir(raw)} == raw_before

    # the tutorial's steps: the tile at a position, its exposures, links
    ra, dec = cfis.tile_center(270, 283)
    assert _run(field_select, ["-i", str(raw / "tiles_r.txt"), "--coord",
                               f"{ra}deg_{dec}deg", "-t", "tile"], capsys)[:2] == (
        0, "CFIS.270.283.r.fits\n")
    assert _run(field_select, ["-i", str(raw), "--tile", "-t", "exposure"], capsys)[:2] == (
        0, "2000001p.fits.fz\n2000002p.fits.fz\n")
    data = tmp_path / "sp_in"
    assert _run(create_links, ["-i", str(raw), "-o", str(data / "exposures"), "-t",
                               "exposure"], capsys)[0] == 0
    os.symlink(sim / "star_cat", data / "star_cat")

    # example/config_exp.ini as shipped (no N_HDU), its first two modules
    example = os.path.join(os.path.dirname(__file__), "..", "example", "config_exp.ini")
    with open(example, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("MODULE ="))
    end = start + 1
    while lines[end].startswith((" ", "\t")):
        end += 1
    lines[start:end] = ["MODULE = split_exp_runner, merge_headers_runner"]
    assert not any(line.strip().startswith("N_HDU") for line in lines)
    config = tmp_path / "config_exp.ini"
    config.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("SP_DATA", str(data))
    monkeypatch.setenv("SP_RUN", str(tmp_path / "runs"))
    assert main(["-c", str(config), "-q"]) == 0
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    split = run_dir / "split_exp_runner" / "output"
    expected = [f"{k}-{e}-{c}.fits" for k in ("image", "weight", "flag")
                for e in ("2000001", "2000002") for c in range(2)]
    assert sorted(os.listdir(split)) == sorted(
        expected + ["headers-2000001.npy", "headers-2000002.npy"])
    for kind, exp in (("image", "2000001"), ("flag", "2000002"), ("weight", "2000002")):
        with fits.open(sim / "exposures" / f"{kind}-{exp}.fits.fz") as src:
            for ccd in range(2):
                np.testing.assert_array_equal(
                    fits.getdata(split / f"{kind}-{exp}-{ccd}.fits"), src[ccd + 1].data)
    sqlite = run_dir / "merge_headers_runner" / "output" / "log_exp_headers.sqlite"
    with sqlite3.connect(sqlite) as db:
        keys = sorted(row[0] for row in db.execute("SELECT key FROM unnamed"))
    assert keys == ["2000001", "2000002"]
