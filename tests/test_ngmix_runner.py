"""ngmix_runner on small generated multi-epoch tile inputs (GalSim, fake CCD WCSs)."""

import logging
import sqlite3
import textwrap

import numpy as np
import pytest

from shapepipe.modules.ngmix import (
    FLAG_NO_EPOCHS,
    read_catalog,
    shear_response,
)
from shapepipe.modules.ngmix.tile import combine_parts, select_rows
from shapepipe.modules.ngmix.tile_sim import make_tile_inputs
from shapepipe.modules.ngmix_runner import combine, ngmix_runner
from shapepipe.pipeline.config import read_config
from shapepipe.utils.stamp_store import open_store

NUM = "-270-283"
N_OBJ = 11
# Objects made bad after rendering (ids): all epochs flagged, "empty", undecodable entry;
# one epoch of no exposure header added to object 1; the PSF of one epoch of object 2 removed;
# 40% of one epoch of object 3 flagged (more than ShapePipe's 1/3: dropped); a weight vignet
# of the wrong shape in one epoch of object 4.
ALL_MASKED, EMPTY, CORRUPT = 9, 10, 11
EXTRA_EPOCH = "2000009-0"


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _logger(name):
    log = logging.getLogger(name)
    log.setLevel(logging.DEBUG)
    handler = _ListHandler()
    log.addHandler(handler)
    return log, handler


def _spoil(files):
    """Inject the bad inputs of the module docstring into the stores."""
    stores = {r: open_store(files[r], "c") for r in ("image", "background", "psf", "weight",
                                                     "flag")}
    try:
        entry = stores["flag"][str(ALL_MASKED)]
        for epoch in entry.values():
            epoch["VIGNET"] = np.ones_like(epoch["VIGNET"])
        stores["flag"][str(ALL_MASKED)] = entry
        entry = stores["flag"]["3"]
        vignet = entry[sorted(entry)[0]]["VIGNET"]
        vignet[: int(0.4 * vignet.shape[0]) + 1] = 4
        stores["flag"]["3"] = entry
        entry = stores["weight"]["4"]
        entry[sorted(entry)[2]]["VIGNET"] = np.ones((3, 3), np.float32)
        stores["weight"]["4"] = entry
        for store in stores.values():
            store[str(EMPTY)] = "empty"
            one = store["1"]
            one[EXTRA_EPOCH] = next(iter(one.values()))
            store["1"] = one
        psf = stores["psf"]["2"]
        del psf[sorted(psf)[1]]
        stores["psf"]["2"] = psf
        for store in stores.values():
            store.commit()
    finally:
        for store in stores.values():
            store.close()
    # Garbage bytes where the JSON of object CORRUPT's image vignets should be.
    with sqlite3.connect(files["image"]) as con:
        con.execute("UPDATE unnamed SET value = ? WHERE key = ?",
                    (b"\x80not json{", str(CORRUPT)))


def _config(tmp_path, log_wcs, extra=""):
    path = tmp_path / "config.ini"
    path.write_text(textwrap.dedent(f"""
        [NGMIX_RUNNER]
        LOG_WCS = {log_wcs}
        SEED = 7
        MAG_ZP = 30.0
        PIXEL_SCALE = 0.187
        """) + textwrap.dedent(extra))
    return read_config(str(path))


def _inputs(files):
    return [files[r] for r in ("catalogue", "image", "background", "psf", "weight", "flag")]


def _run(tmp, data, part=None, extra="", name="out"):
    out = tmp / name
    out.mkdir()
    run_dirs = {"output": str(out), "run": str(tmp), "run_log": str(tmp / "runs.jsonl")}
    if part:
        run_dirs["split"] = part
    log, handler = _logger(f"ngmix_test_{name}")
    config = _config(tmp, data["files"]["log_wcs"], extra)
    ngmix_runner(_inputs(data["files"]), run_dirs, NUM, config, "NGMIX_RUNNER", log)
    return out, handler.messages


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ngmix_tile")
    data = make_tile_inputs(str(tmp / "data"), n_obj=N_OBJ, seed=11, snr=200.0,
                            stamp_size=35, psf_size=25)
    _spoil(data["files"])
    out, messages = _run(tmp, data)
    return {"tmp": tmp, "data": data, "cat": read_catalog(str(out / f"ngmix{NUM}.fits")),
            "messages": messages}


def test_one_row_per_object_in_catalogue_order(tile):
    for t, tab in tile["cat"].items():
        assert list(tab["id"]) == list(range(1, N_OBJ + 1)), t


