"""sep's deblending draws from glibc rand() as source-extractor does (issue 18, third pass).

The patch (shapepipe/modules/sextractor/deblend_random.py) points the ``rand_r`` slot of sep's
global offset table at glibc's ``rand``. These tests check the slot itself, that the
generator is then process-wide and reset per image (the only way sep's own generator, reset
to seed 1 inside every call, can be told apart), that SEP mode undoes the patch, that a
failure falls back without raising, and that the pipeline's forked worker applies it.
"""

import ctypes
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import sep
from astropy.io import fits

from shapepipe.modules.sextractor import deblend_random as dr
from shapepipe.modules.sextractor import run_sextractor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONV = os.path.join(ROOT, "example", "sextractor", "default.conv")
LIBC = ctypes.CDLL(None)
GLIBC = dr.platform.system() == "Linux" and dr.running_glibc() is not None
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the patch is for Linux with glibc")

SEX = """CATALOG_TYPE     FITS_LDAC
DETECT_MINAREA   5
THRESH_TYPE      ABSOLUTE
DETECT_THRESH    5
ANALYSIS_THRESH  5
FILTER           N
DEBLEND_NTHRESH  32
DEBLEND_MINCONT  0.005
CLEAN            Y
MASK_TYPE        CORRECT
WEIGHT_TYPE      NONE
BACK_TYPE        MANUAL
BACK_VALUE       0
GAIN             1.0
SATUR_LEVEL      1e9
PHOT_APERTURES   6
"""
PARAM = "NUMBER\nX_IMAGE\nY_IMAGE\nXWIN_IMAGE\nYWIN_IMAGE\nFLUX_AUTO\nISOAREA_IMAGE\nFLAGS\n"


def _address(func):
    return ctypes.cast(func, ctypes.c_void_p).value


def _slots():
    path = os.path.realpath(sep.__file__)
    base = dr.load_base(path)
    return [base + offset for offset in dr.got_slots(path)]


def _slot_values():
    return [ctypes.c_uint64.from_address(slot).value for slot in _slots()]


