"""Per-object fidelity of the sextractor module to source-extractor 2.25 on real sky images.

Both tools run on astropy's real test images (M13: a crowded DSS globular-cluster field;
comp.fits) with the same configuration; objects are matched by X_IMAGE/Y_IMAGE (identical
detections) and every object counts: no medians, no clean subsets. The thresholds are
issue 18's targets (XWIN within 0.1 px and FLAGS equal for >= 98% of the objects) or, where
higher, the agreement measured with SExtractor's deblending random numbers (bench/RESULTS.md,
"issue 18, third pass"), rounded down. The few objects still differing are blends.
"""

import os
import shutil
import subprocess

import numpy as np
import pytest
from astropy.io import fits
from scipy.spatial import cKDTree

from shapepipe.modules.sextractor import SexConfigError, run_sextractor
from shapepipe.modules.sextractor.catalog import ascii_text, printf_format
from shapepipe.modules.sextractor.classify import NNWError, class_star, read_nnw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONV = os.path.join(ROOT, "example", "sextractor", "default.conv")
ASTROPY_FITS = os.path.dirname(fits.__file__)
NNW = "/usr/share/source-extractor/default.nnw"
HAVE_SEX = shutil.which("source-extractor") is not None
needs_sex = pytest.mark.skipif(not HAVE_SEX, reason="source-extractor not installed")

SEX = """CATALOG_TYPE     FITS_LDAC
DETECT_MINAREA   5
DETECT_THRESH    3
ANALYSIS_THRESH  3
FILTER           Y
DEBLEND_NTHRESH  32
DEBLEND_MINCONT  0.005
CLEAN            Y
MASK_TYPE        CORRECT
WEIGHT_TYPE      NONE
PHOT_APERTURES   8
PHOT_AUTOPARAMS  2.5, 3.5
SATUR_LEVEL      1e9
MAG_ZEROPOINT    30.0
GAIN             1.0
PIXEL_SCALE      1.0
SEEING_FWHM      2.5
STARNNW_NAME     {nnw}
BACK_SIZE        64
BACK_FILTERSIZE  3
VERBOSE_TYPE     QUIET
"""
PARAMS = ["NUMBER", "X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE", "FLUX_AUTO",
          "FLUX_APER(1)", "FLUX_WIN", "FLUX_RADIUS", "FLAGS", "CLASS_STAR"]

# name, path under astropy/io/fits, HDU, and the per-object fractions required
# (XWIN within 0.1 px, FLAGS equal, CLASS_STAR within 0.05, FLUX_APER within 1%,
# FLUX_AUTO within 1%). Measured (DEBLEND_RANDOM SEXTRACTOR, the default): M13 0.9925,
# 1.0, 1.0, 1.0, 0.981; comp 0.9946, 0.9946, 0.9946, 0.9946, 0.989. With sep's own
# generator (SEP): M13 0.951, 0.996, 0.989, 0.963, 0.817; comp 0.978, 0.984, 0.995,
# 0.973, 0.935.
IMAGES = [
    ("m13", ("hdu", "compressed", "tests", "data", "m13.fits"), 0,
     {"win": 0.99, "flags": 0.99, "class": 0.99, "aper": 0.99, "auto": 0.98}),
    ("comp", ("tests", "data", "comp.fits"), 1,
     {"win": 0.99, "flags": 0.99, "class": 0.99, "aper": 0.99, "auto": 0.98}),
]


@pytest.fixture(scope="module", params=IMAGES, ids=[i[0] for i in IMAGES])
def real(request, tmp_path_factory):
    """Both catalogues of one real image, matched object by object."""
    if not HAVE_SEX:
        pytest.skip("source-extractor not installed")
    if not os.path.isfile(NNW):
        pytest.skip(f"{NNW} not installed")
    name, parts, ext, expected = request.param
    src = os.path.join(ASTROPY_FITS, *parts)
    if not os.path.isfile(src):
        pytest.skip(f"{src} not installed")
    work = tmp_path_factory.mktemp(f"real_{name}")
    image = str(work / f"{name}.fits")
    fits.writeto(image, fits.getdata(src, ext).astype(np.float32))
    sex = work / "real.sex"
    sex.write_text(SEX.format(nnw=NNW))
    param = work / "real.param"
    param.write_text("\n".join(PARAMS) + "\n")
    ref_cat, our_cat = str(work / "ref.cat"), str(work / "ours.cat")
    subprocess.run(["source-extractor", image, "-c", str(sex), "-PARAMETERS_NAME", str(param),
                    "-FILTER_NAME", CONV, "-CATALOG_NAME", ref_cat], check=True,
                   capture_output=True)
    run_sextractor(image, our_cat, str(sex), param_file=str(param), conv_file=CONV)
    ref = fits.getdata(ref_cat, "LDAC_OBJECTS")
    our = fits.getdata(our_cat, "LDAC_OBJECTS")
    dist, idx = cKDTree(np.c_[our["X_IMAGE"], our["Y_IMAGE"]]).query(
        np.c_[ref["X_IMAGE"], ref["Y_IMAGE"]])
    return {"name": name, "ref": ref, "our": our[idx], "matched": dist < 0.01,
            "expected": expected, "work": work, "image": image, "sex": str(sex)}


