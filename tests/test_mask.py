"""Tests of the mask module: templates, rasterisation, star/border/DSO/external masks, runner."""

import logging
import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from matplotlib.path import Path

from shapepipe.modules.mask import (
    MaskConfig,
    MaskConfigError,
    border_mask,
    fill_polygons,
    make_mask,
    read_star_catalogue,
    read_template,
)
from shapepipe.modules.mask.regions import place_template
from shapepipe.modules.mask_runner import mask_runner
from shapepipe.pipeline.config import ShapePipeConfig

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "example", "mask")
SCALE = 0.187 / 3600
SHAPE = (700, 800)  # ny, nx
RA0, DEC0 = 216.8654, 51.5


def header():
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = RA0, DEC0
    h["CRPIX1"], h["CRPIX2"] = 400.5, 350.5
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -SCALE, 0.0, 0.0, SCALE
    h["RADESYS"] = "ICRS"
    h["SATURATE"] = 60000.0
    return h


def sky(x, y):
    """Sky position of 0-based pixel coordinates."""
    ra, dec = WCS(header()).all_pix2world([x], [y], 0)
    return float(ra[0]), float(dec[0])


# Bright (saturated) star at (250, 300), faint star at (600, 500): 0-based pixels.
BRIGHT, FAINT = (250.0, 300.0), (600.0, 500.0)
BRIGHT_MAG, FAINT_MAG = 12.0, 20.0


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    """A CCD with one saturated and one faint Moffat star (GalSim), sky and noise."""
    import galsim

    d = tmp_path_factory.mktemp("mask_img")
    image = galsim.ImageF(SHAPE[1], SHAPE[0], scale=1.0)
    for (x, y), mag in ((BRIGHT, BRIGHT_MAG), (FAINT, FAINT_MAG)):
        psf = galsim.Moffat(beta=3.5, fwhm=3.7, flux=10 ** (-0.4 * (mag - 30.0)))
        # galsim images are 1-based
        psf.drawImage(image, center=galsim.PositionD(x + 1, y + 1), add_to_image=True)
    data = image.array + 170.0
    data += np.random.default_rng(5).normal(0, 10, SHAPE)
    data = np.minimum(data, 60000.0).astype(np.float32)
    assert data[int(BRIGHT[1]), int(BRIGHT[0])] == 60000.0  # saturated
    path = str(d / "image-2000001-0.fits")
    fits.PrimaryHDU(data, header=header()).writeto(path)
    return path


def star_catalogue(path, names=("RA", "DEC", "MAG"), extra=()):
    rows = [(*sky(*BRIGHT), BRIGHT_MAG), (*sky(*FAINT), FAINT_MAG), *extra]
    table = Table(rows=rows, names=names)
    table.write(path, overwrite=True)
    return path


def write_config(path, **sections):
    text = []
    for section, keys in sections.items():
        text.append(f"[{section}]")
        text.extend(f"{k} = {v}" for k, v in keys.items())
    path.write_text("\n".join(text) + "\n")
    return str(path)


def star_config(tmp_path, halo_flag=2, spike_flag=128, **extra):
    sections = {
        "HALO_PARAMETERS": dict(HALO_MAKE=True, HALO_MASKMODEL_PATH=f"{EXAMPLE}/halo.reg",
                                HALO_MAG_LIM=15.0, HALO_SCALE_FACTOR=0.05, HALO_MAG_PIVOT=13.8,
                                HALO_FLAG_VALUE=halo_flag),
        "SPIKE_PARAMETERS": dict(SPIKE_MAKE=True, SPIKE_MASKMODEL_PATH=f"{EXAMPLE}/spike.reg",
                                 SPIKE_MAG_LIM=18.0, SPIKE_SCALE_FACTOR=0.3,
                                 SPIKE_MAG_PIVOT=13.8, SPIKE_FLAG_VALUE=spike_flag),
    }
    sections.update(extra)
    return write_config(tmp_path / "config.mask", **sections)


# --- rasterisation and templates ------------------------------------------------------------

def test_fill_polygons_matches_matplotlib_on_random_polygons():
    rng = np.random.default_rng(3)
    shape = (120, 150)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    points = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
    polys = []
    for _ in range(40):
        n = int(rng.integers(3, 12))
        centre = rng.uniform(-20, 170, 2)
        angle = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(2, 60, n)  # star-shaped, often concave
        poly = np.column_stack([centre[0] + radius * np.cos(angle),
                                centre[1] + radius * np.sin(angle)])
        polys.append(poly)
        ref = Path(poly).contains_points(points).reshape(shape)
        np.testing.assert_array_equal(fill_polygons([poly], shape), ref)
    union = np.zeros(shape, bool)
    for poly in polys:
        union |= Path(poly).contains_points(points).reshape(shape)
    np.testing.assert_array_equal(fill_polygons(polys, shape), union)


