#!/usr/bin/env python
"""Metacalibration shapes of postage stamps, outside the pipeline.

    python scripts/measure_shapes.py STAMPS.npz OUTPUT.fits [--seed N] [--model gauss]
                                     [--processes N] [--step 0.01]

STAMPS.npz holds ``image`` (N, n_epoch, S, S), ``weight`` (same shape, inverse variance),
``psf`` (N, n_epoch, P, P; PSF images at the same pixel scale), ``pixel_scale`` (arcsec
per pixel) and ``id`` (N,). Each object must lie within a pixel of its stamp centre.
OUTPUT.fits gets HDUs NOSHEAR, 1P, 1M, 2P, 2M with one row per object in input order.
The random numbers of an object depend only on the seed and its id, so the output does not
depend on ``--processes``.
"""

import argparse
import os
import sys

# One BLAS thread per process: the transforms are small matrix products for which extra
# threads only add overhead (and processes already share the cores).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shapepipe.modules.ngmix.gmix import MODELS  # noqa: E402
from shapepipe.modules.ngmix.measure import (  # noqa: E402
    measure_object,
    rows_to_tables,
    write_catalog,
)
from shapepipe.modules.ngmix.observation import make_stamp_obs  # noqa: E402

REQUIRED = ("image", "weight", "psf", "pixel_scale", "id")


def load_stamps(path):
    """Read and check a stamp file; returns a dict of arrays."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path}: cannot read as a .npz stamp file ({err})") from None
    missing = [k for k in REQUIRED if k not in npz.files]
    if missing:
        raise SystemExit(f"{path}: missing array(s) {', '.join(missing)}; expected "
                         f"{', '.join(REQUIRED)}")
    data = {k: npz[k] for k in REQUIRED}
    image, weight, psf, ids = data["image"], data["weight"], data["psf"], data["id"]
    if image.ndim != 4 or image.shape[2] != image.shape[3]:
        raise SystemExit(f"{path}: image has shape {image.shape}; expected "
                         "(N, n_epoch, S, S)")
    if weight.shape != image.shape:
        raise SystemExit(f"{path}: weight has shape {weight.shape}; expected {image.shape}")
    if psf.ndim != 4 or psf.shape[:2] != image.shape[:2]:
        raise SystemExit(f"{path}: psf has shape {psf.shape}; expected "
                         f"({image.shape[0]}, {image.shape[1]}, P, P)")
    if ids.shape != (image.shape[0],):
        raise SystemExit(f"{path}: id has shape {ids.shape}; expected ({image.shape[0]},)")
    if not np.issubdtype(ids.dtype, np.integer):
        raise SystemExit(f"{path}: id has dtype {ids.dtype}; expected integers")
    scale = float(np.asarray(data["pixel_scale"]).ravel()[0])
    if not scale > 0:
        raise SystemExit(f"{path}: pixel_scale = {scale}; expected a positive number")
    data["pixel_scale"] = scale
    return data


def _measure_chunk(args):
    image, weight, psf, ids, scale, seed, model, step = args
    rows = []
    for k in range(len(ids)):
        obs = [make_stamp_obs(image[k, e], weight[k, e], psf[k, e], scale)
               for e in range(image.shape[1])]
        rows.append(measure_object(obs, int(ids[k]), seed=seed, model=model, step=step))
    return rows


def measure_stamps(data, seed=0, model="gauss", step=0.01, processes=1, chunk=64):
    """Metacal rows of every object of a stamp set (list of ``{type: row}``, input order)."""
    n = data["image"].shape[0]
    tasks = [(data["image"][i:i + chunk], data["weight"][i:i + chunk],
              data["psf"][i:i + chunk], data["id"][i:i + chunk], data["pixel_scale"],
              seed, model, step) for i in range(0, n, chunk)]
    if processes <= 1:
        parts = [_measure_chunk(t) for t in tasks]
    else:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=processes, backend="loky")(
            delayed(_measure_chunk)(t) for t in tasks)
    return [row for part in parts for row in part]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stamps", help="input .npz stamp file")
    parser.add_argument("output", help="output FITS catalogue")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise correction")
    parser.add_argument("--model", default="gauss", choices=MODELS, help="galaxy model")
    parser.add_argument("--processes", type=int, default=1, help="worker processes")
    parser.add_argument("--step", type=float, default=0.01, help="metacal shear step")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f"--processes {args.processes}: expected a positive integer")
    if not 0 < args.step < 0.2:
        parser.error(f"--step {args.step}: expected a value in (0, 0.2)")
    data = load_stamps(args.stamps)
    rows = measure_stamps(data, seed=args.seed, model=args.model, step=args.step,
                          processes=args.processes)
    write_catalog(args.output, rows_to_tables(rows),
                  header={"MCSEED": args.seed, "MCMODEL": args.model, "MCSTEP": args.step,
                          "NOBJ": len(rows)})
    n_flag = sum(1 for r in rows if r["noshear"]["mcal_flags"])
    print(f"{args.output}: {len(rows)} objects, {n_flag} with non-zero mcal_flags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
