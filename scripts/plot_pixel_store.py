#!/usr/bin/env python
"""Summary and plot of the stores written by pixel_store_merge_runner.

Prints one summary (exposures, bands, sizes, PSF mixtures, how many exposures cover the
field centre) and writes a PNG: the exposures' footprints from the MetaStore, and one PSF
mixture of the PSFStore against the PSF model it was fitted to (image, and profiles along x
and y through the centre, with HSM sizes).

    python scripts/plot_pixel_store.py STORE_DIR --psf-dir PSF_MODEL_DIR [-o plot.png]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402
import matplotlib.ticker  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shapepipe.modules.pixel_store import (  # noqa: E402
    META_STORE,
    PIXEL_STORE,
    PSF_STORE,
    MetaStore,
    PixelStore,
    PSFStore,
    mixture_image,
)
from shapepipe.modules.psfex.dotpsf import read_psf  # noqa: E402
from shapepipe.modules.psfex_interp.interp import hsm_shapes  # noqa: E402
from shapepipe.utils.pixels import numpy_to_fits  # noqa: E402


def summarise(store_dir):
    """Print the summary; return the MetaStore and the PSF store (or None)."""
    meta = MetaStore(os.path.join(store_dir, META_STORE))
    pix = PixelStore(os.path.join(store_dir, PIXEL_STORE))
    exposures = pix.exposures()
    size = os.path.getsize(os.path.join(store_dir, PIXEL_STORE))
    masked = sum(int(pix.data[f"{b}/{e}/data"].attrs.get("n_masked", 0)) for b, e in exposures)
    npix = sum(int(pix.data[f"{b}/{e}/data"].attrs["nx"]) * int(pix.data[f"{b}/{e}/data"]
               .attrs["ny"]) for b, e in exposures)
    pix.close()
    psf_path = os.path.join(store_dir, PSF_STORE)
    psf = PSFStore(psf_path) if os.path.isfile(psf_path) else None
    n_psf = sum(len(psf.data[b]) for b in psf.data) if psf else 0
    polys = np.concatenate([meta.footprint(b, e) for b in meta.headers for e in meta.headers[b]])
    vec = np.stack([np.cos(np.deg2rad(polys[:, 1])) * np.cos(np.deg2rad(polys[:, 0])),
                    np.cos(np.deg2rad(polys[:, 1])) * np.sin(np.deg2rad(polys[:, 0])),
                    np.sin(np.deg2rad(polys[:, 1]))]).mean(axis=1)
    centre = (np.rad2deg(np.arctan2(vec[1], vec[0])) % 360,
              np.rad2deg(np.arcsin(vec[2] / np.linalg.norm(vec))))
    found, _ = meta.find_exposures(centre, list(meta.headers))
    print(f"pixel store: {len(exposures)} exposure-CCDs, bands {sorted(meta.headers)}, "
          f"{npix / 1e6:.1f} Mpix ({masked / max(npix, 1):.2%} masked), {size / 1e6:.1f} MB")
    print(f"meta store: {meta.nexp} headers; field centre RA {centre[0]:.4f} Dec "
          f"{centre[1]:.4f} covered by {len(found)} exposure-CCDs: {', '.join(sorted(found))}")
    print(f"PSF store: {n_psf} exposure-CCDs with Gaussian-mixture PSFs")
    return meta, psf


def plot(meta, psf, psf_dir, output):
    """Footprints, and the first stored PSF mixture against its model."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    expnames = sorted({e.split("-")[0] for exps in meta.headers.values() for e in exps})
    for band, exps in meta.headers.items():
        for exp in sorted(exps):
            poly = meta.footprint(band, exp)
            ra = (poly[:, 0] + 180) % 360 - 180 if np.ptp(poly[:, 0]) > 180 else poly[:, 0]
            colour = f"C{expnames.index(exp.split('-')[0]) % 10}"
            ax.fill(ra, poly[:, 1], alpha=0.15, color=colour)
            ax.plot(np.append(ra, ra[0]), np.append(poly[:, 1], poly[0, 1]), lw=0.6,
                    color=colour)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
    ax.invert_xaxis()
    ax.set_xlabel("RA [deg]")
    ax.set_ylabel("Dec [deg]")
    ax.set_title(f"MetaStore footprints ({meta.nexp} exposure-CCDs)")
    if psf is None:
        for a in axes[1:]:
            a.set_visible(False)
    else:
        band = sorted(psf.data)[0]
        exp = sorted(psf.data[band])[0]
        group = psf.data[f"{band}/{exp}"]
        locations = group["detector_locations"][:]
        k = locations.shape[1] // 2
        ngauss = int(group.attrs.get("ngauss", group["parameters"].shape[1]))
        params = group["parameters"][k][:ngauss]
        model = read_psf(os.path.join(psf_dir, str(group.attrs["psf_file"])))
        stamp = model.pixel_stamps(numpy_to_fits(locations[:, k:k + 1].T))[0]
        mix = mixture_image(params, stamp.shape)
        sig = hsm_shapes(np.stack([stamp, mix]))[:, 2]
        c = stamp.shape[0] // 2
        half = min(c, 12)
        ax = axes[1]
        ax.imshow(np.log10(np.clip(stamp, 1e-5, None))[c - half:c + half + 1,
                                                       c - half:c + half + 1],
                  origin="lower", cmap="viridis")
        ax.contour(np.log10(np.clip(mix, 1e-5, None))[c - half:c + half + 1,
                                                      c - half:c + half + 1],
                   levels=np.arange(-4, -0.9, 0.5), colors="w", linewidths=0.7)
        ax.set_title(f"{band}/{exp} at ({locations[0, k]:.0f}, {locations[1, k]:.0f}): "
                     "log model, mixture contours", fontsize=9)
        ax = axes[2]
        x = np.arange(-half, half + 1)
        ax.semilogy(x, np.clip(stamp[c, c - half:c + half + 1], 1e-6, None), "k-",
                    label="model, along x")
        ax.semilogy(x, np.clip(mix[c, c - half:c + half + 1], 1e-6, None), "C1--",
                    label=f"{ngauss}-Gaussian mixture, along x")
        ax.semilogy(x, np.clip(stamp[c - half:c + half + 1, c], 1e-6, None), "C0-",
                    label="model, along y")
        ax.semilogy(x, np.clip(mix[c - half:c + half + 1, c], 1e-6, None), "C3--",
                    label="mixture, along y")
        ax.set_xlabel("pixels from centre")
        ax.set_title(f"HSM sigma: model {sig[0]:.4f}, mixture {sig[1]:.4f} px "
                     f"({sig[1] / sig[0] - 1:+.2%})", fontsize=9)
        ax.legend(fontsize=8)
        print(f"PSF {band}/{exp} location {k}: HSM sigma model {sig[0]:.4f} px, mixture "
              f"{sig[1]:.4f} px ({sig[1] / sig[0] - 1:+.3%})")
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    print(f"plot: {output}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store_dir", help="pixel_store_merge_runner's output directory")
    parser.add_argument("--psf-dir", help="directory of the .psf models the PSFs were fitted to")
    parser.add_argument("-o", "--output", default=None,
                        help="PNG (default STORE_DIR/pixel_store.png)")
    args = parser.parse_args(argv)
    meta, psf = summarise(args.store_dir)
    if psf is not None and not args.psf_dir:
        print("no --psf-dir: PSF panels skipped")
        psf = None
    plot(meta, psf, args.psf_dir, args.output or os.path.join(args.store_dir,
                                                               "pixel_store.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