def test_fill_polygons_long_and_short_intervals_agree(monkeypatch):
    from shapepipe.modules.mask import raster

    rng = np.random.default_rng(8)
    shape = (97, 151)
    polys = rng.uniform(-10, 160, (30, 7, 2))
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    points = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
    union = np.zeros(shape, bool)
    for poly in polys:
        union |= Path(poly).contains_points(points).reshape(shape)
    for threshold in (3, 10**9):  # slices for (nearly) every interval / for none
        monkeypatch.setattr(raster, "_LONG_INTERVAL", threshold)
        np.testing.assert_array_equal(fill_polygons(polys, shape), union)
    monkeypatch.setattr(raster, "_CHUNK", 50)  # many small chunks of intervals
    np.testing.assert_array_equal(fill_polygons(polys, shape), union)
    assert union.any() and not union.all()


def test_fill_polygon_rectangle_pixel_centres():
    # x in [1.5, 4.5], y in [0.2, 2.9]: columns 2..4, rows 1..2
    mask = fill_polygons([[(1.5, 0.2), (4.5, 0.2), (4.5, 2.9), (1.5, 2.9)]], (5, 6))
    expected = np.zeros((5, 6), bool)
    expected[1:3, 2:5] = True
    np.testing.assert_array_equal(mask, expected)


def test_read_templates(tmp_path):
    halo = read_template(f"{EXAMPLE}/halo.reg")
    assert len(halo) == 1 and halo[0].shape == (32, 2)
    np.testing.assert_allclose(np.hypot(*halo[0].T), 80.0, atol=0.01)
    spike = read_template(f"{EXAMPLE}/spike.reg")
    assert len(spike) == 4
    # ShapePipe's two-column model files are read too
    two = tmp_path / "model.reg"
    two.write_text("10 0\n0 10\n-10 0\n0 -10\n")
    np.testing.assert_array_equal(read_template(str(two))[0][1], [0.0, 10.0])
    bad = tmp_path / "bad.reg"
    bad.write_text("image\ncircle(0,0,10)\n")
    with pytest.raises(ValueError, match=r"bad.reg:2: unsupported region 'circle"):
        read_template(str(bad))


def test_template_scaling():
    template = [np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, 0.0]])]
    placed = place_template(template, np.array([100.0]), np.array([50.0]), np.array([2.5]))
    np.testing.assert_allclose(placed[0][0], [[125, 50], [100, 75], [75, 50]])


# --- the mask itself --------------------------------------------------------------------------

def test_saturated_star_gets_halo_and_spikes_faint_does_not(tmp_path, image_path):
    cat = star_catalogue(str(tmp_path / "stars.fits"))
    out = str(tmp_path / "pipeline_flag-2000001-0.fits")
    summary = make_mask(image_path, star_config(tmp_path), out, stars=cat)
    flag = fits.getdata(out)
    assert flag.dtype.kind == "i" and flag.shape == SHAPE
    bx, by = int(BRIGHT[0]), int(BRIGHT[1])
    # star centre: both masks
    assert flag[by, bx] == 2 | 128
    # halo radius at mag 12: 80 * (1 - 0.05 * (12 - 13.8)) = 87.2 px (polygon: >= 86.0)
    assert flag[by + 60, bx + 60] == 2          # diagonal, inside the halo, off the spikes
    assert flag[by + 70, bx - 45] == 2
    assert flag[by + 70, bx + 70] == 0          # diagonal, outside the halo
    # spike length at mag 12: 200 * (1 - 0.3 * (12 - 13.8)) = 308 px along the axes
    for dx, dy in ((200, 0), (-200, 0), (0, 200), (0, -200 + 0)):
        assert flag[by + dy, bx + dx] == 128, (dx, dy)
    assert flag[by, bx + 300] == 128 and flag[by, bx + 315] == 0
    assert flag[by + 5, bx + 200] == 0          # spike is thin there (width ~ 6 px)
    # the faint star (mag 20): spike scale 1 - 0.3 * 6.2 < 0, halo beyond HALO_MAG_LIM
    fx, fy = int(FAINT[0]), int(FAINT[1])
    assert not flag[fy - 20 : fy + 21, fx - 20 : fx + 21].any()
    assert summary["n_star_halo"] == 1 and summary["n_star_spike"] == 1
    # only the configured bits appear
    assert set(np.unique(flag)) <= {0, 2, 128, 130}
    # output has the image WCS
    out_header = fits.getheader(out)
    assert WCS(out_header).wcs.compare(WCS(header()).wcs)
    assert out_header["MASK_HAL"] == 2 and out_header["MASK_SPK"] == 128