def _blended_image(seed=3, n_pairs=12, size=160):
    """Noisy pairs of Gaussians 3.5-6 px apart: deblended, with pixels shared out at random."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    image = rng.normal(0.0, 1.0, (size, size))
    for _ in range(n_pairs):
        x0, y0 = rng.uniform(15, size - 15, 2)
        angle, dist = rng.uniform(0, np.pi), rng.uniform(3.5, 6.0)
        for k, amp in ((0, 300.0), (1, 300.0 * rng.uniform(0.4, 1.0))):
            xc, yc = x0 + k * dist * np.cos(angle), y0 + k * dist * np.sin(angle)
            image += amp * np.exp(-((x - xc) ** 2 + (y - yc) ** 2) / (2 * 1.8**2))
    return image.astype(np.float32)


def _extract(image):
    return sep.extract(image, 5.0, err=1.0, minarea=5, deblend_nthresh=32,
                       deblend_cont=0.005, segmentation_map=True)[1]


@pytest.fixture
def sep_mode_after():
    """Leave the process as the other tests expect it: the default (patched) state."""
    yield
    dr.select(dr.SEXTRACTOR)


@needs_glibc
def test_elf_parser_finds_the_relocation_readelf_lists():
    if shutil.which("readelf") is None:
        pytest.skip("readelf not installed")
    out = subprocess.run(["readelf", "-rW", os.path.realpath(sep.__file__)], check=True,
                         capture_output=True, text=True).stdout
    listed = sorted(int(m.group(1), 16) for m in re.finditer(
        r"^([0-9a-f]+)\s+\S+\s+R_\w+_(?:JUMP_SLOT|GLOB_DAT)\s+\S+\s+rand_r\b", out, re.M))
    assert listed and dr.got_slots(os.path.realpath(sep.__file__)) == listed


@needs_glibc
def test_got_slot_holds_rand_after_select_and_the_original_after_sep(sep_mode_after):
    rand, rand_r = _address(LIBC.rand), _address(LIBC.rand_r)
    assert dr.select(dr.SEP) == (dr.SEP, None)
    assert not dr.patched()
    original = _slot_values()
    assert rand not in original
    assert dr.select(dr.SEXTRACTOR) == (dr.SEXTRACTOR, None)
    assert dr.patched() and _slot_values() == [rand] * len(original)
    assert dr.select(dr.SEXTRACTOR) == (dr.SEXTRACTOR, None)  # idempotent
    assert _slot_values() == [rand] * len(original)
    assert dr.select(dr.SEP) == (dr.SEP, None)
    assert _slot_values() == original and rand_r in original + [rand_r]
    assert not dr.patched()


@needs_glibc
def test_generator_is_glibc_rand_reset_per_image(sep_mode_after):
    image = _blended_image()
    # sep's own generator restarts at seed 1 inside each call: repeated calls are equal.
    dr.select(dr.SEP)
    sep_a, sep_b = _extract(image), _extract(image)
    assert np.array_equal(sep_a, sep_b)
    # glibc rand() is process-wide: without a reset the second call draws other numbers...
    dr.prepare(dr.SEXTRACTOR)
    first, second = _extract(image), _extract(image)
    assert not np.array_equal(first, second)
    # ... and srand(1) gives the first call's hand-out back, which differs from sep's.
    dr.reset()
    assert np.array_equal(_extract(image), first)
    assert not np.array_equal(first, sep_a)
    assert np.array_equal(first > 0, sep_a > 0)  # same detections, other shared pixels


@needs_glibc
def test_run_sextractor_is_reproducible_per_image(tmp_path, sep_mode_after):
    image = str(tmp_path / "blend.fits")
    fits.writeto(image, _blended_image())
    sex, param = tmp_path / "b.sex", tmp_path / "b.param"
    sex.write_text(SEX)
    param.write_text(PARAM)
    cats = {}
    for name, mode in (("a", "SEXTRACTOR"), ("b", "SEXTRACTOR"), ("sep", "sep")):
        out = str(tmp_path / f"{name}.cat")
        info = run_sextractor(image, out, str(sex), param_file=str(param),
                              deblend_random_mode=mode)
        assert info["deblend_random"] == mode.upper() and info["deblend_random_note"] is None
        cats[name] = fits.getdata(out, "LDAC_OBJECTS")
    assert np.array_equal(cats["a"], cats["b"])
    assert len(cats["sep"]) == len(cats["a"])
    assert not np.array_equal(cats["a"]["ISOAREA_IMAGE"], cats["sep"]["ISOAREA_IMAGE"])
    with pytest.raises(Exception, match="expected one of SEXTRACTOR, SEP"):
        run_sextractor(image, str(tmp_path / "x.cat"), str(sex), param_file=str(param),
                       deblend_random_mode="NUMPY")


def test_fallback_is_one_warning_and_sep_generator(tmp_path, monkeypatch, sep_mode_after):
    dr.select(dr.SEP)  # undo any patch: the failure must be met by the next select
    monkeypatch.setattr(dr._State, "failure", None)
    monkeypatch.setattr(dr._State, "warned", False)
    monkeypatch.setattr(dr, "_patch", lambda: "simulated: not Linux with glibc")
    image = str(tmp_path / "blend.fits")
    fits.writeto(image, _blended_image())
    sex, param = tmp_path / "b.sex", tmp_path / "b.param"
    sex.write_text(SEX)
    param.write_text(PARAM)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        infos = [run_sextractor(image, str(tmp_path / f"{i}.cat"), str(sex),
                                param_file=str(param)) for i in range(2)]
    notes = [w for w in caught if issubclass(w.category, dr.DeblendRandomWarning)]
    assert len(notes) == 1
    assert "simulated: not Linux with glibc" in str(notes[0].message)
    assert "blended objects" in str(notes[0].message)
    assert all(i["deblend_random"] == "SEP" for i in infos)
    assert infos[0]["deblend_random_note"] == str(notes[0].message)
    assert not dr.patched()

    # An exception inside the patch is a fallback too, never a failed extraction.
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(dr._State, "failure", None)
    monkeypatch.setattr(dr, "_patch", broken)
    used, note = dr.select(dr.SEXTRACTOR)
    assert used == dr.SEP and "RuntimeError: boom" in note


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="expected one of SEXTRACTOR, SEP"):
        dr.select("RANDOM")


def _config(tmp_path, data, mode, sex, param):
    path = tmp_path / f"config_{mode}.ini"
    path.write_text(f"""
