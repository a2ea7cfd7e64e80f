"""Tests of the SETools module: the .setools language, robust mode, outputs, runner."""

import os
import textwrap

import numpy as np
import pytest
from astropy.io import fits

from shapepipe.modules.setools import (
    SETools,
    SetoolsError,
    parse_expression,
    parse_setools,
    robust_mode,
    run_setools,
    sigma_mad,
    split_sizes,
)
from shapepipe.modules.setools.expression import ExpressionError
from shapepipe.utils.ldac import read_ldac, write_ldac

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "example", "setools",
                       "star_selection.setools")

N_OBJ = 400
N_STAR = 90
STAR_FWHM = 3.6


def make_table(seed=0, n=N_OBJ, n_star=N_STAR):
    """A SExtractor-like table: a narrow stellar locus over a broad galaxy FWHM range."""
    rng = np.random.default_rng(seed)
    table = np.zeros(n, dtype=[
        ("NUMBER", "i4"), ("X_IMAGE", "f8"), ("Y_IMAGE", "f8"), ("FWHM_IMAGE", "f4"),
        ("MAG_AUTO", "f4"), ("FLAGS", "i2"), ("IMAFLAGS_ISO", "i4"), ("SNR_WIN", "f4"),
        ("VIGNET", "f4", (7, 7)),
    ])
    table["NUMBER"] = np.arange(1, n + 1)
    table["X_IMAGE"] = rng.uniform(1, 2048, n)
    table["Y_IMAGE"] = rng.uniform(1, 4612, n)
    table["FWHM_IMAGE"] = np.r_[rng.normal(STAR_FWHM, 0.04, n_star),
                                rng.uniform(2.5, 12.0, n - n_star)]
    table["MAG_AUTO"] = np.r_[rng.uniform(17, 22.5, n_star), rng.uniform(18, 25, n - n_star)]
    table["FLAGS"] = np.where(rng.random(n) < 0.1, 2, 0)
    table["IMAFLAGS_ISO"] = np.where(rng.random(n) < 0.05, 1, 0)
    table["SNR_WIN"] = rng.uniform(5, 500, n)
    table["VIGNET"] = rng.normal(size=(n, 7, 7))
    return table


@pytest.fixture(scope="module")
def table():
    return make_table()


@pytest.fixture(scope="module")
def ldac_path(tmp_path_factory, table):
    path = tmp_path_factory.mktemp("cat") / "sexcat-2000001-3.fits"
    header = fits.Header()
    header["NAXIS1"] = 2048
    header["NAXIS2"] = 4612
    header["GAIN"] = 1.6
    write_ldac(str(path), header, table)
    return str(path)


def setools(text, path="test.setools"):
    return parse_setools(textwrap.dedent(text), path)


def evaluate(expr, table, **masks):
    """Evaluate one expression over ``table`` through a throw-away file."""
    lines = "".join(f"[MASK:{name}]\n{cond}\n" for name, cond in masks.items())
    st = SETools(table, setools(lines + f"[STAT:s]\nv = {expr}\n"))
    return st.statistics()["s"]["v"]


def mask_of(text, table, name):
    return SETools(table, setools(text)).mask(name)


# ----------------------------------------------------------------- the language


def test_tutorial_lines_verbatim(table):
    st = SETools(table, setools("""
        [MASK:preselect]
        MAG_AUTO > 0
        MAG_AUTO < 21
        FWHM_IMAGE > 0.3 / 0.186
        FWHM_IMAGE < 1.5 / 0.186
        FLAGS == 0
        IMAFLAGS_ISO == 0
        NO_SAVE

        [MASK:star_selection]
        MAG_AUTO > 18.
        MAG_AUTO < 22.
        FWHM_IMAGE <= mode(FWHM_IMAGE{preselect}) + 0.2
        FWHM_IMAGE >= mode(FWHM_IMAGE{preselect}) - 0.2
        FLAGS == 0
        IMAFLAGS_ISO == 0
    """))
    f, m = table["FWHM_IMAGE"], table["MAG_AUTO"]
    ok = (table["FLAGS"] == 0) & (table["IMAFLAGS_ISO"] == 0)
    pre = (m > 0) & (m < 21) & (f > 0.3 / 0.186) & (f < 1.5 / 0.186) & ok
    np.testing.assert_array_equal(st.mask("preselect"), pre)
    mode = robust_mode(f[pre])
    assert abs(mode - STAR_FWHM) < 0.05
    expected = (m > 18.0) & (m < 22.0) & (f <= mode + 0.2) & (f >= mode - 0.2) & ok
    np.testing.assert_array_equal(st.mask("star_selection"), expected)
    # The selection is the stellar locus: nearly all unflagged stars, and only the
    # galaxies whose FWHM falls in the 0.4-pixel window (~6 expected of 310 spread over
    # 9.5 pixels, 4/7 of them in the magnitude range, 85% unflagged).
    is_star = np.arange(N_OBJ) < N_STAR
    selected = st.mask("star_selection")
    assert (selected & is_star).sum() >= 0.9 * (is_star & ok & (m > 18) & (m < 22)).sum()
    assert (selected & ~is_star).sum() <= 15


