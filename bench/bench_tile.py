#!/usr/bin/env python
"""Benchmark of the tile-chain stamp work: vignetmaker MULTI-EPOCH and spread_model.

In one run, on generated data (default-survey-size CCDs, 1024 x 1280 float32, TAN WCS):

- vignetmaker MULTI-EPOCH (``make_multi_epoch``: 4 types, per-CCD cutting, temporary sqlite,
  stores assembled in id order, JSON + .npy encoding) per object-epoch, against the simplest
  reference doing the same cutting and storing: per object-epoch Python slicing of the
  already-open image (FetchStamps-style) written into the same stamp store directly;
- spread_model per object (``combine_epoch_psfs`` from a store + ``models`` +
  ``spread_model``, chunks of 1000), against a per-object loop building phi and G with GalSim
  (PSF as an InterpolatedImage, convolved with an Exponential, drawn at the object) and the
  same sums, as ShapePipe's module does per object.

Medians of repeats; the machine may be shared: compare the ratios.

    python bench/bench_tile.py [--quick]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import galsim  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

from shapepipe.modules.spread_model import combine_epoch_psfs, models, spread_model  # noqa: E402
from shapepipe.modules.vignetmaker import make_multi_epoch  # noqa: E402
from shapepipe.modules.vignetmaker.classic import read_image  # noqa: E402
from shapepipe.utils.ldac import imhead_hdu  # noqa: E402
from shapepipe.utils.pixels import stamp_corner  # noqa: E402
from shapepipe.utils.stamp_store import open_store  # noqa: E402

NX, NY, S = 1024, 1280, 51
SCALE = 0.187 / 3600
TYPES = ["flag", "image", "weight", "background"]


def ccd_wcs(e, ccd):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [NX / 2 + 0.37 * e - ccd * (NX + 30), NY / 2 - 0.21 * e]
    w.wcs.cd = np.array([[-SCALE, 0], [0, SCALE]])
    return w


def make_data(d, n_obj, n_exp, n_ccd, rng):
    wcs = {}
    for e in range(n_exp):
        exp = f"{2000001 + e}"
        wcs[exp] = [ccd_wcs(e, c) for c in range(n_ccd)]
        for c in range(n_ccd):
            for t in TYPES:
                fits.PrimaryHDU(rng.normal(size=(NY, NX)).astype(np.float32),
                                header=wcs[exp][c].to_header()).writeto(
                    os.path.join(d, f"{t}-{exp}-{c}.fits"))
    # objects spread over the CCDs of the first exposure
    ccd = rng.integers(0, n_ccd, n_obj)
    x = rng.uniform(30, NX - 30, n_obj) + ccd * (NX + 30)
    y = rng.uniform(30, NY - 30, n_obj)
    ra, dec = wcs["2000001"][0].all_pix2world(x, y, 0)
    ids = np.arange(1, n_obj + 1)
    cols = [fits.Column(name="NUMBER", format="J", array=ids),
            fits.Column(name="XWIN_WORLD", format="D", array=ra),
            fits.Column(name="YWIN_WORLD", format="D", array=dec)]
    hdus = [fits.PrimaryHDU(), imhead_hdu(fits.Header()),
            fits.BinTableHDU.from_columns(cols, name="LDAC_OBJECTS")]
    for e, exp in enumerate(wcs):
        hdus.append(fits.BinTableHDU.from_columns([
            fits.Column(name="NUMBER", format="J", array=ids),
            fits.Column(name="EXP_NAME", format="7A", array=np.full(n_obj, exp)),
            fits.Column(name="CCD_N", format="J", array=ccd)], name=f"EPOCH_{e}"))
    cat = os.path.join(d, "tile_sexcat-000-000.fits")
    fits.HDUList(hdus).writeto(cat)
    return cat, wcs, ids, ra, dec, ccd


def reference_vignets(d, wcs, ids, ra, dec, ccd, out_dir):
    """Per object-epoch slicing of each open image, stored straight into the stores."""
    stores = {t: open_store(os.path.join(out_dir, f"{t}_ref.sqlite"), "n") for t in TYPES}
    entries = {t: {} for t in TYPES}
    for exp, ccds in wcs.items():
        for c, w in enumerate(ccds):
            sel = np.flatnonzero(ccd == c)
            for t in TYPES:
                image, _ = read_image(os.path.join(d, f"{t}-{exp}-{c}.fits"))
                for k in sel:
                    x, y = w.all_world2pix(ra[k], dec[k], 0)
                    x0, y0, _, _ = stamp_corner(float(x), float(y), S)
                    stamp = np.zeros((S, S), np.float32)
                    part = image[max(y0, 0):y0 + S, max(x0, 0):x0 + S]
                    stamp[:part.shape[0], :part.shape[1]] = part
                    entries[t].setdefault(str(ids[k]), {})[f"{exp}-{c}"] = {"VIGNET": stamp}
    for t in TYPES:
        for key in sorted(entries[t], key=int):
            stores[t][key] = entries[t][key]
        stores[t].commit()
        stores[t].close()


def bench_vignets(n_obj, n_exp, n_ccd, repeats):
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as d:
        cat, wcs, ids, ra, dec, ccd = make_data(d, n_obj, n_exp, n_ccd, rng)
        ours, ref = [], []
        for r in range(repeats):
            out = os.path.join(d, f"out{r}")
            os.mkdir(out)
            t0, c0 = time.perf_counter(), time.process_time()
            counts = make_multi_epoch(cat, {t: [d] for t in TYPES}, TYPES, wcs, out,
                                      "-000-000", stamp_size=S)
            ours.append((time.perf_counter() - t0, time.process_time() - c0))
            t0, c0 = time.perf_counter(), time.process_time()
            reference_vignets(d, wcs, ids, ra, dec, ccd, out)
            ref.append((time.perf_counter() - t0, time.process_time() - c0))
        n_oe = counts["epochs"]
    return n_oe, np.median(ours, axis=0), np.median(ref, axis=0)


def reference_spread_model(pix, wgt, psf_stamps, dx, dy, fwhm):
    """Per object: GalSim models (InterpolatedImage PSF, Exponential) and the same sums."""
    out = np.empty(len(pix))
    for k in range(len(pix)):
        ii = galsim.InterpolatedImage(galsim.ImageD(psf_stamps[k], scale=1.0))
        off = (dx[k] - S // 2, dy[k] - S // 2)
        phi = ii.drawImage(nx=S, ny=S, scale=1.0, offset=off, method="no_pixel").array
        gal = galsim.Convolve(ii, galsim.Exponential(scale_radius=fwhm[k] / 16)).drawImage(
            nx=S, ny=S, scale=1.0, offset=off, method="no_pixel").array
        w, p = wgt[k], pix[k]
        out[k] = (gal * w * p).sum() / (phi * w * p).sum() - (gal * w * phi).sum() / (
            phi * w * phi).sum()
    return out


def bench_spread_model(n_obj, n_ref, repeats):
    rng = np.random.default_rng(2)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7).drawImage(nx=41, ny=41, scale=0.187).array
    psf /= psf.sum()
    with tempfile.TemporaryDirectory() as d:
        store = open_store(os.path.join(d, "psf.sqlite"), "n")
        for i in range(1, n_obj + 1):
            store[str(i)] = {f"200000{e}-0": {"VIGNET": psf.astype(np.float32),
                                              "SHAPES": {"SIGMA_PSF_HSM": 1.59,
                                                         "FLAG_PSF_HSM": 0}} for e in (1, 2, 3)}
        store.commit()
        pix = rng.normal(size=(n_obj, S, S))
        wgt = np.ones((n_obj, S, S))
        dx = S // 2 + rng.uniform(-0.5, 0.5, n_obj)
        dy = S // 2 + rng.uniform(-0.5, 0.5, n_obj)
        ours, ref = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            for lo in range(0, n_obj, 1000):
                sl = slice(lo, min(lo + 1000, n_obj))
                p, fwhm, _ = combine_epoch_psfs(store, np.arange(lo + 1, sl.stop + 1), S)
                phi, gal = models(p, dx[sl], dy[sl], fwhm, S)
                spread_model(pix[sl], wgt[sl], phi, gal)
            ours.append(((time.perf_counter() - t0) / n_obj, (time.process_time() - c0) / n_obj))
            t0, c0 = time.perf_counter(), time.process_time()
            p, fwhm, _ = combine_epoch_psfs(store, np.arange(1, n_ref + 1), S)
            reference_spread_model(pix[:n_ref], wgt[:n_ref], p, dx, dy, fwhm)
            ref.append(((time.perf_counter() - t0) / n_ref, (time.process_time() - c0) / n_ref))
        store.close()
    return np.median(ours, axis=0), np.median(ref, axis=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n_obj, repeats = (600, 2) if args.quick else (2000, 3)
    # Wall time and this process's CPU time: on a shared machine the CPU time is the
    # steadier figure.
    n_oe, ours, ref = bench_vignets(n_obj, 3, 2, repeats)
    for i, kind in enumerate(("wall", "cpu")):
        print(f"vignetmaker MULTI-EPOCH, {n_obj} objects x 3 exposures, 4 types, {n_oe} "
              f"object-epochs, {kind}: ours {1e3 * ours[i] / n_oe:.3f} ms per object-epoch, "
              f"per-stamp reference {1e3 * ref[i] / n_oe:.3f} ms; ratio {ref[i] / ours[i]:.2f}x")
    n_sm = 1000 if args.quick else 3000
    ours, ref = bench_spread_model(n_sm, 100 if args.quick else 200, repeats)
    for i, kind in enumerate(("wall", "cpu")):
        print(f"spread_model, {n_sm} objects x 3 epochs (PSF store read included), {kind}: "
              f"ours {1e3 * ours[i]:.3f} ms per object, GalSim per-object reference "
              f"{1e3 * ref[i]:.3f} ms; ratio {ref[i] / ours[i]:.1f}x")


if __name__ == "__main__":
    main()
