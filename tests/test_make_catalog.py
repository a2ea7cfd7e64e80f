"""make_catalog: the final catalogue (columns, matching by NUMBER, NaN for what was not
measured, SPREAD_CLASS, PSF columns), through the pipeline with ShapePipe's alias."""

import os

import numpy as np
import pytest
from astropy.io import fits

from shapepipe.modules.make_catalog import (
    NGMIX_TYPES,
    NOT_MEASURED_FLAG,
    match_ids,
    spread_class,
)
from shapepipe.modules.ngmix import COLUMNS, write_catalog
from shapepipe.utils.stamp_store import open_store
from tests.tile_data import write_tile_catalog

N = 6


def _ngmix_rows(ids, rng):
    """ngmix rows ({type: row}) in shapepipe.modules.ngmix's format, distinct per type."""
    rows = []
    for obj in ids:
        per_type = {}
        for j, t in enumerate(("noshear", "1p", "1m", "2p", "2m")):
            row = {name: (rng.normal() if dt == "f8" else 0) for name, dt in COLUMNS}
            row.update(id=int(obj), n_epoch_model=2, flags=j, mcal_flags=0, moments_fail=0,
                       g1=0.01 * obj + j, g2=-0.01 * obj - j, T_r=0.001 * obj + j,
                       s2n_r=10.0 * obj + j)
            per_type[t] = row
        rows.append(per_type)
    return rows


def _inputs(d, rng, sm_mode="new"):
    ids = np.arange(101, 101 + N)
    vign = rng.normal(size=(N, 5, 5))
    cols = {"NUMBER": ids, "XWIN_WORLD": rng.uniform(size=N), "MAG_AUTO": rng.uniform(20, 24, N),
            "FLAGS": np.arange(N), "VIGNET": vign}
    write_tile_catalog(str(d / "tile_sexcat-270-283.fits"), cols)
    sm = np.array([0.0005, -0.001, 0.02, 0.005, np.nan, 0.0])
    err = np.array([0.0001, 0.0001, 0.001, 0.002, np.nan, 0.0015])
    sm_cols = {"NUMBER": ids[::-1], "SPREAD_MODEL": sm[::-1], "SPREADERR_MODEL": err[::-1]}
    if sm_mode == "add":
        sm_cols = {**{k: v[::-1] for k, v in cols.items()}, **sm_cols}
    write_tile_catalog(str(d / "sexcat_sm-270-283.fits"), sm_cols)
    # ngmix: objects 101..104 only, in another order
    write_catalog(str(d / "ngmix-270-283.fits"), _ngmix_rows([104, 101, 103, 102], rng))
    store = open_store(str(d / "galaxy_psf-270-283.sqlite"), "n")
    for k, obj in enumerate(ids):
        if k == 5:
            store[str(obj)] = "empty"
            continue
        store[str(obj)] = {
            f"200000{e}-{k % 2}": {"VIGNET": np.ones((3, 3)),
                                   "SHAPES": {"E1_PSF_HSM": 0.01 * e, "E2_PSF_HSM": -0.02 * e,
                                              "SIGMA_PSF_HSM": 1.5 + e,
                                              "FLAG_PSF_HSM": int(k == 4 and e == 2)}}
            for e in (1, 2)}
    store.commit()
    store.close()
    return ids, sm, err


def test_match_ids_and_spread_class():
    np.testing.assert_array_equal(match_ids([3, 7, 1, 9], [9, 1, 3]), [2, -1, 1, 0])
    np.testing.assert_array_equal(match_ids([1], []), [-1])
    c = spread_class([0.0, 0.02, 0.005, np.nan, -0.01], [0.001, 0.0, 0.0, np.nan, 0.0])
    np.testing.assert_array_equal(c, [0, 1, 2, 2, 2])


