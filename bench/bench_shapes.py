#!/usr/bin/env python
"""Speed of the metacalibration shape measurement (issue 7).

Metacalibration of 51x51 stamps (five sheared types with the noise correction, Gaussian
model, PSF fit, guesses, Levenberg-Marquardt fits) with 1 and with 5 epochs, on one core
(one process, one BLAS thread). Prints milliseconds per object and per object-epoch
(medians of repeats) and the ratio against a reference measured in the same run: making
the same sheared images with GalSim (InterpolatedImage, Deconvolve, shear, Convolve,
drawImage no_pixel, for the image and the noise image), i.e. the part that takes ~60% of
the time in the ngmix package. Targets: <= 25 ms per object-epoch; ngmix itself takes
~49 ms/object (1 epoch) and ~254 ms/object (5 epochs) on this machine.

    python bench/bench_shapes.py [--quick]
"""

import argparse
import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shapepipe.modules.ngmix import make_stamp_obs, measure_object  # noqa: E402
from shapepipe.sim.shear_stamps import make_stamp_set  # noqa: E402

SCALE = 0.187


def galsim_metacal_images(image, noise, psf_image, sigma_r, step=0.01):
    """Reference: the five sheared images (+ sheared rotated noise) made with GalSim."""
    import galsim

    psf_ii = galsim.InterpolatedImage(galsim.ImageD(psf_image, scale=SCALE))
    inv_psf = galsim.Deconvolve(psf_ii)
    reconv = galsim.Gaussian(sigma=sigma_r)
    out = []
    for im in (image, np.rot90(noise, 1)):
        ii = galsim.InterpolatedImage(galsim.ImageD(im, scale=SCALE))
        deconv = galsim.Convolve(ii, inv_psf)
        for g1, g2 in ((0, 0), (step, 0), (-step, 0), (0, step), (0, -step)):
            obj = galsim.Convolve(deconv.shear(g1=g1, g2=g2), reconv)
            out.append(obj.drawImage(nx=im.shape[1], ny=im.shape[0], scale=SCALE,
                                     method="no_pixel").array)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer objects and repeats")
    args = parser.parse_args(argv)
    n_obj = 6 if args.quick else 20
    repeats = 3 if args.quick else 5
    print("metacal speed, 51x51 stamps, gauss model, 5 types + noise correction, one core "
          "(machine shared with other engineers: figures are upper bounds)")
    results = {}
    for n_epoch in (1, 5):
        st = make_stamp_set((n_obj + 7) // 8, 17, (0.0, 0.0), n_epoch=n_epoch,
                            snr_range=(20.0, 100.0))
        obs = [[make_stamp_obs(st["image"][k, e], st["weight"][k, e], st["psf"][k, e], SCALE)
                for e in range(n_epoch)] for k in range(n_obj)]
        measure_object(obs[0], 0)          # warm-up (profile mixtures, imports)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for k in range(n_obj):
                measure_object(obs[k], int(st["id"][k]), seed=1)
            times.append((time.perf_counter() - t0) / n_obj)
        per_obj = float(np.median(times))
        # Reference: GalSim images for every epoch of the same objects.
        rng = np.random.default_rng(0)
        ref_times = []
        n_ref = max(2, n_obj // 4)
        for _ in range(repeats):
            t0 = time.perf_counter()
            for k in range(n_ref):
                for e in range(n_epoch):
                    noise = rng.standard_normal(st["image"][k, e].shape)
                    galsim_metacal_images(st["image"][k, e], noise, st["psf"][k, e], 0.33)
            ref_times.append((time.perf_counter() - t0) / n_ref)
        ref = float(np.median(ref_times))
        results[n_epoch] = (per_obj, ref)
        print(f"  {n_epoch} epoch(s): {per_obj * 1e3:7.1f} ms/object = "
              f"{per_obj * 1e3 / n_epoch:6.1f} ms/object-epoch "
              f"({1.0 / per_obj:6.1f} objects/s); reference GalSim sheared images alone "
              f"{ref * 1e3:7.1f} ms/object -> ratio ours/reference {per_obj / ref:5.2f}")
    worst = max(per / n for n, (per, _) in results.items())
    print(f"worst ms per object-epoch: {worst * 1e3:.1f} (target <= 25; ngmix ~49 for 1 "
          f"epoch, ~51 for 5 epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
