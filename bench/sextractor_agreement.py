"""Per-object agreement of sextractor_runner's extraction with source-extractor on real images.

Runs both on astropy's real test images (M13, a crowded DSS globular-cluster field, and
comp.fits) with the same .sex/.param/.conv (DETECT_THRESH 3, DETECT_MINAREA 5, FILTER Y with
the 3x3 default.conv, DEBLEND 32/0.005, CLEAN Y, BACK_SIZE 64, BACK_FILTERSIZE 3, WEIGHT_TYPE
NONE), matches objects by X_IMAGE/Y_IMAGE (0.01 px) and prints, per image, the fraction of
objects within tolerance for each column (never medians of clean subsets).

    python bench/sextractor_agreement.py [--keep DIR] [--deblend-random SEXTRACTOR|SEP|BOTH]

``--deblend-random SEP`` measures with sep's own deblending generator (the code before issue
18's third pass), ``BOTH`` prints both (default: SEXTRACTOR, the runner's default).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from astropy.io import fits
from scipy.spatial import cKDTree

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from shapepipe.modules.sextractor import run_sextractor  # noqa: E402

EX = os.path.join(ROOT, "example", "sextractor")
ASTROPY_FITS = os.path.dirname(fits.__file__)
IMAGES = [
    ("m13", os.path.join(ASTROPY_FITS, "hdu", "compressed", "tests", "data", "m13.fits"), 0),
    ("comp", os.path.join(ASTROPY_FITS, "tests", "data", "comp.fits"), 1),
]
SEX = """CATALOG_TYPE     FITS_LDAC
DETECT_TYPE      CCD
DETECT_MINAREA   5
THRESH_TYPE      RELATIVE
DETECT_THRESH    3
ANALYSIS_THRESH  3
FILTER           Y
DEBLEND_NTHRESH  32
DEBLEND_MINCONT  0.005
CLEAN            Y
CLEAN_PARAM      1.0
MASK_TYPE        CORRECT
WEIGHT_TYPE      NONE
PHOT_APERTURES   8
PHOT_AUTOPARAMS  2.5, 3.5
PHOT_FLUXFRAC    0.5
SATUR_LEVEL      1e9
MAG_ZEROPOINT    30.0
GAIN             1.0
PIXEL_SCALE      1.0
SEEING_FWHM      2.5
STARNNW_NAME     /usr/share/source-extractor/default.nnw
BACK_TYPE        AUTO
BACK_SIZE        64
BACK_FILTERSIZE  3
BACKPHOTO_TYPE   GLOBAL
VERBOSE_TYPE     QUIET
"""
PARAMS = """NUMBER
X_IMAGE
Y_IMAGE
XWIN_IMAGE
YWIN_IMAGE
FLUX_AUTO
FLUXERR_AUTO
FLUX_APER(1)
FLUX_WIN
SNR_WIN
FLUX_RADIUS
FWHM_IMAGE
KRON_RADIUS
FLAGS
ISOAREA_IMAGE
CLASS_STAR
"""


def write_inputs(work, name, src, ext, extra_params=""):
    """Write the float32 image, .sex and .param; return their paths."""
    image = os.path.join(work, f"{name}.fits")
    fits.writeto(image, fits.getdata(src, ext).astype(np.float32), overwrite=True)
    sex = os.path.join(work, "real.sex")
    with open(sex, "w") as f:
        f.write(SEX)
    param = os.path.join(work, "real.param")
    with open(param, "w") as f:
        f.write(PARAMS + extra_params)
    return image, sex, param


def run_both(work, name, image, sex, param, deblend_random="SEXTRACTOR"):
    """Catalogues of both tools (LDAC_OBJECTS tables)."""
    conv = os.path.join(EX, "default.conv")
    ref = os.path.join(work, f"{name}_ref.cat")
    ours = os.path.join(work, f"{name}_ours_{deblend_random.lower()}.cat")
    if not os.path.isfile(ref):
        subprocess.run(["source-extractor", image, "-c", sex, "-PARAMETERS_NAME", param,
                        "-FILTER_NAME", conv, "-CATALOG_NAME", ref], check=True,
                       capture_output=True)
    info = run_sextractor(image, ours, sex, param_file=param, conv_file=conv,
                          deblend_random_mode=deblend_random)
    if info["deblend_random"] != deblend_random:
        print(f"{name}: {info['deblend_random_note']}")
    return fits.getdata(ref, "LDAC_OBJECTS"), fits.getdata(ours, "LDAC_OBJECTS")


def match(ref, our, tol=0.01):
    """Indices (ref, ours) of the objects at the same X_IMAGE/Y_IMAGE."""
    d, i = cKDTree(np.c_[our["X_IMAGE"], our["Y_IMAGE"]]).query(
        np.c_[ref["X_IMAGE"], ref["Y_IMAGE"]])
    ok = d < tol
    return np.flatnonzero(ok), i[ok]


def agreement(ref, our):
    """Per-object agreement figures (fractions over all SExtractor objects)."""
    ir, io = match(ref, our)
    n = len(ref)
    r, o = ref[ir], our[io]
    dwin = np.hypot(o["XWIN_IMAGE"] - r["XWIN_IMAGE"], o["YWIN_IMAGE"] - r["YWIN_IMAGE"])
    near = np.hypot(r["XWIN_IMAGE"] - r["X_IMAGE"], r["YWIN_IMAGE"] - r["Y_IMAGE"]) < 1
    out = {"n_ref": n, "n_ours": len(our), "matched": len(ir) / n,
           "win_0.1px": np.sum(dwin < 0.1) / n, "win_max_px": float(dwin.max()),
           "win_gt1px_near": int(np.sum((dwin > 1) & near)),
           "flags_equal": np.sum(o["FLAGS"] == r["FLAGS"]) / n}
    for col, tol in (("FLUX_AUTO", 0.01), ("FLUX_APER", 0.01), ("FLUX_WIN", 0.01),
                     ("FLUX_RADIUS", 0.02)):
        if col in ref.names:
            rv, ov = np.ravel(r[col]), np.ravel(o[col])
            rel = np.abs(ov - rv) / np.maximum(np.abs(rv), 1e-30)
            out[f"{col}_{tol:g}"] = np.sum(rel < tol) / n
    if "CLASS_STAR" in ref.names:
        out["class_star_0.05"] = np.sum(np.abs(o["CLASS_STAR"] - r["CLASS_STAR"]) < 0.05) / n
    out["_dwin"] = dwin
    out["_pairs"] = (ir, io)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="write the catalogues into this directory")
    parser.add_argument("--deblend-random", default="SEXTRACTOR",
                        choices=["SEXTRACTOR", "SEP", "BOTH"],
                        help="generator of sep's deblending (run_sextractor's "
                             "deblend_random_mode); BOTH: one line for each")
    args = parser.parse_args(argv)
    if shutil.which("source-extractor") is None:
        print("source-extractor not found: cannot compare")
        return 1
    work = args.keep or tempfile.mkdtemp(prefix="sex_agree_")
    os.makedirs(work, exist_ok=True)
    try:
        for name, src, ext in IMAGES:
            if not os.path.isfile(src):
                print(f"{name}: {src} absent, skipped")
                continue
            image, sex, param = write_inputs(work, name, src, ext)
            modes = (["SEP", "SEXTRACTOR"] if args.deblend_random == "BOTH"
                     else [args.deblend_random])
            for mode in modes:
                ref, our = run_both(work, name, image, sex, param, mode)
                stats = agreement(ref, our)
                label = f"{name} [{mode}]" if len(modes) > 1 else name
                print(label, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in stats.items() if not k.startswith("_")))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
