"""SETools: time to apply the example star selection to a CCD catalogue, and mode() accuracy.

1. Time. A 3000-object FITS_LDAC catalogue (one CCD) with a stellar locus; the project's
   ``example/setools/star_selection.setools`` without its plots (masks, random split,
   statistics: 3 output catalogues and a text file). Reference measured in the same run:
   the same selection hand-written in numpy with astropy I/O (read, cuts, mode, the same
   output files). Also the full file with its 3 PNG plots, for the plotting cost.
2. Accuracy of ``mode()`` on the stellar-locus problem it is used for: 300 preselected
   objects, 20% stars at FWHM 3.6 pix (sigma 0.05) over galaxies uniform in 2.5-12 pix;
   RMS error over 300 samples, against two references computed in the same run: the
   median and the centre of the tallest bin of a sqrt(n)-bin histogram.

Usage: python bench/bench_setools.py [--quick]
"""

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from astropy.io import fits

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from shapepipe.modules.setools import SETools, parse_setools, robust_mode  # noqa: E402
from shapepipe.utils.ldac import write_ldac  # noqa: E402
from shapepipe.utils.rng import make_rng  # noqa: E402

EXAMPLE = os.path.join(os.path.dirname(HERE), "example", "setools", "star_selection.setools")


def make_catalogue(path, n=3000, n_star=400, seed=1):
    rng = np.random.default_rng(seed)
    table = np.zeros(n, dtype=[
        ("NUMBER", "i4"), ("XWIN_IMAGE", "f8"), ("YWIN_IMAGE", "f8"), ("X_IMAGE", "f4"),
        ("Y_IMAGE", "f4"), ("FWHM_IMAGE", "f4"), ("MAG_AUTO", "f4"), ("FLAGS", "i2"),
        ("IMAFLAGS_ISO", "i4"), ("SNR_WIN", "f4"), ("FLUX_APER", "f4"),
        ("VIGNET", "f4", (51, 51)),
    ])
    table["NUMBER"] = np.arange(1, n + 1)
    table["X_IMAGE"] = table["XWIN_IMAGE"] = rng.uniform(1, 2048, n)
    table["Y_IMAGE"] = table["YWIN_IMAGE"] = rng.uniform(1, 4612, n)
    table["FWHM_IMAGE"] = np.r_[rng.normal(3.6, 0.05, n_star), rng.uniform(2.5, 12, n - n_star)]
    table["MAG_AUTO"] = np.r_[rng.uniform(17, 23, n_star), rng.uniform(18, 26, n - n_star)]
    table["FLAGS"] = np.where(rng.random(n) < 0.1, 2, 0)
    table["SNR_WIN"] = rng.uniform(5, 500, n)
    header = fits.Header()
    header["NAXIS1"] = 2048
    header["NAXIS2"] = 4612
    write_ldac(path, header, table)


def without_plots(text):
    """The example file with its [PLOT:...] sections removed."""
    return re.sub(r"\[PLOT:[^\]]*\].*?(?=^\[|\Z)", "", text, flags=re.S | re.M)