def _frac(ok, real):
    """Fraction of ALL SExtractor objects (unmatched ones count as failures)."""
    return np.sum(ok & real["matched"]) / len(real["ref"])


@needs_sex
def test_same_detections(real):
    assert len(real["ref"]) > 150
    assert real["matched"].mean() == 1.0
    assert abs(len(real["our"]) - len(real["ref"])) <= 2


@needs_sex
def test_windowed_positions_per_object(real):
    r, o = real["ref"], real["our"]
    d = np.hypot(o["XWIN_IMAGE"] - r["XWIN_IMAGE"], o["YWIN_IMAGE"] - r["YWIN_IMAGE"])
    assert _frac(d < 0.1, real) >= real["expected"]["win"]  # issue 18 target: 0.98
    # No run-away centroid where SExtractor's stays on the object.
    near = np.hypot(r["XWIN_IMAGE"] - r["X_IMAGE"], r["YWIN_IMAGE"] - r["Y_IMAGE"]) < 1
    assert not np.any((d > 1) & near)
    assert d.max() < 1.0  # measured 0.67 px (M13), 0.16 px (comp)


@needs_sex
def test_flags_per_object(real):
    r, o = real["ref"], real["our"]
    assert _frac(o["FLAGS"] == r["FLAGS"], real) >= real["expected"]["flags"]


@needs_sex
def test_class_star_per_object(real):
    r, o = real["ref"], real["our"]
    assert _frac(np.abs(o["CLASS_STAR"] - r["CLASS_STAR"]) < 0.05, real) >= \
        real["expected"]["class"]


@needs_sex
def test_fluxes_per_object(real):
    r, o = real["ref"], real["our"]

    def close(col, tol):
        a, b = np.ravel(o[col]), np.ravel(r[col])
        return np.abs(a - b) <= tol * np.abs(b)

    assert _frac(close("FLUX_APER", 0.01), real) >= real["expected"]["aper"]
    assert _frac(close("FLUX_AUTO", 0.01), real) >= real["expected"]["auto"]
    # Isolated objects (FLAGS 0 for both): AUTO, APER and WIN fluxes agree tightly.
    iso = (r["FLAGS"] == 0) & (o["FLAGS"] == 0)
    assert iso.sum() > 50
    for col in ("FLUX_AUTO", "FLUX_APER", "FLUX_WIN"):
        assert np.mean(close(col, 0.01)[iso]) >= 0.9, col


@needs_sex
@pytest.mark.parametrize("kind", ["ASCII_HEAD", "ASCII", "FITS_1.0"])
def test_catalog_types_as_the_binary_writes_them(real, kind):
    if real["name"] != "comp":
        pytest.skip("format checked on one image")
    work = real["work"]
    param = work / "fmt.param"
    param.write_text("NUMBER\nX_IMAGE\nFLUX_APER(2)\nFLAGS\nVIGNET(3,3)\nCLASS_STAR\n"
                     "MAG_AUTO\n")
    ref, ours = str(work / f"ref_{kind}.cat"), str(work / f"ours_{kind}.cat")
    subprocess.run(["source-extractor", real["image"], "-c", real["sex"], "-PARAMETERS_NAME",
                    str(param), "-FILTER_NAME", CONV, "-CATALOG_NAME", ref, "-CATALOG_TYPE",
                    kind, "-PHOT_APERTURES", "5,8"], check=True, capture_output=True)
    run_sextractor(real["image"], ours, real["sex"], param_file=str(param), conv_file=CONV,
                   overrides={"CATALOG_TYPE": kind, "PHOT_APERTURES": "5,8"})
    if kind == "FITS_1.0":
        with fits.open(ref) as a, fits.open(ours) as b:
            assert [h.name for h in b] == ["PRIMARY", "OBJECTS"]
            assert b[1].columns.names == a[1].columns.names
            assert [c.format for c in b[1].columns] == [c.format for c in a[1].columns]
            assert b[0].header["SEXNFIN"] == len(b[1].data)
        return
    ref_lines = open(ref).read().splitlines()
    our_lines = open(ours).read().splitlines()
    head = [line for line in ref_lines if line.startswith("#")]
    assert [line for line in our_lines if line.startswith("#")] == head
    assert len(head) == (7 if kind == "ASCII_HEAD" else 0)
    # Object lines: same text after the running number (objects are numbered in a
    # different order), for the objects whose values agree.
    body_r = {line[10:22]: line[10:] for line in ref_lines if not line.startswith("#")}
    body_o = {line[10:22]: line[10:] for line in our_lines if not line.startswith("#")}
    assert set(body_o) == set(body_r)
    same = np.mean([body_o[k] == body_r[k] for k in body_r])
    assert same > 0.83, same  # measured 0.849 (0.78 with sep's own deblending generator)
    widths = {len(v) for v in body_o.values()} | {len(v) for v in body_r.values()}
    assert len(widths) == 1


