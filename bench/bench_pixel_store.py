#!/usr/bin/env python
"""Benchmark of the PixelStore: super-pixel reordering, add_exposure throughput, store size.

In one run, medians of repeats:
1. ``superpixelize`` (reshape/transpose, no Python loop) against forcepho's plain double
   loop over super-pixels, on a 4096 x 2048 image (s = 8);
2. ``PixelStore.add_exposure`` on full-size CCDs (2048 x 4612: background subtraction,
   masking with a bitmask, super-pixel reordering, HDF5 write) in MB/s of input image +
   inverse error, against the reference of writing the same two float32 arrays to HDF5 as
   they are (h5py, no processing);
3. the store's size per CCD against the raw float32 image + weight;
4. with ``--psf-dir DIR`` (a psfex_runner or psf_model_runner output): the Gaussian-mixture
   PSFs of every ``.psf`` there at a 3 x 3 grid of a CCD, HSM sigma of the mixture against
   the model's, for the two-stage fit (EM + least squares) and for EM alone.

    python bench/bench_pixel_store.py [--quick] [--psf-dir DIR] [--ccd-size NX,NY]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import h5py  # noqa: E402

from shapepipe.modules.ngmix import Jacobian, fit_psf_em  # noqa: E402
from shapepipe.modules.pixel_store import (  # noqa: E402
    ImageSet,
    PixelStore,
    grid_locations,
    mixture_image,
    psf_mixtures_from_model,
    superpixelize,
)

NX, NY = 2048, 4612


def loop_superpixelize(im, ierr, s):
    """forcepho's reference: a Python double loop over super-pixels."""
    nsx, nsy = im.shape[0] // s, im.shape[1] // s
    out = np.empty((nsx, nsy, 2 * s * s), np.float32)
    for i in range(nsx):
        for j in range(nsy):
            out[i, j, :s * s] = im[i * s:(i + 1) * s, j * s:(j + 1) * s].flatten()
            out[i, j, s * s:] = ierr[i * s:(i + 1) * s, j * s:(j + 1) * s].flatten()
    return out


def median_time(func, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--psf-dir", help="directory of .psf models: mixture size check")
    parser.add_argument("--ccd-size", default="1024,1280",
                        help="nx,ny of the CCDs of those models (default: the simulation's)")
    args = parser.parse_args()
    if args.psf_dir:
        psf_sizes(args.psf_dir, [int(v) for v in args.ccd_size.split(",")])
    rep_loop, rep = (1, 3) if args.quick else (3, 5)
    rng = np.random.default_rng(0)

    # 1. superpixelize vs the loop, 4096 x 2048
    im = rng.normal(size=(4096, 2048)).astype(np.float32)
    ierr = rng.random((4096, 2048)).astype(np.float32)
    assert np.array_equal(superpixelize(im, ierr, 8), loop_superpixelize(im, ierr, 8))
    t_vec = median_time(lambda: superpixelize(im, ierr, 8), rep)
    t_loop = median_time(lambda: loop_superpixelize(im, ierr, 8), rep_loop)
    print(f"superpixelize 4096x2048, s=8: vectorised {t_vec * 1e3:.1f} ms, loop "
          f"{t_loop * 1e3:.0f} ms, ratio {t_loop / t_vec:.1f}x")

    # 2. add_exposure on full-size CCDs (arrays (nx, ny) = (2048, 4612))
    ccd_im = rng.normal(300, 10, (NX, NY)).astype(np.float32)
    ccd_ierr = np.full((NX, NY), 0.1, np.float32)
    flags = np.zeros((NX, NY), np.int16)
    flags[::97] = 1
    bkg = np.full((NX, NY), 300.0, np.float32)
    imset = ImageSet(ccd_im, ccd_ierr, flags, bkg, None, "R", "e0", None)
    mbytes = (ccd_im.nbytes + ccd_ierr.nbytes) / 1e6
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        store = PixelStore(os.path.join(tmp, "pix.h5"), nside_full=(NX, NY))
        counter = iter(range(1000))

        def add():
            store.add_exposure(imset._replace(expID=f"e{next(counter)}"), bitmask=1)
        t_add = median_time(add, rep)
        t_prep = median_time(lambda: store.prepare(imset, bitmask=1), rep)
        raw_path = os.path.join(tmp, "raw.h5")
        counter_raw = iter(range(1000))

        def raw():
            with h5py.File(raw_path, "a") as h5:
                g = h5.create_group(f"e{next(counter_raw)}")
                g.create_dataset("im", data=ccd_im)
                g.create_dataset("ierr", data=ccd_ierr)
        t_raw = median_time(raw, rep)
        nexp = len(store.exposures())
        store.close()
        size = os.path.getsize(os.path.join(tmp, "pix.h5")) / nexp
    print(f"add_exposure {NX}x{NY} (bkg, bitmask, super-pixels, HDF5): {mbytes / t_add:.0f} "
          f"MB/s ({t_add * 1e3:.0f} ms per CCD); plain h5py write of the same arrays "
          f"{mbytes / t_raw:.0f} MB/s; ratio {t_raw / t_add:.2f}")
    print(f"  of which in memory (bkg, masks, super-pixels; no I/O): {mbytes / t_prep:.0f} MB/s "
          f"({t_prep * 1e3:.0f} ms per CCD)")
    raw_size = NX * NY * 4 * 2
    print(f"store size per CCD: {size / 1e6:.1f} MB (float32 image + weight {raw_size / 1e6:.1f} "
          f"MB; ratio {size / raw_size:.3f})")


def psf_sizes(psf_dir, ccd_size):
    """HSM sigma of the mixtures vs the models: two-stage fit and EM alone."""
    from shapepipe.modules.psfex_interp.interp import hsm_shapes
    files = sorted(f for f in os.listdir(psf_dir) if f.endswith(".psf"))
    locations = grid_locations(ccd_size[0], ccd_size[1], 3)
    err_fit, err_em, times = [], [], []
    for name in files:
        t0 = time.perf_counter()
        params, stamps, _ = psf_mixtures_from_model(os.path.join(psf_dir, name), locations, 3)
        times.append((time.perf_counter() - t0) / len(stamps))
        model = hsm_shapes(stamps)[:, 2]
        fit = hsm_shapes(np.array([mixture_image(p, stamps[0].shape) for p in params]))[:, 2]
        err_fit.extend(fit / model - 1)
        c = stamps.shape[1] // 2
        em = []
        for stamp in stamps:
            gm = fit_psf_em(stamp, Jacobian.from_scale(c, c, 1.0), n_gauss=3)["gmix"]
            y, x = np.mgrid[0:stamp.shape[0], 0:stamp.shape[1]]
            em.append(gm.render(x - c, y - c))
        err_em.extend(hsm_shapes(np.array(em))[:, 2] / model - 1)
    err_fit, err_em = np.abs(err_fit), np.abs(err_em)
    print(f"PSF mixtures ({len(files)} models x 9 locations, 3 Gaussians): |HSM sigma "
          f"mixture / model - 1| median {np.median(err_fit):.2e}, max {err_fit.max():.2e} "
          f"({np.median(times) * 1e3:.0f} ms per location); EM alone median "
          f"{np.median(err_em):.2e}, max {err_em.max():.2e}")


if __name__ == "__main__":
    main()