def hand_written(cat_path, out, num, seed):
    """The example selection in plain numpy + astropy (the reference)."""
    with fits.open(cat_path, memmap=False) as hdul:
        data = hdul[2].data
        f, m = data["FWHM_IMAGE"], data["MAG_AUTO"]
        ok = (data["FLAGS"] == 0) & (data["IMAFLAGS_ISO"] == 0)
        pre = (m > 0) & (m < 21) & (f > 0.3 / 0.186) & (f < 1.5 / 0.187) & ok
        mode = robust_mode(f[pre])
        stars = (m > 18) & (m < 22) & (f <= mode + 0.2) & (f >= mode - 0.2) & ok
        idx = np.flatnonzero(stars)
        n_first = int(np.floor(0.2 * idx.size + 0.5))
        rng = make_rng(seed, num, "star_split")
        chosen = np.zeros(idx.size, bool)
        chosen[rng.choice(idx.size, n_first, replace=False)] = True
        for name, sel in (("mask/star_selection", stars),
                          ("rand_split/star_split_ratio_20", idx[chosen]),
                          ("rand_split/star_split_ratio_80", idx[~chosen])):
            os.makedirs(os.path.dirname(os.path.join(out, name)), exist_ok=True)
            table = fits.BinTableHDU(data=data[sel], header=hdul[2].header)
            fits.HDUList([hdul[0], hdul[1], table]).writeto(os.path.join(out, f"{name}{num}.fits"))
        fs = f[stars] * 0.187
        os.makedirs(os.path.join(out, "stat"), exist_ok=True)
        with open(os.path.join(out, "stat", f"star_stat{num}.txt"), "w") as handle:
            handle.write("# Statistics\n")
            for key, value in (("Nb objects full cat", len(f)), ("Nb objects not flagged",
                               int(pre.sum())), ("Nb stars", int(stars.sum())),
                               ("Mean star fwhm (arcsec)", fs.mean()),
                               ("Std star fwhm (arcsec)", fs.std()),
                               ("Robust std", 1.4826 * np.median(np.abs(fs - np.median(fs)))),
                               ("Mode", mode * 0.187), ("Min", (mode - 0.2) * 0.187),
                               ("Max", (mode + 0.2) * 0.187)):
                handle.write(f"{key} = {value}\n")


def timed(func, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def hist_peak(x):
    counts, edges = np.histogram(x, bins=max(int(np.sqrt(x.size)), 1))
    k = int(np.argmax(counts))
    return 0.5 * (edges[k] + edges[k + 1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and samples")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    n_samples = 100 if args.quick else 300
    tmp = tempfile.mkdtemp(prefix="sp_bench_setools_")
    try:
        cat = os.path.join(tmp, "sexcat-2000001-3.fits")
        make_catalogue(cat)
        with open(EXAMPLE) as handle:
            text = handle.read()
        no_plots = parse_setools(without_plots(text), EXAMPLE)
        full = parse_setools(text, EXAMPLE)
        counter = iter(range(10**6))

        def run(setools):
            out = os.path.join(tmp, f"o{next(counter)}")
            SETools(cat, setools).process(out, "-2000001-3", seed=0)

        def ref():
            hand_written(cat, os.path.join(tmp, f"r{next(counter)}"), "-2000001-3", 0)

        run(no_plots)
        ref()  # warm up imports and caches
        t_ref = timed(ref, repeats)
        t_setools = timed(lambda: run(no_plots), repeats)
        t_full = timed(lambda: run(full), repeats)
        print("1. example star selection on a 3000-object catalogue (51x51 VIGNET), "
              f"median of {repeats}")
        print(f"   setools (masks, split, stats): {t_setools * 1e3:8.1f} ms")
        print(f"   hand-written numpy reference:  {t_ref * 1e3:8.1f} ms   "
              f"ratio {t_setools / t_ref:.2f}")
        print(f"   setools with the 3 PNG plots:  {t_full * 1e3:8.1f} ms   "
              f"(plots {(t_full - t_setools) * 1e3:.0f} ms)")

        rng = np.random.default_rng(42)
        errors = {"mode()": [], "median": [], "sqrt(n)-bin histogram peak": []}
        for _ in range(n_samples):
            x = np.r_[rng.normal(3.6, 0.05, 60), rng.uniform(2.5, 12, 240)]
            errors["mode()"].append(robust_mode(x) - 3.6)
            errors["median"].append(np.median(x) - 3.6)
            errors["sqrt(n)-bin histogram peak"].append(hist_peak(x) - 3.6)
        rms = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in errors.items()}
        t_mode = timed(lambda: robust_mode(x), 50)
        print(f"2. stellar-locus mode, {n_samples} samples of 300 objects (60 stars, "
              "sigma 0.05 pix)")
        for key, value in rms.items():
            print(f"   RMS error {key:28s} {value:.4f} pix   "
                  f"ratio mode()/this {rms['mode()'] / value:.3f}")
        print(f"   mode() time per call: {t_mode * 1e6:.0f} us")
        print("(machine shared with other engineers: timings are indicative)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
