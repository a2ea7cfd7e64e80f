#!/usr/bin/env python
"""Benchmark of the simulated survey: objects rendered per second, and per-process scaling.

    python bench/bench_sim.py [--quick]

Prints, as medians of repeats:
- the rendering rate of shapepipe.sim (objects per second, one process, full CCD rendering:
  stars + galaxies + noise + saturation + cosmics, without the HSM truth) on small-survey CCDs;
- a reference measured in the same run: the same galaxies and stars drawn the straightforward way
  with GalSim (default GSParams, a generic Moffat beta = 3.3, fixed 64 x 64 stamps), and the
  ratio of the two rates;
- the wall-clock time of make_survey with 1 and 2 processes (small layout, 2 exposures x 4 CCDs)
  and the speed-up.
The machine may be shared: absolute numbers vary, the ratios are more stable.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapepipe.sim import geometry as geo  # noqa: E402
from shapepipe.sim import make_catalog, make_survey, render_ccd, small_params  # noqa: E402


def _naive_rate(cat, params, n_obj):
    """Objects/s drawing the first n_obj objects of CCD 0 the straightforward GalSim way."""
    import galsim

    header = geo.ccd_header(params, 0, 0)
    wcs = geo.make_wcs(header)
    x, y = geo.sky_to_pix(wcs, cat["RA"], cat["DEC"])
    inside = np.flatnonzero((x > 0) & (x < params.ccd_nx) & (y > 0) & (y < params.ccd_ny))
    # Same star/galaxy mix as the real CCD.
    idx = inside[np.linspace(0, inside.size - 1, min(n_obj, inside.size)).astype(int)]
    image = galsim.ImageF(params.ccd_nx, params.ccd_ny, scale=geo.PIXEL_SCALE)
    start = time.perf_counter()
    for i in idx:
        psf = galsim.Moffat(beta=3.3, fwhm=0.7).shear(g1=0.01, g2=0.01)
        flux = 10 ** (-0.4 * (float(cat["MAG"][i]) - geo.MAGZP))
        if cat["IS_STAR"][i]:
            prof = psf.withFlux(flux)
        else:
            disk = galsim.Exponential(half_light_radius=float(cat["HLR_DISK"][i]))
            bf = float(cat["BULGE_FRAC"][i])
            if bf > 0:
                bulge = galsim.DeVaucouleurs(half_light_radius=float(cat["HLR_BULGE"][i]))
                disk = galsim.Add([disk.withFlux(1 - bf), bulge.withFlux(bf)])
            gal = disk.shear(g1=float(cat["E1_INT"][i]), g2=float(cat["E2_INT"][i]))
            prof = galsim.Convolve(gal.shear(g1=0.02, g2=0.0).withFlux(flux), psf)
        stamp = prof.drawImage(nx=64, ny=64, scale=geo.PIXEL_SCALE,
                               center=galsim.PositionD(float(x[i]), float(y[i])))
        b = stamp.bounds & image.bounds
        if b.isDefined():
            image[b] += stamp[b]
    return idx.size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no scaling run")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    params = small_params()
    cat = make_catalog(params, 1)

    rates = []
    for r in range(repeats):
        ccds = [(0, r % 4)] if args.quick else [(0, r % 4), (1, (r + 1) % 4)]
        n = 0
        start = time.perf_counter()
        for i_exp, ccd in ccds:
            n += render_ccd(params, 1, i_exp, ccd, cat, hsm=False)["n_drawn"]
        rates.append(n / (time.perf_counter() - start))
    ours = statistics.median(rates)
    naive = statistics.median(_naive_rate(cat, params, 200 if args.quick else 400)
                              for _ in range(repeats))
    print(f"shapepipe.sim rendering: {ours:8.1f} objects/s per process "
          f"(full CCD incl. noise, small survey CCDs)")
    print(f"reference (plain GalSim, generic beta, 64x64 stamps): {naive:8.1f} objects/s")
    print(f"ratio sim / reference: {ours / naive:.2f}")

    if not args.quick:
        walls = {}
        scaling = small_params()
        scaling.dithers = scaling.dithers[:2]
        for nproc in (1, 2):
            times = []
            for _ in range(repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    make_survey(os.path.join(tmp, "d"), seed=1, params=scaling,
                                n_processes=nproc)
                    times.append(time.perf_counter() - start)
            walls[nproc] = statistics.median(times)
            print(f"make_survey (small layout, 2 x 4 CCDs) with {nproc} process(es): "
                  f"{walls[nproc]:.2f} s")
        print(f"speed-up 2 processes / 1: {walls[1] / walls[2]:.2f}")


if __name__ == "__main__":
    main()