@pytest.mark.parametrize("expr, value", [
    ("-3", -3.0), ("1e-3", 1e-3), ("1E+2", 100.0), (".5", 0.5), ("18.", 18.0),
    ("2.5e-1", 0.25), ("- 3", -3.0), ("2 - -3", 5.0), ("2+3*4", 14.0), ("(2+3)*4", 20.0),
    ("10/4/5", 0.5), ("2-3-4", -5.0), ("-(2+3)", -5.0), ("+4", 4.0), ("-2*-3", 6.0),
    ("1e-3*1000 - .5", 0.5), ("4612./0.187*3600.", 4612.0 / 0.187 * 3600.0),
])
def test_numbers_and_precedence(table, expr, value):
    assert evaluate(expr, table) == pytest.approx(value, rel=1e-12)


def test_negative_and_exponent_numbers_in_mask_lines(table):
    x = table["X_IMAGE"]
    sel = mask_of("[MASK:m]\nX_IMAGE * -1 > -1e3\nX_IMAGE - 2.5e2 >= -.5\n", table, "m")
    np.testing.assert_array_equal(sel, (x * -1 > -1e3) & (x - 2.5e2 >= -0.5))


@pytest.mark.parametrize("func, reference", [
    ("mean", np.mean), ("median", np.median), ("std", np.std), ("var", np.var),
    ("len", len), ("min", np.min), ("max", np.max),
    ("sigma_mad", lambda a: 1.4826 * np.median(np.abs(a - np.median(a)))),
])
def test_reductions(table, func, reference):
    col = table["MAG_AUTO"].astype(float)
    assert evaluate(f"{func}(MAG_AUTO)", table) == pytest.approx(reference(col), rel=1e-4)


def test_elementwise_functions(table):
    f = table["FWHM_IMAGE"].astype(float)
    for expr, ref in [
        ("mean(sqrt(FWHM_IMAGE))", np.mean(np.sqrt(f))),
        ("mean(pow(FWHM_IMAGE, 2))", np.mean(f ** 2)),
        ("mean(log(FWHM_IMAGE))", np.mean(np.log(f))),
        ("mean(log10(FWHM_IMAGE))", np.mean(np.log10(f))),
        ("mean(exp(-FWHM_IMAGE))", np.mean(np.exp(-f))),
        ("max(min(FWHM_IMAGE, 4))", min(f.max(), 4.0)),
        ("min(max(FWHM_IMAGE, 3, 5))", 5.0 if f.min() < 5 else f.min()),
        ("pow(2, -1)", 0.5),
    ]:
        assert evaluate(expr, table) == pytest.approx(ref, rel=1e-5), expr


def test_mask_references_restrict_the_sample(table):
    text = """
        [MASK:bright]
        MAG_AUTO < 21
        NO_SAVE
        [MASK:clean]
        FLAGS == 0
        [MASK:both]
        {bright}
        {clean}
        # evaluated on the bright & clean sample: mean over that sample
        FWHM_IMAGE < mean(FWHM_IMAGE)
        [MASK:fwd]
        {later}
        [MASK:later]
        X_IMAGE > 1000
    """
    st = SETools(table, setools(text))
    f = table["FWHM_IMAGE"]
    base = (table["MAG_AUTO"] < 21) & (table["FLAGS"] == 0)
    np.testing.assert_array_equal(st.mask("both"), base & (f < f[base].mean()))
    # Forward reference; an empty section selects its whole sample.
    np.testing.assert_array_equal(st.mask("fwd"), table["X_IMAGE"] > 1000)
    # COL{mask} is the column on the full selection, independent of the section sample.
    assert evaluate("len(FWHM_IMAGE{m})", table, m="MAG_AUTO < 21") == (
        table["MAG_AUTO"] < 21).sum()
    assert evaluate("mean(FWHM_IMAGE{m})", table, m="FLAGS != 0") == pytest.approx(
        f[table["FLAGS"] != 0].mean(), rel=1e-6)


