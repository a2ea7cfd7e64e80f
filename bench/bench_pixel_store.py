#!/usr/bin/env python
"""Benchmark of the PixelStore: super-pixel reordering, add_exposure throughput, store size.

In one run, medians of repeats:
1. ``superpixelize`` (reshape/transpose, no Python loop) against forcepho's plain double
   loop over super-pixels, on a 4096 x 2048 image (s = 8);
2. ``PixelStore.add_exposure`` on full-size CCDs (2048 x 4612: background subtraction,
   masking with a bitmask, super-pixel reordering, HDF5 write) in MB/s of input image +
   inverse error, against the reference of writing the same two float32 arrays to HDF5 as
   they are (h5py, no processing);
3. the store's size per CCD against the raw float32 image + weight.

    python bench/bench_pixel_store.py [--quick]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import h5py  # noqa: E402

from shapepipe.modules.pixel_store import ImageSet, PixelStore, superpixelize  # noqa: E402

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
    args = parser.parse_args()
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
    raw_size = NX * NY * 4 * 2
    print(f"store size per CCD: {size / 1e6:.1f} MB (float32 image + weight {raw_size / 1e6:.1f} "
          f"MB; ratio {size / raw_size:.3f})")


if __name__ == "__main__":
    main()