[DEFAULT]
RUN_NAME = rand_{mode.lower()}
[EXECUTION]
MODULE = sextractor_runner
MODE = SMP
[FILE]
INPUT_DIR = {data}
OUTPUT_DIR = {tmp_path / 'out'}
FILE_PATTERN = image
FILE_EXT = .fits
NUMBERING_SCHEME = -0000000-0
[JOB]
SMP_BATCH_SIZE = 1
[SEXTRACTOR_RUNNER]
DOT_SEX_FILE = {sex}
DOT_PARAM_FILE = {param}
WEIGHT_IMAGE = False
FLAG_IMAGE = False
DEBLEND_RANDOM = {mode}
""")
    return str(path)


@needs_glibc
def test_forked_pipeline_workers_apply_the_patch(tmp_path, sep_mode_after):
    """shapepipe_run's SMP workers are forked: each job patches (or restores) by itself."""
    from shapepipe.run import main

    data = tmp_path / "data"
    data.mkdir()
    for i, seed in enumerate((3, 5)):
        fits.writeto(data / f"image-000000{i}-0.fits", _blended_image(seed=seed))
    sex, param = tmp_path / "b.sex", tmp_path / "b.param"
    sex.write_text(SEX)
    param.write_text(PARAM)
    expected = {}
    for mode in ("SEXTRACTOR", "SEP"):
        for i in range(2):
            out = str(tmp_path / f"ref_{mode}_{i}.cat")
            run_sextractor(str(data / f"image-000000{i}-0.fits"), out, str(sex),
                           param_file=str(param), deblend_random_mode=mode)
            expected[mode, i] = fits.getdata(out, "LDAC_OBJECTS")
    assert not np.array_equal(expected["SEXTRACTOR", 0], expected["SEP", 0])
    for mode in ("SEXTRACTOR", "SEP"):
        # The main process holds the opposite state: the worker must change it itself.
        dr.select("SEP" if mode == "SEXTRACTOR" else "SEXTRACTOR")
        assert main(["-c", _config(tmp_path, data, mode, sex, param), "-q"]) == 0
        assert dr.patched() == (mode == "SEP")  # the jobs ran in another process
        run = sorted((tmp_path / "out").glob(f"rand_{mode.lower()}_*"))[-1]
        for i in range(2):
            got = fits.getdata(run / "sextractor_runner" / "output" /
                               f"sexcat-000000{i}-0.fits", "LDAC_OBJECTS")
            # Two images in one worker: each starts from srand(1), as one process per file.
            assert np.array_equal(got, expected[mode, i]), (mode, i)
        logs = "".join(p.read_text() for p in (run / "sextractor_runner" / "logs").glob("*"))
        assert f"deblending random numbers {mode}" in logs
        assert "not possible" not in logs


@needs_glibc
def test_worker_falls_back_with_one_warning_per_job_log(tmp_path, monkeypatch, sep_mode_after):
    from shapepipe.run import main

    data = tmp_path / "data"
    data.mkdir()
    fits.writeto(data / "image-0000000-0.fits", _blended_image())
    sex, param = tmp_path / "b.sex", tmp_path / "b.param"
    sex.write_text(SEX)
    param.write_text(PARAM)
    expected = str(tmp_path / "sep.cat")
    run_sextractor(str(data / "image-0000000-0.fits"), expected, str(sex),
                   param_file=str(param), deblend_random_mode="SEP")
    # The forked worker inherits an unpatched process in which the patch fails.
    dr.select(dr.SEP)
    monkeypatch.setattr(dr._State, "failure", None)
    monkeypatch.setattr(dr, "_patch", lambda: "simulated: sep built differently")
    assert main(["-c", _config(tmp_path, data, "SEXTRACTOR", sex, param), "-q"]) == 0
    run = sorted((tmp_path / "out").glob("rand_sextractor_*"))[-1]
    got = fits.getdata(run / "sextractor_runner" / "output" / "sexcat-0000000-0.fits",
                       "LDAC_OBJECTS")
    assert np.array_equal(got, fits.getdata(expected, "LDAC_OBJECTS"))
    job_logs = [p.read_text() for p in (run / "sextractor_runner" / "logs").glob("*.log")]
    warned = [line for text in job_logs for line in text.splitlines() if "not possible" in line]
    assert len(warned) == 1 and "WARNING" in warned[0], warned
    assert "simulated: sep built differently" in warned[0] and "blended objects" in warned[0]
    assert any("deblending random numbers SEP" in text for text in job_logs)


@needs_glibc
def test_read_only_slot_page_is_written_and_protected_again(sep_mode_after):
    """As with a RELRO/BIND_NOW build: the slot's page is read-only when the patch comes."""
    dr.select(dr.SEP)
    path = os.path.realpath(sep.__file__)
    slot = _slots()[0]
    page = os.sysconf("SC_PAGE_SIZE")
    start = slot - slot % page
    libc = dr._libc()
    perms = dr._mapping(slot, path)[2]
    assert perms.startswith("rw")
    assert libc.mprotect(start, page, 1) == 0  # PROT_READ
    try:
        assert dr._mapping(slot, path)[2].startswith("r-")
        assert dr.select(dr.SEXTRACTOR) == (dr.SEXTRACTOR, None)
        assert _slot_values()[0] == _address(LIBC.rand)
        assert dr._mapping(slot, path)[2].startswith("r-")  # protection restored
        assert dr.select(dr.SEP) == (dr.SEP, None)
        assert _slot_values()[0] != _address(LIBC.rand)
        assert dr._mapping(slot, path)[2].startswith("r-")
    finally:
        libc.mprotect(start, page, 3)  # PROT_READ | PROT_WRITE, as the loader left it
    assert dr._mapping(slot, path)[2].startswith("rw")