def test_scalar_condition_selects_all_or_nothing(table):
    text = "[MASK:a]\nlen(FLAGS) > 10\n[MASK:b]\nlen(FLAGS) < 10\n"
    st = SETools(table, setools(text))
    assert st.mask("a").all() and not st.mask("b").any()


def test_statistics_of_empty_selection_are_nan_not_crash(table):
    text = """
        [MASK:none]
        MAG_AUTO > 99
        [MASK:star]
        FWHM_IMAGE < mode(FWHM_IMAGE{none})
        [STAT:s]
        n = len(FWHM_IMAGE{none})
        m = mean(FWHM_IMAGE{none})
        mo = mode(FWHM_IMAGE{none})
    """
    st = SETools(table, setools(text))
    stats = st.statistics()["s"]
    assert stats["n"] == 0 and np.isnan(stats["m"]) and np.isnan(stats["mo"])
    assert not st.mask("star").any()


def test_no_eval_of_user_text():
    for text in ["__import__('os').system('true')", "FLAGS.__class__", "X[0]", "lambda: 1"]:
        with pytest.raises(ExpressionError):
            parse_expression(text, allow_compare=True)


# -------------------------------------------------------------- syntax errors


@pytest.mark.parametrize("line, fragment", [
    ("FWHM_IMAGE = 3", "use '==' to test equality"),
    ("FWHM_IMAGE <= mode(FWHM_IMAGE{preselect}", "expected ')'"),
    ("foo(FWHM_IMAGE) > 1", "unknown function 'foo'"),
    ("FWHM_IMAGE > 1 < 2", "only one comparison per line"),
    ("FWHM_IMAGE >", "expression ends too early"),
    ("FWHM_IMAGE + 3", "must be a comparison"),
    ("pow(FWHM_IMAGE) > 1", "pow() takes 2 argument(s), got 1"),
    ("FWHM_IMAGE{} > 1", "expected a mask name"),
    ("FWHM_IMAGE > median(FWHM_IMAGE{nosuch})", "unknown mask 'nosuch'"),
    ("{nosuch}", "unknown mask 'nosuch'"),
    ("FWHM_IMAGE > 3 3", "unexpected '3' at column 16"),
])
def test_syntax_errors_name_file_section_line(line, fragment):
    text = f"# comment\n[MASK:pre]\nMAG_AUTO < 21\n\n[MASK:sel]\nFLAGS == 0\n{line}\n"
    with pytest.raises(SetoolsError) as err:
        parse_setools(text, "/some/where/my.setools")
    message = str(err.value)
    assert message.startswith("/some/where/my.setools: [MASK:sel] line 7: "), message
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("text, fragment", [
    ("FLAGS == 0\n", "line 1: 'FLAGS == 0' is outside any section"),
    ("[MASKS:a]\nFLAGS == 0\n", "line 1: unknown section type 'MASKS'"),
    ("[MASK:a\n", "line 1: malformed section header"),
    ("[MASK:a]\n[MASK:a]\n", "line 2: section [MASK:a] defined twice"),
    ("[MASK:a]\n{b}\n[MASK:b]\n{a}\n", "cycle"),
    ("[RAND_SPLIT:r]\nRATIO = abc\n", "[RAND_SPLIT:r] line 2: RATIO must be a number"),
    ("[RAND_SPLIT:r]\nRATIO = 150\n", "RATIO must be a fraction"),
    ("[RAND_SPLIT:r]\nRATIO = 50\n", "use a ratio other than 50%"),
    ("[RAND_SPLIT:r]\nMASK = a\n", "RATIO is missing"),
    ("[RAND_SPLIT:r]\nRATIO = 0.2\nMASK = nosuch\n", "line 3: unknown mask 'nosuch'"),
    ("[PLOT:p]\nTYPE = pie\nY = FLAGS\n", "[PLOT:p] line 2: unknown plot TYPE 'pie'"),
    ("[PLOT:p]\nTYPE = plot\nY = FLAGS\n", "key X is required"),
    ("[PLOT:p]\nTYPE = hist\nY = FLAGS\nTITLE = \"n=@len(FLAGS)\"\n", "unbalanced '@'"),
    ("[PLOT:p]\nTYPE = hist\nY = FLAGS\nCOLOUR = r\n", "line 4: unknown plot key 'COLOUR'"),
    ("[STAT:s]\nlen(FLAGS)\n", "[STAT:s] line 2: expected 'name = value'"),
    ("[STAT:s]\n\"n\" = len(FLAGS\n", "[STAT:s] line 2: expected ')'"),
])
def test_file_errors(text, fragment):
    with pytest.raises(SetoolsError) as err:
        parse_setools(text, "f.setools")
    assert str(err.value).startswith("f.setools: ")
    assert fragment in str(err.value), str(err.value)