def test_ascii_formats_follow_sextractor():
    assert printf_format("X_IMAGE") == "%11.4f"
    assert printf_format("DELTA_J2000") == "%+11.7f"
    table = np.zeros(2, dtype=[("NUMBER", "i4"), ("FLUX_APER", "f4", (2,)), ("FLAGS", "i2")])
    table["NUMBER"] = [1, 2]
    table["FLUX_APER"] = [[1.5, 2.0], [1e8, -3.0]]
    table["FLAGS"] = [0, 19]
    text = ascii_text(table)
    lines = text.splitlines()
    assert lines[0] == "#   1 NUMBER                 Running object number" + " " * 37
    assert lines[1].startswith("#   2 FLUX_APER") and lines[1].endswith("[count]")
    assert lines[2].startswith("#   4 FLAGS")
    assert lines[3] == "         1          1.5            2   0"
    assert lines[4] == "         2        1e+08           -3  19"
    assert ascii_text(table, header=False).splitlines() == lines[3:]


@pytest.mark.skipif(not os.path.isfile(NNW), reason="default.nnw not installed")
def test_nnw_file_and_classifier(tmp_path):
    brain = read_nnw(NNW)
    assert brain["layers"] == [10, 10, 1]
    assert brain["weights"][0].shape == (10, 10) and brain["weights"][1].shape == (10, 1)
    # A compact bright source (all its light in a seeing disc) is a star, an extended one
    # with a low peak a galaxy.
    seeing, scale = 1.0, 0.2
    star_areas = np.array([[60, 45, 35, 27, 20, 14, 9, 5]])
    gal_areas = np.array([[900, 600, 400, 250, 150, 80, 30, 8]])
    cs = class_star(brain, np.r_[star_areas, gal_areas], np.array([5000.0, 200.0]), 30.0,
                    seeing, scale)
    assert cs[0] > 0.8 and cs[1] < 0.2
    bad = tmp_path / "bad.nnw"
    bad.write_text("NOT A NETWORK\n")
    with pytest.raises(NNWError, match="not a NNW table"):
        read_nnw(str(bad))
    bad.write_text("NNW\n 3 10 10 1\n 1 2 3\n")
    with pytest.raises(NNWError, match="truncated"):
        read_nnw(str(bad))


def test_class_star_needs_seeing(tmp_path):
    image = tmp_path / "img.fits"
    rng = np.random.default_rng(1)
    data = rng.normal(0, 1, (80, 80)).astype(np.float32)
    data[40, 40] += 200
    fits.writeto(image, data)
    sex = tmp_path / "a.sex"
    sex.write_text(f"FILTER N\nSEEING_FWHM 0\nSTARNNW_NAME {NNW}\n")
    param = tmp_path / "a.param"
    param.write_text("NUMBER\nCLASS_STAR\n")
    with pytest.raises(SexConfigError, match="SEEING_FWHM"):
        run_sextractor(str(image), str(tmp_path / "c.cat"), str(sex), param_file=str(param))
    assert not os.path.exists(tmp_path / "c.cat")


def test_windowed_centroid_of_an_isolated_gaussian(tmp_path):
    """Noise-free circular Gaussian: XWIN converges on the true centre (1-based)."""
    ny, nx = 64, 64
    y, x = np.mgrid[:ny, :nx]
    x0, y0, sig = 30.37, 28.81, 1.8
    data = (1000.0 * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sig**2))).astype(
        np.float32)
    # A neighbour 9 px away: blanked and mirrored, it must not pull the centroid.
    data += (800.0 * np.exp(-((x - x0 - 9) ** 2 + (y - y0) ** 2) / (2 * sig**2))).astype(
        np.float32)
    image = tmp_path / "g.fits"
    fits.writeto(image, data)
    sex = tmp_path / "g.sex"
    sex.write_text("FILTER N\nTHRESH_TYPE ABSOLUTE\nDETECT_THRESH 5\nANALYSIS_THRESH 5\n"
                   "BACK_TYPE MANUAL\nBACK_VALUE 0\nDETECT_MINAREA 3\nMASK_TYPE CORRECT\n")
    param = tmp_path / "g.param"
    param.write_text("X_IMAGE\nXWIN_IMAGE\nYWIN_IMAGE\nFLUX_RADIUS\n")
    out = tmp_path / "g.cat"
    run_sextractor(str(image), str(out), str(sex), param_file=str(param))
    cat = fits.getdata(out, "LDAC_OBJECTS")
    assert len(cat) == 2
    k = np.argmin(np.abs(cat["X_IMAGE"] - (x0 + 1)))
    assert abs(cat["XWIN_IMAGE"][k] - (x0 + 1)) < 0.02
    assert abs(cat["YWIN_IMAGE"][k] - (y0 + 1)) < 0.02
    # Half-light radius of a Gaussian: sigma * sqrt(2 ln 2).
    assert cat["FLUX_RADIUS"][k] == pytest.approx(sig * np.sqrt(2 * np.log(2)), rel=0.05)
