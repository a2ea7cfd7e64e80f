"""scripts/merge_final_cat.py: streaming concatenation of final catalogues."""

import importlib.util
import os

import numpy as np
import pytest
from astropy.io import fits

_SPEC = importlib.util.spec_from_file_location(
    "merge_final_cat",
    os.path.join(os.path.dirname(__file__), "..", "scripts", "merge_final_cat.py"))
merge_final_cat = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(merge_final_cat)


def _final_cat(path, n, seed, extra=False, ell_format="2D"):
    rng = np.random.default_rng(seed)
    cols = [
        fits.Column(name="NUMBER", format="J", array=np.arange(1, n + 1)),
        fits.Column(name="TILE_ID", format="D", array=np.full(n, seed + 0.5)),
        fits.Column(name="NGMIX_ELL_NOSHEAR", format=ell_format, array=rng.normal(size=(n, 2))),
        fits.Column(name="SPREAD_CLASS", format="I", array=rng.integers(0, 3, n)),
        fits.Column(name="IS_OK", format="L", array=rng.integers(0, 2, n).astype(bool)),
    ]
    if extra:
        cols.append(fits.Column(name="EXTRA", format="E", array=np.zeros(n)))
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="RESULTS")]
                 ).writeto(path)
    return fits.getdata(path, "RESULTS")


def test_merge_all_columns_and_subset(tmp_path, monkeypatch):
    sub = tmp_path / "run" / "make_catalog_runner" / "output"
    sub.mkdir(parents=True)
    parts = [_final_cat(str(sub / f"final_cat-{i:03d}-000.fits"), n, i)
             for i, n in enumerate((7, 0, 12))]
    out = str(tmp_path / "all.fits")
    monkeypatch.setattr(merge_final_cat, "BLOCK", 5)  # several blocks per file
    assert merge_final_cat.main([str(tmp_path / "run"), out]) == 0
    with fits.open(out) as hdul:
        d = hdul["RESULTS"].data
        assert len(d) == 19
        for name in parts[0].columns.names:
            np.testing.assert_array_equal(d[name], np.concatenate([p[name] for p in parts]))
        assert d["IS_OK"].dtype == bool
    assert merge_final_cat.main([str(tmp_path / "run"), out, "--columns",
                                 "SPREAD_CLASS,NUMBER"]) == 0
    d = fits.getdata(out, "RESULTS")
    assert d.columns.names == ["SPREAD_CLASS", "NUMBER"]
    np.testing.assert_array_equal(d["NUMBER"], np.r_[np.arange(1, 8), np.arange(1, 13)])


@pytest.mark.parametrize("kind", ["extra", "format"])
def test_mismatched_columns_one_clear_error_no_output(tmp_path, capsys, kind):
    _final_cat(str(tmp_path / "final_cat-000-000.fits"), 3, 0)
    _final_cat(str(tmp_path / "final_cat-001-000.fits"), 3, 1, extra=kind == "extra",
               ell_format="2E" if kind == "format" else "2D")
    out = str(tmp_path / "all.fits")
    assert merge_final_cat.main([str(tmp_path), out]) == 2
    err = capsys.readouterr().err
    assert "final_cat-001-000.fits" in err
    assert ("extra EXTRA" if kind == "extra" else "format/shape of NGMIX_ELL_NOSHEAR") in err
    assert not os.path.exists(out) and not [f for f in os.listdir(tmp_path) if "tmp" in f]
    # the common columns still merge
    assert merge_final_cat.main([str(tmp_path), out, "--columns", "NUMBER,TILE_ID"]) == 0
    assert len(fits.getdata(out, "RESULTS")) == 6


def test_no_catalogue(tmp_path, capsys):
    assert merge_final_cat.main([str(tmp_path), str(tmp_path / "x.fits")]) == 2
    assert "no final_cat-*.fits" in capsys.readouterr().err