@pytest.mark.parametrize("text, fragment", [
    # Mixing objects of different selections is caught when the file is read, even
    # where the lengths happen to agree (a selects every object here).
    ("[MASK:a]\nMAG_AUTO > 1\n[MASK:b]\nFLAGS == 0\nFWHM_IMAGE{a} > 3\n",
     "[MASK:b] line 5: expected a single number or values per object of the sample"),
    ("[MASK:a]\nMAG_AUTO > 20\n[STAT:s]\nx = mean(FLAGS{a} + FLAGS)\n",
     "[STAT:s] line 4: '+' combines COL and COL{a} element by element"),
    ("[MASK:a]\nMAG_AUTO > 20\n[MASK:b]\nFLAGS < mean(pow(FLAGS{a}, FLAGS))\n",
     "[MASK:b] line 4: pow() combines COL and COL{a}"),
    ("[STAT:s]\nx = FLAGS + 1\n", "[STAT:s] line 2: expected a single number, this gives "
     "values per object"),
    ("[PLOT:p]\nTYPE = hist\nY = FLAGS\nTITLE = \"@FLAGS@\"\n", "[PLOT:p] line 4: expected "
     "a single number"),
])
def test_mixed_objects_are_file_errors(text, fragment):
    with pytest.raises(SetoolsError) as err:
        parse_setools(text, "e.setools")
    assert fragment in str(err.value), str(err.value)


def test_evaluation_errors_name_the_line(table):
    st = SETools(table, parse_setools("[MASK:a]\n\nNOSUCH > 1\n", "e.setools"))
    with pytest.raises(SetoolsError) as err:
        st.mask("a")
    assert str(err.value).startswith("e.setools: [MASK:a] line 3: column 'NOSUCH' is not in "
                                      "catalogue")


# ------------------------------------------------------------------------ mode


def test_mode_never_crashes_on_degenerate_samples():
    assert np.isnan(robust_mode([]))
    assert np.isnan(robust_mode([np.nan, np.inf]))
    assert robust_mode([4.2]) == 4.2
    assert robust_mode([1.0, 3.0]) == 2.0
    assert robust_mode([5.0] * 50) == 5.0
    assert robust_mode([1.0, 2.0, 2.0, 2.0, 9.0]) == 2.0
    assert robust_mode(np.r_[np.full(12, 3.0), 7.0]) == 3.0
    assert robust_mode(np.r_[np.full(60, 3.0), np.arange(40.0)]) == 3.0
    assert robust_mode([1.0, np.nan, 1.0, 1.0]) == 1.0
    # Very narrow: spread far below float32 resolution of the values.
    narrow = 3.5 + np.random.default_rng(1).normal(0, 1e-12, 1000)
    assert robust_mode(narrow) == pytest.approx(3.5, abs=1e-9)
    assert np.isfinite(robust_mode([1e300, -1e300] * 20))


def test_mode_finds_narrow_peak_over_broad_background():
    rng = np.random.default_rng(7)
    errors = []
    for _ in range(50):
        x = np.r_[rng.normal(3.5, 0.05, 35), rng.uniform(3, 10, 200)]
        errors.append(robust_mode(x) - 3.5)
    assert np.sqrt(np.mean(np.square(errors))) < 0.05
    # A skewed unimodal distribution: gamma(k=3) has its mode at 2.
    assert robust_mode(rng.gamma(3.0, 1.0, 20000)) == pytest.approx(2.0, abs=0.3)
    # Median would be pulled to ~6 by the background.
    assert np.median(x) > 5


def test_sigma_mad_gaussian():
    x = np.random.default_rng(3).normal(0, 2.0, 100000)
    assert sigma_mad(x) == pytest.approx(2.0, rel=0.02)
    assert np.isnan(sigma_mad([]))


# ------------------------------------------------------------------ outputs


