"""Built-in PSF model (psf_model) against PSFEx on the same stars, side by side.

For each stamp size (25x25 and 51x51 VIGNETs) and each of a few simulated CCDs (~270 stars
with S/N 50-500, a Moffat PSF whose size and shear vary over the CCD, a few blended stars),
both tools fit a degree-2 pixel-basis model (the project's example/psfex/default.psfex, with
PSF_SIZE set to the stamp size). Reported:

- time: median wall time of the fit, reading the catalogue and writing the .psf
  (PSFEx: the program run; psf_model: ``build_psf_model`` in this process);
- accuracy: HSM e1, e2 and sigma of the model at every star position against the true PSF
  (noiseless, known here), mean and rms over stars and CCDs.

Run: ``python bench/bench_psf.py`` (``--quick``: 25x25 only).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import galsim
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shapepipe.modules.psf_model.build import build_psf_model  # noqa: E402
from shapepipe.modules.psfex.dotpsf import read_psf  # noqa: E402
from shapepipe.modules.psfex.ldac_fix import prepare_for_psfex  # noqa: E402
from shapepipe.sim.psf_stars import make_star_catalogue  # noqa: E402
from shapepipe.utils.ldac import read_ldac  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PSFEX = os.path.join(HERE, "..", "example", "psfex", "default.psfex")


def hsm(image):
    res = galsim.hsm.FindAdaptiveMom(galsim.ImageD(image), strict=False)
    return res.observed_shape.g1, res.observed_shape.g2, res.moments_sigma


def residuals(model, cat, psf, size):
    data, _ = read_ldac(cat)
    pos = np.stack([data["XWIN_IMAGE"], data["YWIN_IMAGE"]], axis=1)
    stamps = model.pixel_stamps(pos, size=size)
    out = []
    for (x, y), stamp in zip(pos, stamps):
        a, b = hsm(stamp), hsm(psf.draw(x, y, size))
        out.append((a[0] - b[0], a[1] - b[1], (a[2] - b[2]) / b[2]))
    return np.array(out)


def run_psfex(cat, work, config):
    start = time.perf_counter()
    proc = subprocess.run(["psfex", cat, "-c", config, "-PSF_DIR", work, "-OUTCAT_TYPE",
                           "FITS_LDAC", "-OUTCAT_NAME", os.path.join(work, "psfex_cat.cat")],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or "*Error*" in proc.stderr:
        raise RuntimeError(f"psfex failed: {proc.stderr[-500:]}")
    return elapsed, os.path.join(work, os.path.splitext(os.path.basename(cat))[0] + ".psf")


def run_builtin(cat, work, size):
    start = time.perf_counter()
    out = os.path.join(work, "builtin.psf")
    build_psf_model(cat, out, os.path.join(work, "builtin_cat.cat"), {"PSF_SIZE": [size, size]})
    return time.perf_counter() - start, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="25x25 only")
    parser.add_argument("--stars", type=int, default=270)
    parser.add_argument("--ccds", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("psfex") is None:
        sys.exit("psfex not found: the reference is needed in the same run")
    sizes = [25] if args.quick else [25, 51]
    repeats = 1  # each CCD is a timing sample: the median is over CCDs x repeats
    work = tempfile.mkdtemp(prefix="bench_psf_")
    print(f"{args.stars} stars per CCD, {args.ccds} CCDs, {repeats} timing repeat(s); "
          "machine shared with other jobs, times are indicative")
    try:
        for size in sizes:
            config = os.path.join(work, f"bench{size}.psfex")
            with open(DEFAULT_PSFEX) as handle:
                text = handle.read().replace("PSF_SIZE        51,51", f"PSF_SIZE {size},{size}")
            with open(config, "w") as handle:
                handle.write(text)
            t_psfex, t_mine, r_psfex, r_mine = [], [], [], []
            for ccd in range(args.ccds):
                cat = os.path.join(work, f"stars{size}_{ccd}.fits")
                truth = make_star_catalogue(cat, n_stars=args.stars, size=size, n_outliers=5,
                                            seed=100 + ccd)
                ready = os.path.join(work, f"psfex{size}_{ccd}.fits")
                prepare_for_psfex(cat, ready)
                for _ in range(repeats):
                    elapsed, psfex_psf = run_psfex(ready, work, config)
                    t_psfex.append(elapsed)
                    elapsed, mine_psf = run_builtin(cat, work, size)
                    t_mine.append(elapsed)
                r_psfex.append(residuals(read_psf(psfex_psf), cat, truth["psf"], size))
                r_mine.append(residuals(read_psf(mine_psf), cat, truth["psf"], size))
            r_psfex, r_mine = np.concatenate(r_psfex), np.concatenate(r_mine)
            tp, tm = np.median(t_psfex), np.median(t_mine)
            print(f"\n== {size}x{size} stamps ==")
            print(f"time   PSFEx {tp:7.3f} s   psf_model {tm:7.3f} s   ratio psf_model/PSFEx "
                  f"{tm / tp:.3f}")
            for name, res in (("PSFEx", r_psfex), ("psf_model", r_mine)):
                mean, rms = res.mean(axis=0), res.std(axis=0)
                print(f"{name:9s} model-truth: e1 mean {mean[0]:+.2e} rms {rms[0]:.2e} | "
                      f"e2 mean {mean[1]:+.2e} rms {rms[1]:.2e} | "
                      f"dsigma/sigma mean {mean[2]:+.2e} rms {rms[2]:.2e}")
            ratio = np.sqrt((r_mine**2).mean(axis=0) / (r_psfex**2).mean(axis=0))
            print(f"rms-error ratio psf_model/PSFEx: e1 {ratio[0]:.3f} e2 {ratio[1]:.3f} "
                  f"size {ratio[2]:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