def test_bright_shears_recovered_through_rotated_and_skewed_wcs(tile):
    cat, data = tile["cat"], tile["data"]
    ns = cat["noshear"]
    good = np.flatnonzero(ns["flags"] == 0)
    assert set(ns["id"][good]) == set(range(1, ALL_MASKED))
    resp = shear_response(cat)
    pulls = []
    for k in good:
        g = np.linalg.solve(resp[k], [ns["g1"][k], ns["g2"][k]])
        err = np.array([ns["g1_err"][k], ns["g2_err"][k]]) / np.abs(np.diag(resp[k]))
        pull = (g - [data["g1"][k], data["g2"][k]]) / err
        pulls.extend(pull)
        # A wrong Jacobian (sign, rotation of 30 deg, skew) would rotate shears of ~0.08 by
        # tens of degrees: several sigma at S/N 200.
        assert np.all(np.abs(pull) < 4.0), (ns["id"][k], g, data["g1"][k], data["g2"][k])
    pulls = np.array(pulls)
    assert abs(pulls.mean()) < 4.0 / np.sqrt(len(pulls))
    assert 0.3 < pulls.std() < 2.0


def test_bad_epochs_dropped_bad_objects_flagged(tile):
    ns = tile["cat"]["noshear"]
    row = {int(i): k for k, i in enumerate(ns["id"])}
    # Object 1: its epoch on an exposure without a header is dropped, the three others used.
    assert ns["n_epoch_model"][row[1]] == 3 and ns["flags"][row[1]] == 0
    # Object 2: the epoch without a PSF is dropped; object 3: its mostly masked epoch.
    assert ns["n_epoch_model"][row[2]] == 2 and ns["flags"][row[2]] == 0
    assert ns["n_epoch_model"][row[3]] == 2 and ns["flags"][row[3]] == 0
    assert ns["n_epoch_model"][row[4]] == 2 and ns["flags"][row[4]] == 0
    for obj in (ALL_MASKED, EMPTY, CORRUPT):
        for t, tab in tile["cat"].items():
            k = row[obj]
            assert tab["flags"][k] & FLAG_NO_EPOCHS, (obj, t)
            assert tab["mcal_flags"][k] & FLAG_NO_EPOCHS
            assert tab["n_epoch_model"][k] == 0
            for col in ("g1", "g2", "T", "flux", "s2n", "mag"):
                assert np.isnan(tab[col][k]), (obj, t, col)
    text = "\n".join(tile["messages"])
    assert "no_header=1" in text and "no_psf=1" in text and "all_masked=3" in text
    assert "mostly_masked=1" in text and "bad_entry=1" in text
    assert "corrupt_entries=1" in text and "2000009" in text


def test_split_equals_unsplit_and_id_range(tile):
    tmp, data = tile["tmp"], tile["data"]
    extra = "ID_OBJ_MIN = 2\nID_OBJ_MAX = 6\n"
    parts = [_run(tmp, data, part=(i, 3), extra=extra, name=f"part{i}")[0] for i in (1, 2, 3)]
    sizes = [len(read_catalog(str(p / f"ngmix{NUM}.fits"))["noshear"]) for p in parts]
    assert sizes == [2, 2, 1]
    final = tmp / "combined"
    final.mkdir()
    combine([str(p) for p in parts], str(final), NUM, logging.getLogger("combine"))
    merged = read_catalog(str(final / f"ngmix{NUM}.fits"))
    for t, tab in merged.items():
        ref = tile["cat"][t][1:6]
        assert list(tab["id"]) == [2, 3, 4, 5, 6]
        for name in tab.dtype.names:
            np.testing.assert_array_equal(tab[name], ref[name], err_msg=f"{t} {name}")


def test_combine_missing_part_and_overlap(tile, tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    with pytest.raises(FileNotFoundError, match="part output"):
        combine([str(tmp_path / "nowhere")], str(out), NUM, logging.getLogger("c"))
    path = str(tile["tmp"] / "out" / f"ngmix{NUM}.fits")
    with pytest.raises(ValueError, match="share object ids"):
        combine_parts([path, path], str(out / "x.fits"))
    assert not (out / "x.fits").exists()


def test_wrong_inputs_one_clear_error(tile, tmp_path):
    config = _config(tmp_path, tile["data"]["files"]["log_wcs"])
    with pytest.raises(ValueError, match="expected 6 input files"):
        ngmix_runner(_inputs(tile["data"]["files"])[:4], {"output": str(tmp_path)}, NUM,
                     config, "NGMIX_RUNNER", logging.getLogger("x"))
    config = _config(tmp_path, str(tmp_path / "missing.sqlite"))
    with pytest.raises(FileNotFoundError, match="LOG_WCS"):
        ngmix_runner(_inputs(tile["data"]["files"]), {"output": str(tmp_path),
                                                      "run": str(tmp_path),
                                                      "run_log": str(tmp_path / "r.jsonl")},
                     NUM, config, "NGMIX_RUNNER", logging.getLogger("x"))


def test_select_rows_slices():
    ids = np.array([5, 1, 9, 3, 7, 2, 8])
    assert list(select_rows(ids)) == list(range(7))
    assert list(select_rows(ids, id_min=3, id_max=8)) == [0, 3, 4, 6]
    # ShapePipe: a limit <= 0 is no limit.
    assert list(select_rows(ids, id_min=0, id_max=0)) == list(range(7))
    parts = [select_rows(ids, 2, -1, p, 3) for p in (1, 2, 3)]
    assert [len(p) for p in parts] == [2, 2, 2]
    assert list(np.concatenate(parts)) == list(select_rows(ids, 2, -1))
    assert len(select_rows(ids, 100, -1, 2, 4)) == 0
    with pytest.raises(ValueError, match="split part 4 of 3"):
        select_rows(ids, part=4, n_part=3)


def test_store_reader(tmp_path):
    from shapepipe.modules.ngmix.tile import StoreReader

    path = str(tmp_path / "s.sqlite")
    store = open_store(path, "n")
    store["3"] = {"2000001-0": {"VIGNET": np.arange(4.0).reshape(2, 2)}}
    store.commit()
    store.close()
    reader = StoreReader(path)
    np.testing.assert_array_equal(reader["3"]["2000001-0"]["VIGNET"], [[0, 1], [2, 3]])
    with pytest.raises(KeyError):
        reader["4"]
    reader.close()
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="not a stamp store"):
        StoreReader(str(bad))
    with pytest.raises(FileNotFoundError, match="stamp store not found"):
        StoreReader(str(tmp_path / "none.sqlite"))