def test_bits_are_as_configured(tmp_path, image_path):
    cat = star_catalogue(str(tmp_path / "stars.fits"))
    config = star_config(tmp_path, halo_flag=1024, spike_flag=4096,
                         BORDER_PARAMETERS=dict(BORDER_MAKE=True, BORDER_WIDTH=3,
                                                BORDER_FLAG_VALUE=512))
    out = str(tmp_path / "f.fits")
    make_mask(image_path, config, out, stars=cat)
    flag = fits.getdata(out)
    bx, by = int(BRIGHT[0]), int(BRIGHT[1])
    assert flag[by, bx] == 1024 | 4096
    assert flag[0, 400] == 512
    assert set(np.unique(flag)) <= {0, 512, 1024, 4096, 1024 | 4096, 512 | 4096}
    assert flag.dtype.kind == "i" and flag.dtype.itemsize == 2
    # a bit above 2**15 needs 32-bit flags
    config = star_config(tmp_path, halo_flag=1 << 16)
    make_mask(image_path, config, out, stars=cat)
    flag = fits.getdata(out)
    assert flag.dtype.itemsize == 4 and flag[by, bx] == (1 << 16) | 128


def test_border_width_is_exact(tmp_path, image_path):
    width = 7
    config = write_config(tmp_path / "c.mask", BORDER_PARAMETERS=dict(
        BORDER_MAKE=True, BORDER_WIDTH=width, BORDER_FLAG_VALUE=4))
    out = str(tmp_path / "f.fits")
    make_mask(image_path, config, out)
    flag = fits.getdata(out)
    ny, nx = SHAPE
    expected = np.zeros(SHAPE, dtype=bool)
    expected[:width] = expected[ny - width :] = True
    expected[:, :width] = expected[:, nx - width :] = True
    np.testing.assert_array_equal(flag == 4, expected)
    assert flag[width, width] == 0 and flag[width - 1, nx // 2] == 4
    assert not border_mask((10, 10), 0).any()


def test_external_flags_are_ored(tmp_path, image_path):
    ext = np.zeros(SHAPE, dtype=np.int16)
    ext[0, 0] = 4          # in the border: 4 | 8
    ext[100, 100] = 3      # alone: kept as is
    ext_path = str(tmp_path / "flag-2000001-0.fits")
    fits.PrimaryHDU(ext).writeto(ext_path)
    config = write_config(tmp_path / "c.mask", BORDER_PARAMETERS=dict(
        BORDER_MAKE=True, BORDER_WIDTH=2, BORDER_FLAG_VALUE=8))
    out = str(tmp_path / "f.fits")
    make_mask(image_path, config, out, ext_flag_path=ext_path)
    flag = fits.getdata(out)
    assert flag[0, 0] == 12 and flag[100, 100] == 3 and flag[1, 50] == 8
    # EF_MAKE = False ignores the external flags
    config = write_config(tmp_path / "c2.mask", EXTERNAL_FLAG=dict(EF_MAKE=False))
    make_mask(image_path, config, out, ext_flag_path=ext_path)
    assert not fits.getdata(out).any()
    bad = str(tmp_path / "small.fits")
    fits.PrimaryHDU(np.zeros((5, 5), np.int16)).writeto(bad)
    with pytest.raises(ValueError, match="shape"):
        make_mask(image_path, write_config(tmp_path / "c3.mask"), out, ext_flag_path=bad)


def test_messier_ngc_discs(tmp_path, image_path):
    cx, cy = 400.0, 350.0
    ra, dec = sky(cx, cy)
    cat = tmp_path / "dso.ecsv"
    table = Table(rows=[("Mtest", ra, dec, 0.5, 0.3), ("Far", ra + 5, dec, 60.0, 60.0)],
                  names=("name", "ra", "dec", "size_X", "size_Y"))
    table.write(str(cat), format="ascii.ecsv")
    config = write_config(tmp_path / "c.mask", MESSIER_PARAMETERS=dict(
        MESSIER_MAKE=True, MESSIER_CAT_PATH=str(cat), MESSIER_SIZE_PLUS=0.1,
        MESSIER_FLAG_VALUE=16))
    out = str(tmp_path / "f.fits")
    summary = make_mask(image_path, config, out)
    flag = fits.getdata(out)
    radius = 0.5 * 1.1 * 60 / 0.187  # px
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    np.testing.assert_array_equal(flag == 16, (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2)
    assert summary["messier_objects"] == ["Mtest"]
    # the shipped catalogues load (no object near the simulated field)
    config = write_config(tmp_path / "c2.mask", NGC_PARAMETERS=dict(
        NGC_MAKE=True, NGC_CAT_PATH=f"{EXAMPLE}/ngc_cat.ecsv", NGC_FLAG_VALUE=32))
    assert make_mask(image_path, config, out)["ngc_objects"] == []


def test_dso_catalogue_npy_structured(tmp_path):
    from shapepipe.modules.mask import read_dso_catalogue

    array = np.array([("M99", 184.7, 14.4, 5.4, 4.7)],
                     dtype=[("name", "U8"), ("ra", "f8"), ("dec", "f8"), ("size_X", "f8"),
                            ("size_Y", "f8")])
    np.save(str(tmp_path / "m.npy"), array)
    ra, dec, size, names = read_dso_catalogue(str(tmp_path / "m.npy"))
    assert names == ["M99"] and size[0] == pytest.approx(5.4 / 60)
    np.save(str(tmp_path / "p.npy"), np.array([{"ra": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        read_dso_catalogue(str(tmp_path / "p.npy"))


def test_missing_data(tmp_path):
    data = np.ones((50, 60), np.float32)
    data[:40] = 0.0   # 80 % missing
    path = str(tmp_path / "img.fits")
    fits.PrimaryHDU(data, header=header()).writeto(path)
    md = dict(MD_MAKE=True, MD_THRESH_FLAG=0.3, MD_THRESH_REMOVE=0.75, MD_REMOVE=True,
              MD_FLAG_VALUE=256)
    config = write_config(tmp_path / "c.mask", MD_PARAMETERS=md, BORDER_PARAMETERS=dict(
        BORDER_MAKE=True, BORDER_WIDTH=2, BORDER_FLAG_VALUE=8))
    out = str(tmp_path / "f.fits")
    summary = make_mask(path, config, out)
    assert summary["md_ratio"] == pytest.approx(0.8)
    assert np.all(fits.getdata(out) == 256)   # removed: whole image flagged, border skipped
    assert fits.getheader(out)["MD_FLAG"] is True


def test_region_files_and_individual_masks(tmp_path, image_path):
    cat = star_catalogue(str(tmp_path / "stars.fits"))
    config = star_config(tmp_path, OTHER=dict(KEEP_REG_FILE=True, KEEP_INDIVIDUAL_MASK=True))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    make_mask(image_path, config, str(out_dir / "pipeline_flag-2000001-0.fits"), stars=cat,
              number="-2000001-0")
    names = sorted(os.listdir(out_dir))
    assert names == ["halo-2000001-0.reg", "halo_flag-2000001-0.fits",
                     "pipeline_flag-2000001-0.fits", "spike-2000001-0.reg",
                     "spike_flag-2000001-0.fits"]
    text = (out_dir / "halo-2000001-0.reg").read_text()
    polys = [line for line in text.splitlines() if line.startswith("polygon(")]
    assert len(polys) == 1
    coords = np.array(polys[0][8 : polys[0].index(")")].split(","), float).reshape(-1, 2)
    # ds9 image coordinates are 1-based: the polygon is centred on the star + 1
    np.testing.assert_allclose(coords.mean(axis=0), np.array(BRIGHT) + 1, atol=0.01)
    assert len([ln for ln in (out_dir / "spike-2000001-0.reg").read_text().splitlines()
                if ln.startswith("polygon(")]) == 4
    halo_only = fits.getdata(str(out_dir / "halo_flag-2000001-0.fits"))
    assert set(np.unique(halo_only)) == {0, 2}


def test_config_errors(tmp_path, image_path):
    config = write_config(tmp_path / "c.mask", BORDER_PARAMETERS=dict(
        BORDER_MAKE=True, BORDER_WIDTH="wide", BORDER_FLAG_VALUE=4))
    with pytest.raises(MaskConfigError, match=r"\[BORDER_PARAMETERS\] BORDER_WIDTH = 'wide'"):
        MaskConfig(config)
    config = write_config(tmp_path / "c.mask", HALO_PARAMETERS=dict(
        HALO_MAKE=True, HALO_MASKMODEL_PATH="nowhere.reg"))
    with pytest.raises(MaskConfigError, match="HALO_MASKMODEL_PATH = 'nowhere.reg': file not"):
        MaskConfig(config)
    # stars needed but no catalogue: a clear error
    with pytest.raises(ValueError, match="need a star catalogue"):
        make_mask(image_path, star_config(tmp_path), str(tmp_path / "f.fits"))


def test_example_config_reads():
    config = MaskConfig(f"{EXAMPLE}/config.mask")
    assert config.border == {"width": 20, "flag": 8}
    assert config.halo["flag"] == 64 and config.spike["flag"] == 128
    assert config.messier["flag"] == 16 and config.ngc["flag"] == 32
    assert config.external_flag and config.missing_data is None


def test_star_catalogue_columns(tmp_path):
    path = str(tmp_path / "gaia.csv")
    star_catalogue(path, names=("ra", "dec", "phot_g_mean_mag"))
    ra, dec, mag = read_star_catalogue(path, "RA", "Dec", "PHOT_G_MEAN_MAG")
    np.testing.assert_allclose(mag, [BRIGHT_MAG, FAINT_MAG])
    with pytest.raises(ValueError, match="no magnitude column 'MAG'"):
        read_star_catalogue(path)


# --- runner -----------------------------------------------------------------------------------

def _runner_config(tmp_path, text):
    ini = tmp_path / "run.ini"
    ini.write_text(text)
    config = ShapePipeConfig(str(ini))
    config.read(str(ini))
    return config


def test_runner_with_gaia_like_catalogue_and_prefix(tmp_path, image_path):
    cat = star_catalogue(str(tmp_path / "gaia.csv"), names=("ra", "dec", "phot_g_mean_mag"))
    mask_conf = star_config(tmp_path)
    weight = str(tmp_path / "weight-2000001-0.fits")
    fits.PrimaryHDU(np.ones(SHAPE, np.float32)).writeto(weight)
    config = _runner_config(tmp_path, f"""[MASK_RUNNER]
MASK_CONFIG_PATH = {mask_conf}
USE_EXT_FLAG = False
STAR_CAT_PATH = {cat}
STAR_CAT_RA_COL = ra
STAR_CAT_DEC_COL = dec
STAR_CAT_MAG_COL = phot_g_mean_mag
""")
    out = tmp_path / "out"
    out.mkdir()
    mask_runner([image_path, weight], {"output": str(out)}, "-2000001-0", config,
                "MASK_RUNNER", logging.getLogger("test"))
    flag = fits.getdata(str(out / "pipeline_flag-2000001-0.fits"))
    assert flag[int(BRIGHT[1]), int(BRIGHT[0])] == 130
    # too few inputs for USE_EXT_FLAG = True: one clear error naming the roles
    config = _runner_config(tmp_path, f"[MASK_RUNNER]\nMASK_CONFIG_PATH = {mask_conf}\n"
                                      "PREFIX = none\nUSE_EXT_STAR = True\n")
    with pytest.raises(ValueError, match=r"expected 4 input files \(image, weight, flag, star"):
        mask_runner([image_path, weight], {"output": str(out)}, "-2000001-0", config,
                    "MASK_RUNNER", logging.getLogger("test"))
    # the star catalogue as the job's last input; PREFIX none -> flag<number>.fits
    flag_in = str(tmp_path / "flag-2000001-0.fits")
    fits.PrimaryHDU(np.zeros(SHAPE, np.int16)).writeto(flag_in)
    cat2 = star_catalogue(str(tmp_path / "stars.fits"))
    mask_runner([image_path, weight, flag_in, cat2], {"output": str(out)}, "-2000001-0",
                config, "MASK_RUNNER", logging.getLogger("test"))
    assert fits.getdata(str(out / "flag-2000001-0.fits"))[int(BRIGHT[1]), int(BRIGHT[0])] == 130


def test_bad_mask_config_is_a_config_error_before_any_job(tmp_path, capsys):
    """A mistake in config.mask stops the run up front (exit 2), naming the file."""
    from shapepipe.run import main

    bad = tmp_path / "bad.mask"
    bad.write_text("[BORDER_PARAMETERS]\nBORDER_MAKE = maybe\n")
    data = tmp_path / "data"
    data.mkdir()
    for pattern in ("image", "weight", "flag"):
        (data / f"{pattern}-2000001-0.fits").write_text("not used")
    cfg = tmp_path / "c.ini"
    cfg.write_text(f"[EXECUTION]\nMODULE = mask_runner\n[FILE]\nINPUT_DIR = {data}\n"
                   f"OUTPUT_DIR = {tmp_path / 'out'}\n[MASK_RUNNER]\nMASK_CONFIG_PATH = {bad}\n")
    assert main(["-c", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert "[MASK_RUNNER]" in out and "bad.mask" in out
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