FULL = """
    [MASK:preselect]
    MAG_AUTO < 21
    FWHM_IMAGE > 0.3 / 0.186
    FLAGS == 0
    NO_SAVE

    [MASK:star_selection]
    {preselect}
    FWHM_IMAGE <= mode(FWHM_IMAGE) + 0.2
    FWHM_IMAGE >= mode(FWHM_IMAGE) - 0.2

    [MASK:faint]
    MAG_AUTO > 22

    [RAND_SPLIT:star_split]
    RATIO = 20
    MASK = star_selection

    [PLOT:size_mag]
    TYPE = plot
    X_1 = FWHM_IMAGE
    Y_1 = MAG_AUTO
    X_2 = FWHM_IMAGE{star_selection}
    Y_2 = MAG_AUTO{star_selection}
    COLOR_1 = k
    COLOR_2 = r
    MARKER_2 = o
    MARKERSIZE_2 = 2
    LABEL_1 = "all"
    LABEL_2 = "stars, mean FWHM @mean(FWHM_IMAGE{star_selection})*0.187@ arcsec"
    TITLE = "Stellar locus (@len(FLAGS{star_selection})@ stars)"
    XLABEL = "FWHM (pix)"
    YLABEL = MAG_AUTO
    XLIM = 0, 15

    [PLOT:mag_hist]
    TYPE = hist
    FORMAT = pdf
    Y_1 = MAG_AUTO
    Y_2 = MAG_AUTO{star_selection}
    BIN = 20
    LOG = True
    HTYPE = step

    [PLOT:fwhm_field]
    TYPE = scatter
    X = X_IMAGE{star_selection}
    Y = Y_IMAGE{star_selection}
    SCATTER = FWHM_IMAGE{star_selection} * 0.187
    MARKER = .

    [STAT:star_stat]
    "Nb objects" = len(FWHM_IMAGE)
    "Nb stars" = len(FWHM_IMAGE{star_selection})
    "Mode fwhm (arcsec)" = mode(FWHM_IMAGE{preselect}) * 0.187
    "a = b" = -3 + 1e-3
"""


@pytest.fixture(scope="module")
def processed(tmp_path_factory, ldac_path):
    out = tmp_path_factory.mktemp("out")
    written = run_setools(ldac_path, setools(FULL, "full.setools"), str(out), "-2000001-3",
                          seed=11)
    return str(out), written


def test_output_names(processed):
    out, written = processed
    expected = {
        "mask/star_selection-2000001-3.fits", "mask/faint-2000001-3.fits",
        "plot/size_mag-2000001-3.png", "plot/mag_hist-2000001-3.pdf",
        "plot/fwhm_field-2000001-3.png", "stat/star_stat-2000001-3.txt",
        "rand_split/star_split_ratio_20-2000001-3.fits",
        "rand_split/star_split_ratio_80-2000001-3.fits",
    }
    assert {os.path.relpath(p, out) for p in written} == expected
    found = {os.path.relpath(os.path.join(d, f), out)
             for d, _, files in os.walk(out) for f in files}
    assert found == expected  # NO_SAVE mask absent, no temporary files left


