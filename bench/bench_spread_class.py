#!/usr/bin/env python
"""SPREAD_CLASS purity against the simulated truth, from a config_tile.ini run.

    python bench/bench_spread_class.py $SP_RUN/run_sp_tile_<date> $SP_DATA

Matches the tile catalogue (tile_sexcat) to truth/objects.fits within 0.5", classifies with
SPREAD_MODEL + 5/3 SPREADERR_MODEL (thresholds 0.003 / 0.01) from sexcat_sm, and prints the
galaxy purity at S/N > 20 and the fraction of S/N > 50 stars classified as stars (S/N =
SNR_WIN), for all detections and for FLAGS = 0 and IMAFLAGS_ISO = 0.
"""

import glob
import os
import sys

import numpy as np
from astropy.io import fits
from scipy.spatial import cKDTree

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapepipe.modules.make_catalog import spread_class  # noqa: E402


def main(run, data):
    cat = fits.getdata(glob.glob(f"{run}/sextractor_runner/output/tile_sexcat-*.fits")[0],
                       "LDAC_OBJECTS")
    sm = fits.getdata(glob.glob(f"{run}/spread_model_runner/output/sexcat_sm-*.fits")[0],
                      "LDAC_OBJECTS")
    truth = fits.getdata(os.path.join(data, "truth", "objects.fits"))
    cosd = np.cos(np.deg2rad(np.median(truth["DEC"])))

    def xy(ra, dec):
        return np.c_[ra * cosd, dec] * 3600.0

    dist, idx = cKDTree(xy(truth["RA"], truth["DEC"])).query(
        xy(cat["XWIN_WORLD"], cat["YWIN_WORLD"]))
    matched = dist < 0.5
    star = truth["IS_STAR"][idx].astype(bool)
    cls = spread_class(sm["SPREAD_MODEL"], sm["SPREADERR_MODEL"])
    snr = cat["SNR_WIN"]
    clean = (cat["FLAGS"] == 0) & (cat["IMAFLAGS_ISO"] == 0)
    print(f"{matched.sum()} of {len(cat)} detections matched")
    for name, sel in (("all detections", matched), ("FLAGS=0, IMAFLAGS_ISO=0", matched & clean)):
        gal = sel & (snr > 20) & (cls == 1)
        stars = sel & (snr > 50) & star
        print(f"{name}: galaxy purity S/N>20 {np.mean(~star[gal]):.4f} ({gal.sum()} classified "
              f"galaxies); stars S/N>50 classified as stars {np.mean(cls[stars] == 0):.4f} "
              f"({stars.sum()} stars)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