def _assert_close_to_reference(cat, reference, rows):
    """Every column but nfev equal to the in-process reference rows, to 1e-6."""
    for t, tab in cat.items():
        ref = reference[t][rows]
        for name in tab.dtype.names:
            if name != "nfev":
                np.testing.assert_allclose(tab[name], ref[name], rtol=1e-6, atol=1e-7,
                                           err_msg=f"{t} {name}")


def test_through_the_pipeline(tile, sp):
    """ShapePipe's file patterns and numbering bind the six inputs; one job per tile."""
    data_dir = str(tile["tmp"] / "data")
    path = sp.config(f"""
        [NGMIX_RUNNER]
        LOG_WCS = {tile['data']['files']['log_wcs']}
        SEED = 7
        ID_OBJ_MIN = 3
        ID_OBJ_MAX = 4
        """, modules="ngmix_runner", input_dir=data_dir)
    assert sp.run(path) == 0
    assert sp.outputs("ngmix_runner") == [f"ngmix{NUM}.fits"]
    cat = read_catalog(str(sp.out / sp.runs()[-1] / "ngmix_runner" / "output"
                           / f"ngmix{NUM}.fits"))
    # The job runs in a worker process: after other tests have set this process's BLAS
    # threading, its rounding can differ by an ulp, which the fits' tolerance may amplify (as
    # in the N_SPLIT test below). Bit equality is checked in process by the split test above.
    _assert_close_to_reference(cat, tile["cat"], slice(2, 4))


def _framework_splits():
    import inspect

    from shapepipe.modules.module_decorator import module_runner

    return "combine" in inspect.signature(module_runner).parameters


@pytest.mark.skipif(not _framework_splits(), reason="the framework's N_SPLIT is not merged")
def test_n_split_through_the_pipeline(tile, sp):
    """N_SPLIT = 2: two part jobs, combined into one catalogue equal to the unsplit one."""
    path = sp.config(f"""
        [NGMIX_RUNNER]
        LOG_WCS = {tile['data']['files']['log_wcs']}
        SEED = 7
        ID_OBJ_MIN = 2
        ID_OBJ_MAX = 4
        N_SPLIT = 2
        """, modules="ngmix_runner", input_dir=str(tile["tmp"] / "data"))
    assert sp.run(path) == 0
    assert sp.outputs("ngmix_runner") == [f"ngmix{NUM}.fits"]
    cat = read_catalog(str(sp.out / sp.runs()[-1] / "ngmix_runner" / "output"
                           / f"ngmix{NUM}.fits"))
    # The parts run in worker processes whose BLAS threading differs from this process's:
    # rounding differences (1e-16) grow to ~1e-8 through the fits' convergence tolerance.
    # The in-process split test above checks bit equality.
    _assert_close_to_reference(cat, tile["cat"], slice(1, 4))


def test_neighbour_mask_is_the_voronoi_complement():
    from shapepipe.modules.ngmix.tile import neighbour_mask

    mask = neighbour_mask((21, 21), 10.0, 10.0, np.array([18.0, 10.0]), np.array([10.0, -30.0]))
    # Pixels nearer to the neighbour at x = 18 (beyond x = 14) are masked; the one far below
    # the stamp owns the bottom rows only beyond the bisector at y = -10 (none).
    assert not mask[:, :15].any() and mask[:, 15:].all()
    assert not neighbour_mask((5, 5), 2.0, 2.0, np.array([]), np.array([])).any()
