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
    # Both S/N populations are reported for each design.
    for design in "mc":
        for population in ("number counts", "log-uniform"):
            assert f"design {design}, {population} S/N population" in out
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


def test_leakage_is_reported_as_alpha(bench, capsys):
    assert bench.main(["--epochs", "1", "--designs", "c", "--n-gal-c", "2",
                       "--psf-g-mean", "0.03,0.03", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "alpha1 = c1/0.03" in out and "alpha2 = c2/0.03" in out
    assert "seed 7" in out and "design m" not in out


@pytest.mark.parametrize("case", ["small", "wcs", "masked", "psf_model"])
def test_harder_cases_measure(bench, case):
    # Every case draws, measures and sums its galaxies (noiseless: the method's floor).
    groups = bench.run(2, 1, 1, design="m", noiseless=True, progress=False, case=case, seed=3)
    assert groups["D1"].shape == (2,) and not groups["flagged"].any()
    b = bench.bias_from_groups(groups, bench.SHEAR)
    # Noiseless and paired: even the harder cases stay within a few per cent of the truth.
    assert abs(b["m"]) < 0.05


def test_harder_case_options_change_only_what_they_say():
    from shapepipe.sim.shear_stamps import draw_group

    base = draw_group(4, 9, (0.01, 0.0), rotations=(0,))
    masked = draw_group(4, 9, (0.01, 0.0), rotations=(0,), mask_fraction=0.02)
    good = ~masked["mask"]
    assert masked["mask"].any() and np.array_equal(base["image"][good], masked["image"][good])
    # The +-g and +-n stamps share their masks.
    assert all(np.array_equal(masked["mask"][0], masked["mask"][k]) for k in range(4))
    fitted = draw_group(4, 9, (0.01, 0.0), rotations=(0,), psf_star_snr=500.0)
    assert np.array_equal(fitted["image"], base["image"])
    assert np.array_equal(fitted["psf_true"][0], base["psf"][0, 0])
    assert 1e-5 < np.abs(fitted["psf"][0, 0] - base["psf"][0, 0]).max() < 0.05
    with pytest.raises(ValueError, match="rotate_noise"):
        draw_group(0, 1, (0.01, 0.0), rotate_noise=True, mask_fraction=0.01)


def test_max_gain_flags_an_object():
    from shapepipe.modules.ngmix import FLAG_MAX_GAIN, make_stamp_obs, measure_object
    from shapepipe.sim.shear_stamps import draw_group

    st = draw_group(1, 5, (0.0, 0.0), rotations=(0,))
    obs = [make_stamp_obs(st["image"][0, 0], st["weight"][0, 0], st["psf"][0, 0], 0.187)]
    rows = measure_object(obs, 1, seed=1, max_gain=1e6)
    assert not rows["noshear"]["flags"] & FLAG_MAX_GAIN
    rows = measure_object(obs, 1, seed=1, max_gain=0.5)
    assert rows["noshear"]["flags"] & FLAG_MAX_GAIN and rows["noshear"]["mcal_flags"]


def test_symmetric_fill_removes_most_of_the_masked_pixel_bias(bench):
    # Noiseless exponential galaxies with 1% bad pixels and a bad column: the Gaussian-model
    # fill biases the response (m1 ~ -0.004 on 100 galaxies); the mirror fill much less.
    model = bench.bias_from_groups(bench.run(12, 1, 1, noiseless=True, progress=False,
                                             case="masked", seed=16005, fill="model"),
                                   bench.SHEAR)
    mirror = bench.bias_from_groups(bench.run(12, 1, 1, noiseless=True, progress=False,
                                              case="masked", seed=16005, fill="symmetric"),
                                    bench.SHEAR)
    assert abs(mirror["m"]) < abs(model["m"]) / 2
