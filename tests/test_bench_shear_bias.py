"""The shear-bias benchmark's machinery on a few galaxies: designs, saving, resuming, report."""

import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_shear_bias", os.path.join(ROOT, "bench", "bench_shear_bias.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resumed_run_equals_uninterrupted_run(bench, tmp_path):
    # Galaxies are drawn and measured from their index alone: a run resumed from a saved
    # part gives exactly the sums of a run made in one go.
    whole = bench.run(6, 1, 1, design="m", save=str(tmp_path / "whole.npz"))
    bench.run(3, 1, 1, design="m", save=str(tmp_path / "part.npz"))
    resumed = bench.run(6, 1, 1, design="m", save=str(tmp_path / "part.npz"), resume=True)
    for key in bench.GROUP_KEYS:
        np.testing.assert_array_equal(resumed[key], whole[key], err_msg=key)
    with np.load(tmp_path / "part.npz") as saved:
        assert int(saved["next_index"]) == 6
    # Design m has four stamps per galaxy and importance weights around 1.
    assert whole["D1"].shape == (6,) and np.all(whole["weight"] > 0)


def test_cli_runs_and_reports(bench, tmp_path, capsys):
    save = str(tmp_path / "runs")
    assert bench.main(["--epochs", "1", "--n-gal", "4", "--n-gal-c", "2", "--save", save]) == 0
    out = capsys.readouterr().out
    assert "design m (target for m)" in out and "design c (target for c)" in out
    assert "reference without noise, first 4 galaxies" in out
    assert "(along the applied shear" in out
    assert bench.main(["--epochs", "1", "--n-gal", "4", "--n-gal-c", "2", "--save", save,
                       "--report"]) == 0
    report = capsys.readouterr().out
    # The report of the saved sums repeats the figures of the run.
    line = [x for x in out.splitlines() if x.strip().startswith("m1 =")][0]
    assert line in report
    with pytest.raises(SystemExit):
        bench.main(["--report"])
    # An epoch count never run is reported as such.
    assert bench.main(["--epochs", "3", "--save", save, "--report"]) == 0
    assert "design m: no saved run" in capsys.readouterr().out
    # Saved runs are not overwritten unless asked.
    with pytest.raises(SystemExit):
        bench.main(["--epochs", "1", "--n-gal", "4", "--save", save])
    assert "--resume" in capsys.readouterr().err
