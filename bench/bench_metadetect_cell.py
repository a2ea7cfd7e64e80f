#!/usr/bin/env python
"""Metadetection on simulated cells: m from paired +g / -g scenes, isolated and blended.

Each scene is a 300 x 300 cell (0.187"/pixel) of 40 exponential galaxies (hlr 0.3-0.8",
flux 2000-8000, intrinsic ellipticity sigma 0.2) at random positions, optionally each with
a companion at a fixed separation (``--pair``), convolved with an elliptical Moffat PSF
(FWHM 0.7", beta 3.5, g = (0.02, -0.01)), with white noise of sigma 2. The shear moves the
shapes *and* the positions (about the cell centre), as a lens does: that is what metacal on a
fixed detection catalogue misses for blends (``bench/bench_scene_shear.py``). The +g and -g
scenes share galaxies and noise, so shape noise cancels in m = (<e>+ - <e>-) / (2 g R) - 1,
with R the mean of the two scenes' metadetection responses. Cuts: MDET flags 0, S/N > 10,
T_ratio > 0.5. Error: jackknife over scenes.

    python bench/bench_metadetect_cell.py [--scenes 30] [--pair 1.0] [--shear 0.05]
        [--step 0.05] [--stars N] [--noise SIGMA] [--vs-shear G]

The reference is the truth: the applied shear (m = 0).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shapepipe.modules.metadetect.cell import metadetect_cell  # noqa: E402
from shapepipe.modules.ngmix.observation import Jacobian  # noqa: E402

SCALE = 0.187
SIZE = 300
NOISE = 2.0


def scene(seed, g, pair=None, n_stars=0, noise=NOISE):
    """Image, PSF and star positions of one cell sheared by (g, 0) in shapes and positions.

    ``n_stars`` point sources (flux log-uniform 150-3000, S/N ~5-100) are added at random
    positions; a lens does not shear or move them.
    """
    import galsim

    rng = np.random.default_rng(seed)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7).shear(g1=0.02, g2=-0.01)
    img = galsim.ImageD(SIZE, SIZE, scale=SCALE)
    pos = rng.uniform(50, SIZE - 50, size=(40, 2))
    if pair:
        ang = rng.uniform(0, np.pi, len(pos))
        pos = np.r_[pos, pos + pair / SCALE * np.c_[np.cos(ang), np.sin(ang)]]
    c = (SIZE - 1) / 2.0
    a = np.array([[1 + g, 0.0], [0.0, 1 - g]]) / np.sqrt(1 - g * g)
    for x, y in pos:
        hlr = rng.uniform(0.3, 0.8)
        flux = rng.uniform(2000, 8000)
        e = rng.normal(0, 0.2, 2)
        e = e * min(1.0, 0.7 / np.hypot(*e))
        gal = galsim.Exponential(half_light_radius=hlr, flux=flux)
        gal = gal.shear(g1=e[0], g2=e[1]).shear(g1=g, g2=0.0)
        p = a @ np.array([x - c, y - c]) + c
        galsim.Convolve(gal, psf).drawImage(img, add_to_image=True,
                                            offset=(p[0] - c, p[1] - c))
    srng = np.random.default_rng(seed + 777)
    stars = srng.uniform(20, SIZE - 20, size=(n_stars, 2))
    for (x, y), flux in zip(stars, np.exp(srng.uniform(np.log(150), np.log(3000), n_stars))):
        psf.withFlux(flux).drawImage(img, add_to_image=True, offset=(x - c, y - c))
    psf_img = psf.drawImage(nx=41, ny=41, scale=SCALE).array
    image = img.array + np.random.default_rng(seed + 999).normal(0, noise, img.array.shape)
    return image, psf_img / psf_img.sum(), stars


#: Selections compared: the default cuts, and the default cuts plus a size significance
#: (MDET_T_RATIO above k times its error), which faint stars rarely cross.
CUTS = {"default": None, "size 3 sigma": 3.0, "size 5 sigma": 5.0}


def scene_sums(seed, g, pair, step, n_stars=0, noise=NOISE):
    """``{(cut, type): [n, sum e1, sum e2]}`` of the selected detections of one scene.

    The cut ``"no true star"`` is the default cuts without detections within 3 pixels of a
    star: an oracle no survey has, the contamination-free reference.
    """
    image, psf, stars = scene(seed, g, pair, n_stars, noise)
    weight = np.full(image.shape, noise ** -2)
    jac = Jacobian((SIZE - 1) / 2.0, (SIZE - 1) / 2.0, np.eye(2) * SCALE)
    white = np.random.default_rng(seed + 5).standard_normal(image.shape)
    res, _ = metadetect_cell(image, weight, psf, jac, white, step=step)
    out = {}
    for t, r in res.items():
        ok = (r["flags"] == 0) & (r["s2n"] > 10) & (r["T_ratio"] > 0.5)
        near = np.zeros(len(ok), bool)
        if len(stars):
            dx = r["x"][:, None] - stars[None, :, 0]
            dy = r["y"][:, None] - stars[None, :, 1]
            near = (dx ** 2 + dy ** 2 < 9.0).any(axis=1)
        sels = {name: ok if k is None else ok & (r["T_ratio"] > k * r["T_ratio_err"])
                for name, k in CUTS.items()}
        sels["no true star"] = ok & ~near
        for name, sel in sels.items():
            out[(name, t)] = np.array([sel.sum(), r["e1"][sel].sum(), r["e2"][sel].sum(),
                                       (sel & near).sum()])
    return out


def estimate(per_scene, keep, g, step, cut):
    """m, c2, R11 and the fraction of selected noshear rows that are stars, from the scenes
    ``keep`` with the selection ``cut``."""
    acc = {key: sum(per_scene[i][key] for i in keep) for key in per_scene[0]}

    def mean(sign, t, comp):
        return acc[(sign, cut, t)][comp] / acc[(sign, cut, t)][0]

    r11 = np.mean([(mean(s, "1p", 1) - mean(s, "1m", 1)) / (2 * step) for s in (1, -1)])
    r22 = np.mean([(mean(s, "2p", 2) - mean(s, "2m", 2)) / (2 * step) for s in (1, -1)])
    m = (mean(1, "noshear", 1) - mean(-1, "noshear", 1)) / (2 * g * r11) - 1
    c2 = (mean(1, "noshear", 2) + mean(-1, "noshear", 2)) / (2 * r22)
    return np.array([m, c2, r11, mean(1, "noshear", 3)])


def jackknife(stat, n):
    """``stat(all n scenes)`` and its delete-one jackknife error over the scenes."""
    everything = list(range(n))
    values = np.array([stat([j for j in everything if j != i]) for i in everything])
    err = np.sqrt((n - 1) / n * ((values - values.mean(0)) ** 2).sum(0))
    return stat(everything), err


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=30)
    parser.add_argument("--pair", type=float, default=0.0,
                        help="companion separation (arcsec); 0: no companions")
    parser.add_argument("--shear", type=float, default=0.05)
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--stars", type=int, default=0,
                        help="unsheared point sources per scene (S/N ~5-100)")
    parser.add_argument("--noise", type=float, default=NOISE,
                        help="pixel noise sigma (default %(default)s; galaxy flux 2000-8000)")
    parser.add_argument("--vs-shear", type=float, default=None, metavar="G",
                        help="also run the same scenes at shear G and print m(shear) - m(G) "
                             "per cut with a paired jackknife: the non-linear term of m")
    args = parser.parse_args(argv)
    t0 = time.time()

    def run(shear):
        per_scene = []
        for seed in range(args.scenes):
            sums = {}
            for sign in (1, -1):
                for (cut, t), v in scene_sums(seed, sign * shear, args.pair or None,
                                              args.step, args.stars, args.noise).items():
                    sums[(sign, cut, t)] = v
            per_scene.append(sums)
        return per_scene

    per_scene = run(args.shear)
    other = run(args.vs_shear) if args.vs_shear else None
    print(f"metadetect, {args.scenes} scene pairs, pair {args.pair or 'none'}, "
          f"{args.stars} stars per scene, shear {args.shear}"
          f"{f' (and {args.vs_shear})' if other else ''}, step {args.step}, noise "
          f"{args.noise} ({time.time() - t0:.0f} s)")
    for cut in [*CUTS, "no true star"]:
        if cut == "no true star" and not args.stars:
            continue
        full, err = jackknife(
            lambda keep, cut=cut: estimate(per_scene, keep, args.shear, args.step, cut),
            args.scenes)
        n = sum(s[(1, cut, "noshear")][0] for s in per_scene)
        print(f"  {cut:>13}: {n:5.0f} selected (+g), {100 * full[3]:4.1f}% stars: "
              f"m = {full[0]:+.4f} +- {err[0]:.4f}, c2 = {full[1]:+.5f} +- {err[1]:.5f}, "
              f"R11 = {full[2]:.3f}")
        if other is None:
            continue

        def diff(keep, cut=cut):
            return (estimate(per_scene, keep, args.shear, args.step, cut)[0]
                    - estimate(other, keep, args.vs_shear, args.step, cut)[0])

        d, d_err = jackknife(diff, args.scenes)
        m_other = estimate(other, range(args.scenes), args.vs_shear, args.step, cut)[0]
        print(f"  {'':>13}  at shear {args.vs_shear}: m = {m_other:+.4f}; m({args.shear}) - "
              f"m({args.vs_shear}) = {d:+.4f} +- {d_err:.4f} (paired, same scenes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