@pytest.mark.parametrize("alias", ["make_catalog_runner", "make_cat_runner"])
def test_final_catalogue(sp, alias):
    rng = np.random.default_rng(4)
    ids, sm, err = _inputs(sp.data, rng)
    config = sp.config(f"""
        [{alias.upper()}]
        FILE_PATTERN = tile_sexcat, sexcat_sm, galaxy_psf, ngmix
        FILE_EXT = .fits, .fits, .sqlite, .fits
        NUMBERING_SCHEME = -000-000
        SM_DO_CLASSIFICATION = True
        SM_STAR_STRESH = 0.003
        SM_GAL_THRESH = 0.01
        SAVE_PSF_DATA = True
        """, modules=alias)
    assert sp.run(config) == 0
    run = sp.runs()[-1]
    out = os.path.join(run, "make_catalog_runner", "output", "final_cat-270-283.fits")
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "RESULTS"]
        d = hdul["RESULTS"].data
    names = d.columns.names
    assert "VIGNET" not in names and {"NUMBER", "MAG_AUTO", "FLAGS", "TILE_ID"} <= set(names)
    np.testing.assert_array_equal(d["NUMBER"], ids)
    assert d["TILE_ID"][0] == pytest.approx(270.283)
    np.testing.assert_allclose(d["SPREAD_MODEL"], sm, rtol=1e-6)
    np.testing.assert_array_equal(d["SPREAD_CLASS"], [0, 0, 1, 2, 2, 0])
    for j, t in enumerate(NGMIX_TYPES):
        for col in ("ELL", "ELL_ERR", "T", "T_ERR", "Tpsf", "SNR", "FLUX", "FLUX_ERR", "MAG",
                    "MAG_ERR", "FLAGS", "ELL_PSFo", "T_PSFo", "T_R", "SNR_R"):
            assert f"NGMIX_{col}_{t}" in names
        # Round size and S/N of each type, NaN where not measured.
        np.testing.assert_allclose(d[f"NGMIX_T_R_{t}"][:4], 0.001 * ids[:4] + j)
        np.testing.assert_allclose(d[f"NGMIX_SNR_R_{t}"][:4], 10.0 * ids[:4] + j)
        assert np.all(np.isnan(d[f"NGMIX_T_R_{t}"][4:]))
        assert np.all(np.isnan(d[f"NGMIX_SNR_R_{t}"][4:]))
        g = d[f"NGMIX_ELL_{t}"]
        np.testing.assert_allclose(g[:4, 0], 0.01 * ids[:4] + j)
        np.testing.assert_allclose(g[:4, 1], -0.01 * ids[:4] - j)
        assert np.all(np.isnan(g[4:])) and np.all(np.isnan(d[f"NGMIX_T_{t}"][4:]))
        np.testing.assert_array_equal(d[f"NGMIX_FLAGS_{t}"], [j] * 4 + [NOT_MEASURED_FLAG] * 2)
    np.testing.assert_array_equal(d["NGMIX_N_EPOCH"], [2, 2, 2, 2, 0, 0])
    np.testing.assert_array_equal(d["NGMIX_MCAL_FLAGS"][4:], NOT_MEASURED_FLAG)
    # PSF: mean over epochs with a successful HSM fit; NaN without PSF.
    np.testing.assert_allclose(d["E1_PSF_HSM"][:4], 0.015)
    np.testing.assert_allclose(d["SIGMA_PSF_HSM"][4], 2.5)  # epoch 2 failed for row 4
    assert np.isnan(d["E1_PSF_HSM"][5]) and np.isnan(d["SIGMA_PSF_HSM"][5])
    np.testing.assert_array_equal(d["PSF_FLAG_2"], [0, 0, 0, 0, 1, 1])
    np.testing.assert_allclose(d["PSF_ELL_1"][0], [0.01, -0.02])


def test_three_inputs_with_sexcat_sm_in_add_mode(sp):
    rng = np.random.default_rng(5)
    ids, sm, _ = _inputs(sp.data, rng, sm_mode="add")
    config = sp.config("""
        [MAKE_CATALOG_RUNNER]
        FILE_PATTERN = sexcat_sm, galaxy_psf, ngmix
        FILE_EXT = .fits, .sqlite, .fits
        NUMBERING_SCHEME = -000-000
        SM_DO_CLASSIFICATION = False
        """, modules="make_catalog_runner")
    assert sp.run(config) == 0
    out = os.path.join(sp.runs()[-1], "make_catalog_runner", "output", "final_cat-270-283.fits")
    d = fits.getdata(out, "RESULTS")
    # rows follow the catalogue given (here sexcat_sm, reversed), columns appear once
    np.testing.assert_array_equal(d["NUMBER"], ids[::-1])
    assert "SPREAD_CLASS" not in d.columns.names and "VIGNET" not in d.columns.names
    assert d.columns.names.count("SPREAD_MODEL") == 1
    np.testing.assert_allclose(d["SPREAD_MODEL"], sm[::-1], rtol=1e-6)


def test_ngmix_catalogue_without_round_columns_gives_nan():
    """An ngmix catalogue written before T_r / s2n_r existed still makes a final catalogue."""
    from numpy.lib import recfunctions as rfn

    from shapepipe.modules.make_catalog import ngmix_columns
    from shapepipe.modules.ngmix import rows_to_tables

    tables = rows_to_tables(_ngmix_rows([3, 1], np.random.default_rng(0)))
    old = {t: rfn.drop_fields(tab, ["T_r", "s2n_r"], usemask=False) for t, tab in tables.items()}
    cols = {c.name: c.array for c in ngmix_columns(np.array([1, 2, 3]), old)}
    new = {c.name: c.array for c in ngmix_columns(np.array([1, 2, 3]), tables)}
    for t in NGMIX_TYPES:
        assert np.all(np.isnan(cols[f"NGMIX_T_R_{t}"]))
        assert np.all(np.isnan(cols[f"NGMIX_SNR_R_{t}"]))
        np.testing.assert_array_equal(cols[f"NGMIX_SNR_{t}"], new[f"NGMIX_SNR_{t}"])
        np.testing.assert_allclose(new[f"NGMIX_SNR_R_{t}"][[0, 2]], [10.0, 30.0] + np.array(
            [NGMIX_TYPES.index(t)] * 2))
        assert np.isnan(new[f"NGMIX_SNR_R_{t}"][1])