def test_plot_files_are_images(processed):
    out, _ = processed
    with open(os.path.join(out, "plot", "size_mag-2000001-3.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out, "plot", "mag_hist-2000001-3.pdf"), "rb") as handle:
        assert handle.read(5) == b"%PDF-"
    assert os.path.getsize(os.path.join(out, "plot", "fwhm_field-2000001-3.png")) > 5000


def test_mask_output_keeps_ldac_layout(processed, ldac_path, table):
    out, _ = processed
    path = os.path.join(out, "mask", "star_selection-2000001-3.fits")
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "LDAC_IMHEAD", "LDAC_OBJECTS"]
        assert hdul[2].columns["VIGNET"].dim == "(7,7)"
    # LDAC_IMHEAD copied byte for byte (an astropy round trip turns the cards' trailing
    # blanks into NULs, on which PSFEx crashes: see the slow PSFEx test).
    with fits.open(path) as out_hdul, fits.open(ldac_path) as in_hdul:
        assert out_hdul[1].data.tobytes() == in_hdul[1].data.tobytes()
        assert out_hdul[2].header.comments["TTYPE1"] == in_hdul[2].header.comments["TTYPE1"]
    data, header = read_ldac(path)
    assert header["GAIN"] == 1.6 and header["NAXIS2"] == 4612
    st = SETools(ldac_path, setools(FULL))
    sel = st.mask("star_selection")
    assert 50 < len(data) == sel.sum()
    np.testing.assert_array_equal(data["NUMBER"], table["NUMBER"][sel])
    np.testing.assert_array_equal(data["VIGNET"], table["VIGNET"][sel])


def test_stat_file_contents(processed, table):
    out, _ = processed
    with open(os.path.join(out, "stat", "star_stat-2000001-3.txt")) as handle:
        lines = handle.read().splitlines()
    st = SETools(table, setools(FULL))
    n_stars = int(st.mask("star_selection").sum())
    f = table["FWHM_IMAGE"]
    pre = (table["MAG_AUTO"] < 21) & (f > 0.3 / 0.186) & (table["FLAGS"] == 0)
    assert lines[0] == "# Statistics"
    assert lines[1] == f"Nb objects = {N_OBJ}"
    assert lines[2] == f"Nb stars = {n_stars}"
    name, value = lines[3].split(" = ")
    assert name == "Mode fwhm (arcsec)"
    assert float(value) == pytest.approx(robust_mode(f[pre]) * 0.187, rel=1e-12)
    assert lines[4] == f"a = b = {-3 + 1e-3}"
    assert len(lines) == 5


def test_rand_split_outputs(processed, table):
    out, _ = processed
    st = SETools(table, setools(FULL))
    sel = st.mask("star_selection")
    d20, _ = read_ldac(os.path.join(out, "rand_split", "star_split_ratio_20-2000001-3.fits"))
    d80, _ = read_ldac(os.path.join(out, "rand_split", "star_split_ratio_80-2000001-3.fits"))
    n = int(sel.sum())
    assert (len(d20), len(d80)) == split_sizes(n, 0.2)
    both = np.sort(np.r_[d20["NUMBER"], d80["NUMBER"]])
    np.testing.assert_array_equal(both, table["NUMBER"][sel])


@pytest.mark.parametrize("n, ratio, sizes", [
    (10, 0.2, (2, 8)), (7, 0.5, (4, 3)), (5, 0.3, (2, 3)), (1, 0.2, (0, 1)), (0, 0.2, (0, 0)),
    (3, 0.5, (2, 1)), (101, 0.8, (81, 20)),
])
def test_split_sizes_round_half_up(n, ratio, sizes):
    assert split_sizes(n, ratio) == sizes


def test_rand_split_exact_sizes_and_determinism(table):
    text = "[MASK:m]\nFLAGS == 0\n[RAND_SPLIT:r]\nRATIO = 0.3\nMASK = m\n"
    st = SETools(table, setools(text))
    n = int(st.mask("m").sum())
    first, second = st.random_split("r", seed=5, label="-2000001-3")
    assert first.size == int(np.floor(0.3 * n + 0.5)) and first.size + second.size == n
    assert not np.intersect1d(first, second).size
    assert st.mask("m")[first].all() and st.mask("m")[second].all()
    again = SETools(table, setools(text)).random_split("r", seed=5, label="-2000001-3")
    np.testing.assert_array_equal(first, again[0])
    other_file = st.random_split("r", seed=5, label="-2000001-4")
    other_seed = st.random_split("r", seed=6, label="-2000001-3")
    assert not np.array_equal(first, other_file[0])
    assert not np.array_equal(first, other_seed[0])
    # Without MASK every object is split.
    st2 = SETools(table, setools("[RAND_SPLIT:r]\nRATIO = 0.25\n"))
    a, b = st2.random_split("r")
    assert (a.size, b.size) == (100, 300)


def test_empty_rand_split_writes_nothing(tmp_path, table):
    text = "[MASK:m]\nNUMBER == 1\nNO_SAVE\n[RAND_SPLIT:r]\nRATIO = 0.2\nMASK = m\n"
    written = run_setools(_plain_fits(tmp_path, table), setools(text), str(tmp_path / "o"))
    assert written == []


def _plain_fits(tmp_path, table):
    path = str(tmp_path / "plain.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(table)]).writeto(path)
    return path


def test_plain_fits_table_input(tmp_path, table):
    path = _plain_fits(tmp_path, table)
    written = run_setools(path, setools("[MASK:bright]\nMAG_AUTO < 20\n"), str(tmp_path / "o"),
                          "-0000001-0")
    assert [os.path.basename(p) for p in written] == ["bright-0000001-0.fits"]
    with fits.open(written[0]) as hdul:
        assert len(hdul) == 2
        assert len(hdul[1].data) == (table["MAG_AUTO"] < 20).sum()


def test_plot_length_mismatch_is_a_clear_error(tmp_path, table):
    text = "[MASK:a]\nFLAGS == 0\n[PLOT:p]\nTYPE = plot\nX = FWHM_IMAGE{a}\nY = MAG_AUTO\n"
    with pytest.raises(SetoolsError, match=r"\[PLOT:p\] line 6: X has \d+ values and Y has 400"):
        run_setools(_plain_fits(tmp_path, table), setools(text), str(tmp_path / "o"))


def test_plot_keys_per_data_set():
    section = setools("""
        [PLOT:p]
        TYPE = plot
        X_1 = FWHM_IMAGE
        Y_1 = MAG_AUTO
        Y_2 = SNR_WIN
        LABEL_1 = first
        COLOR = r
        MARKER_2 = o
    """).plots["p"]
    assert section.get("COLOR", "1") == section.get("COLOR", "2") == "r"
    assert section.get("LABEL", "1") == ["first"] and section.get("LABEL", "2") is None
    assert section.get("MARKER", "1") is None and section.get("MARKER", "2") == "o"
    # A single indexed X is shared by every Y, as in ShapePipe.
    assert section.get("X", "2", share_single=True) is section.get("X", "1")


def test_empty_selection_plots(tmp_path, table):
    text = """
        [MASK:none]
        MAG_AUTO > 99
        [PLOT:a]
        TYPE = scatter
        X = X_IMAGE{none}
        Y = Y_IMAGE{none}
        SCATTER = FWHM_IMAGE{none}
        [PLOT:b]
        TYPE = hist
        Y = MAG_AUTO{none}
        [PLOT:c]
        TYPE = plot
        X = X_IMAGE{none}
        Y = Y_IMAGE{none}
        LABEL = "mean @mean(X_IMAGE{none})@"
    """
    written = run_setools(_plain_fits(tmp_path, table), setools(text), str(tmp_path / "o"))
    assert sum(p.endswith(".png") for p in written) == 3


def test_empty_catalogue(tmp_path):
    path = str(tmp_path / "sexcat-0000001-0.fits")
    write_ldac(path, fits.Header(), make_table()[:0])
    written = run_setools(path, EXAMPLE, str(tmp_path / "o"), "-0000001-0")
    names = sorted(os.path.relpath(p, tmp_path / "o") for p in written)
    assert names == ["mask/star_selection-0000001-0.fits", "plot/fwhm_field-0000001-0.png",
                     "plot/hist_mag_stars-0000001-0.png", "plot/size_mag-0000001-0.png",
                     "stat/star_stat-0000001-0.txt"]
    assert len(read_ldac(written[0])[0]) == 0
    with open(written[-1]) as handle:
        text = handle.read()
    assert "Nb stars = 0\n" in text and "Mode fwhm used (arcsec) = nan\n" in text


# ---------------------------------------------------------------------- example


def test_example_file_parses_and_selects_stars(table):
    st = SETools(table, EXAMPLE)
    sel = st.mask("star_selection")
    is_star = np.arange(N_OBJ) < N_STAR
    assert sel.sum() > 30 and (sel & ~is_star).sum() <= 15


# ----------------------------------------------------------------------- runner


@pytest.mark.slow
def test_runner_end_to_end(sp, table):
    header = fits.Header()
    header["NAXIS1"] = 2048
    for number, seed in (("-2000001-3", 1), ("-2000002-0", 2)):
        write_ldac(str(sp.data / f"sexcat{number}.fits"), header, make_table(seed))
    config = sp.config(f"""
        [SETOOLS_RUNNER]
        SETOOLS_CONFIG_PATH = {os.path.abspath(EXAMPLE)}
        SEED = 4
    """, modules="setools_runner")
    assert sp.run(config) == 0
    run_dir = sp.runs()[-1]
    out = os.path.join(run_dir, "setools_runner", "output")
    for number in ("-2000001-3", "-2000002-0"):
        for name in (f"mask/star_selection{number}.fits",
                     f"rand_split/star_split_ratio_20{number}.fits",
                     f"rand_split/star_split_ratio_80{number}.fits",
                     f"plot/size_mag{number}.png", f"plot/hist_mag_stars{number}.png",
                     f"plot/fwhm_field{number}.png", f"stat/star_stat{number}.txt"):
            assert os.path.isfile(os.path.join(out, name)), name
    assert not os.path.exists(os.path.join(out, "mask", "preselect-2000001-3.fits"))
    # The split is reproducible from SEED and the file number.
    first, _ = read_ldac(os.path.join(out, "rand_split", "star_split_ratio_20-2000001-3.fits"))
    st = SETools(str(sp.data / "sexcat-2000001-3.fits"), EXAMPLE)
    expected, _ = st.random_split("star_split", seed=4, label="-2000001-3")
    np.testing.assert_array_equal(first["NUMBER"], make_table(1)["NUMBER"][expected])


@pytest.mark.slow
def test_runner_reports_setools_errors_per_job(sp, tmp_path):
    bad = tmp_path / "bad.setools"
    bad.write_text("[MASK:a]\nNOSUCH_COLUMN > 1\n")
    write_ldac(str(sp.data / "sexcat-2000001-3.fits"), fits.Header(), make_table(1))
    config = sp.config(f"""
        [SETOOLS_RUNNER]
        SETOOLS_CONFIG_PATH = {bad}
    """, modules="setools_runner")
    assert sp.run(config) == 1
    log = os.path.join(sp.runs()[-1], "setools_runner", "logs", "process-2000001-3.log")
    with open(log) as handle:
        assert "[MASK:a] line 2: column 'NOSUCH_COLUMN' is not in catalogue" in handle.read()


# --------------------------------------------- PSFEx reads the selections (slow)


def _star_field(path, n_star=60, n_gal=40, size=600, seed=3):
    """A small image of Moffat stars and larger galaxies (GalSim), with noise."""
    import galsim

    rng = np.random.default_rng(seed)
    image = galsim.ImageF(size, size, scale=0.187)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    for i in range(n_star + n_gal):
        x, y = rng.uniform(30, size - 30, 2)
        flux = 10 ** rng.uniform(3.5, 5.0)
        if i < n_star:
            profile = psf.withFlux(flux)
        else:
            profile = galsim.Convolve(galsim.Exponential(half_light_radius=rng.uniform(0.5, 1.2),
                                                         flux=flux), psf)
        stamp = profile.drawImage(nx=41, ny=41, scale=0.187, center=galsim.PositionD(x, y))
        bounds = stamp.bounds & image.bounds
        image[bounds] += stamp[bounds]
    image.array[:] += rng.normal(0, 5.0, image.array.shape)
    image.write(str(path))


@pytest.mark.slow
@pytest.mark.skipif(not all(map(__import__("shutil").which, ["source-extractor", "psfex"])),
                    reason="needs Debian source-extractor and psfex")
def test_psfex_accepts_mask_and_split_outputs(tmp_path):
    import subprocess

    _star_field(tmp_path / "image.fits")
    (tmp_path / "cat.param").write_text("\n".join([
        "NUMBER", "XWIN_IMAGE", "YWIN_IMAGE", "X_IMAGE", "Y_IMAGE", "FLUX_APER(1)",
        "FLUXERR_APER(1)", "FLUX_RADIUS", "ELONGATION", "FLAGS", "SNR_WIN", "FWHM_IMAGE",
        "MAG_AUTO", "VIGNET(25,25)"]) + "\n")
    cat = tmp_path / "sexcat-0000001-0.fits"
    subprocess.run(["source-extractor", str(tmp_path / "image.fits"),
                    "-c", "/usr/share/source-extractor/default.sex",
                    "-CATALOG_NAME", str(cat), "-CATALOG_TYPE", "FITS_LDAC",
                    "-PARAMETERS_NAME", str(tmp_path / "cat.param"),
                    "-FILTER_NAME", "/usr/share/source-extractor/default.conv",
                    "-DETECT_THRESH", "5", "-PHOT_APERTURES", "10", "-SATUR_LEVEL", "1e9",
                    "-CHECKIMAGE_TYPE", "NONE", "-VERBOSE_TYPE", "QUIET"],
                   check=True, cwd=tmp_path)
    selection = tmp_path / "sel.setools"
    selection.write_text(textwrap.dedent("""
        [MASK:preselect]
        FLAGS == 0
        SNR_WIN > 20
        NO_SAVE
        [MASK:star_selection]
        {preselect}
        FWHM_IMAGE <= mode(FWHM_IMAGE) + 0.3
        FWHM_IMAGE >= mode(FWHM_IMAGE) - 0.3
        [RAND_SPLIT:star_split]
        RATIO = 20
        MASK = star_selection
    """))
    out = tmp_path / "out"
    written = run_setools(str(cat), str(selection), str(out), "-0000001-0")
    n_stars = len(read_ldac(written[0])[0])
    assert n_stars >= 30
    for path, n_expected in ((written[0], n_stars),
                             (out / "rand_split" / "star_split_ratio_80-0000001-0.fits",
                              n_stars - split_sizes(n_stars, 0.2)[0])):
        result = subprocess.run(
            ["psfex", str(path), "-c", "/usr/share/psfex/default.psfex",
             "-PSF_SIZE", "21,21", "-CHECKPLOT_TYPE", "NONE", "-CHECKIMAGE_TYPE", "NONE",
             "-WRITE_XML", "N", "-PSF_DIR", str(tmp_path), "-SAMPLE_FWHMRANGE", "1.0,20.0",
             "-VERBOSE_TYPE", "NORMAL"],
            cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        psf = tmp_path / (os.path.basename(str(path))[:-5] + ".psf")
        with fits.open(psf) as hdul:
            assert hdul[1].header["LOADED"] == n_expected
            assert hdul[1].header["ACCEPTED"] >= 0.8 * n_expected
