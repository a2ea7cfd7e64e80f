#!/usr/bin/env python
"""Close pairs of galaxies under the simulator's scene shear: real response against metacal R.

Metacalibration shears the whole deconvolved stamp, so it measures the response of a blend to
a shear of the *scene* (shapes and separations). Pairs of galaxies (flux ratio 0.6) are
rendered by the simulator itself (``render_signal``: its WCS, PSF model and profiles) at +g
and -g, with the shear applied to the scene by groups (``scene_shear="groups"``) or to the
shapes only (``"none"``, the simulator before issue 16), then measured with the true PSF on
stamps centred on the pair's light centroid (no detection, one epoch). Printed per case: the
mean real response ``(g+ - g-) / 2g`` over metacal's ``R``, minus 1, with its error. The
reference, in the same run, is the ``none`` row: what a shapes-only simulation does.

    python bench/bench_scene_shear.py [--pairs 40] [--seps 0.8,1.5] [--sigmas 0,8]

No figure here is pre-registered: the pairs are fixed by the seed (11) and the count.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapepipe.modules.ngmix.measure import measure_object  # noqa: E402
from shapepipe.modules.ngmix.observation import Jacobian, Observation  # noqa: E402
from shapepipe.sim import geometry as geo  # noqa: E402
from shapepipe.sim.psf import eval_model, model_row, moffat  # noqa: E402
from shapepipe.sim.render import render_signal  # noqa: E402
from shapepipe.sim.survey import scene_positions  # noqa: E402

G = 0.02
STAMP = 51


def pair_catalogue(n_pairs, sep_arcsec, seed=11):
    """Pairs (flux ratio 0.6, ``sep_arcsec`` apart, random orientation) on a grid of CCD 0.

    Returns
    -------
    params, wcs, cat, cx, cy
        The survey layout, CCD 0's WCS, the object columns ``render_signal`` reads, and the
        1-based pixel positions of the pairs' light centroids.
    """
    params = geo.small_params()
    wcs = geo.make_wcs(geo.ccd_header(params, 0, 0))
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(80, params.ccd_nx - 80, 110),
                         np.arange(80, params.ccd_ny - 80, 110))
    if n_pairs > gx.size:
        raise SystemExit(f"--pairs {n_pairs}: at most {gx.size} fit on a CCD")
    cx = gx.ravel()[:n_pairs] + rng.uniform(0, 1, n_pairs)
    cy = gy.ravel()[:n_pairs] + rng.uniform(0, 1, n_pairs)
    ra_c, dec_c = geo.pix_to_sky(wcs, cx, cy)
    phi = rng.uniform(0, np.pi, n_pairs)
    fa = np.full(n_pairs, 3000.0)
    fb = 0.6 * fa
    off = sep_arcsec / 3600.0
    dra = off * np.cos(phi) / np.cos(np.deg2rad(dec_c))
    ddec = off * np.sin(phi)
    wa, wb = fb / (fa + fb), fa / (fa + fb)  # the light centroid stays at (ra_c, dec_c)
    n = 2 * n_pairs
    e = np.clip(rng.normal(0, 0.25, (n, 2)), -0.6, 0.6)
    cat = {"ID": np.arange(1, n + 1),
           "RA": np.concatenate([ra_c - dra * wa, ra_c + dra * wb]),
           "DEC": np.concatenate([dec_c - ddec * wa, dec_c + ddec * wb]),
           "IS_STAR": np.zeros(n, np.int16),
           "MAG": (geo.MAGZP - 2.5 * np.log10(np.concatenate([fa, fb]))).astype(np.float32),
           "HLR_DISK": rng.uniform(0.3, 0.5, n).astype(np.float32),
           "HLR_BULGE": np.full(n, 0.2, np.float32), "BULGE_FRAC": np.zeros(n, np.float32),
           "E1_INT": e[:, 0].astype(np.float32), "E2_INT": e[:, 1].astype(np.float32)}
    return params, wcs, cat, cx, cy


def response_ratio(mode, n_pairs=40, sep=0.8, sigma=0.0):
    """``<real response> / <R> - 1`` and its error over ``n_pairs`` pairs.

    Parameters
    ----------
    mode : {"groups", "field", "none"}
        The simulator's ``scene_shear``.
    n_pairs : int
    sep : float
        Separation (arcsec).
    sigma : float
        Pixel noise (ADU; the same array in both halves); 0 for none.
    """
    params, wcs, cat, cx, cy = pair_catalogue(n_pairs, sep)
    row = model_row(params, 3, params.exposures[0], 0)
    shears = [(G, 0.0), (-G, 0.0)]
    centre = geo.tile_center(*params.tile_number)
    positions = [scene_positions(cat, s, centre, mode) for s in shears]
    images, _ = render_signal(cat, wcs, row, (params.ccd_ny, params.ccd_nx), shears,
                              sky_sigma=max(sigma, 1.0), positions=positions)
    if sigma > 0:
        noise = np.random.default_rng(5).normal(0.0, sigma, images[0].shape)
        images = [im + noise for im in images]
    jac = geo.local_jacobian(wcs, cx, cy)
    fwhm, beta, pg1, pg2 = eval_model(row, cx, cy)
    half = STAMP // 2
    weight = np.full((STAMP, STAMP), 1.0 / max(sigma, 1.0) ** 2)
    real, resp = [], []
    for k in range(n_pairs):
        ic, jc = int(round(cx[k])), int(round(cy[k]))
        psf = moffat(fwhm[k], beta[k], pg1[k], pg2[k]).drawImage(nx=STAMP, ny=STAMP,
                                                                 scale=1.0).array
        jacobian = Jacobian(cx[k] - (ic - half), cy[k] - (jc - half), jac[k].reshape(2, 2))
        g = []
        for im in images:
            stamp = im[jc - 1 - half: jc + half, ic - 1 - half: ic + half]
            res = measure_object([Observation(stamp, weight, jacobian, psf=psf)], k + 1, seed=1)
            g.append((res["noshear"]["g1"], (res["1p"]["g1"] - res["1m"]["g1"]) / 0.02))
        real.append((g[0][0] - g[1][0]) / (2 * G))
        resp.append((g[0][1] + g[1][1]) / 2)
    real, resp = np.array(real), np.array(resp)
    ok = np.isfinite(real) & np.isfinite(resp)
    real, resp = real[ok], resp[ok]
    ratio = real.mean() / resp.mean() - 1
    err = np.std(real - resp) / np.sqrt(len(real)) / resp.mean()
    return float(ratio), float(err), int(ok.sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--seps", default="0.8,1.5", help="separations (arcsec)")
    parser.add_argument("--sigmas", default="0,8", help="pixel noise levels (ADU)")
    args = parser.parse_args(argv)
    print("mode    sep    noise   real/R - 1        pairs")
    for sigma in (float(s) for s in args.sigmas.split(",")):
        for sep in (float(s) for s in args.seps.split(",")):
            for mode in ("groups", "none"):
                r, e, n = response_ratio(mode, args.pairs, sep, sigma)
                print(f"{mode:7s} {sep:4.1f}\"  {sigma:5.1f}   {r:+.4f} +- {e:.4f}   {n}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
