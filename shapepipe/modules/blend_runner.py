"""blend_runner: stamps of isolated galaxies from a tile, the inputs of ``shapepipe-blender``.

Inputs per job, in this order: the tile image ``CFIS_image<number>.fits``, its weight
``CFIS_weight<number>.fits``, the tile's SExtractor catalogue ``sexcat<number>.fits``
(FITS_LDAC, with NUMBER, XWIN_IMAGE, YWIN_IMAGE, XWIN_WORLD, YWIN_WORLD, FLAGS; MAG_AUTO and
FLUX_RADIUS for measured magnitudes / radii) and its SEGMENTATION check image
``segmentation<number>.fits`` (sextractor_runner with ``CHECKIMAGE = SEGMENTATION``).
Truth (``TRUTH_PATH``, the simulator's ``truth/objects.fits``) gives, by nearest position, the
magnitude, half-light radius, morphological type and redshift.

Output: a directory ``blend_input<number>/`` holding ``candels_img.npy`` (N, 128, 128) float32,
``candels_seg.npy`` (N, 128, 128) uint8 (0 background, 1 the galaxy, 2... neighbours) and
``candels_cat.csv`` (ID, mag, radius [pixels], z, galtype), for
``shapepipe-blender produce -d <dir> [-d <dir> ...]``. Selection: see
:mod:`shapepipe.modules.blend.stamps`.
"""

import os

import numpy as np

from shapepipe.modules.blend.stamps import read_truth, select_and_cut, write_inputs
from shapepipe.modules.module_decorator import Key, module_runner

KEYS = [
    Key("TRUTH_PATH", "file",
        help="truth catalogue with ID, RA, DEC, IS_STAR, MAG, HLR [arcsec], GALTYPE, Z "
             "(the simulator's truth/objects.fits)"),
    Key("MATCH_RADIUS", "float", default=0.6,
        help="largest detection-truth distance (arcsec)"),
    Key("MIN_GAP", "int", default=10,
        help="smallest distance (pixels, city-block) between the galaxy's segment and any "
             "other segment in its stamp"),
    Key("EDGE_MARGIN", "int", default=2,
        help="the galaxy's segment stays this many pixels from the stamp's edges"),
    Key("HIDDEN_BLEND_MAG", "float", default=24.5,
        help="a segment holding another truth object brighter than this is a blend: left out"),
    Key("FLAG_MASK", "int", default=3,
        help="SExtractor FLAGS bits that exclude a detection (1 neighbours, 2 deblended)"),
    Key("MAG_SOURCE", "str", default="truth", choices=["truth", "measured"],
        help="magnitude: truth MAG, or the measured MAG_AUTO"),
    Key("RADIUS_SOURCE", "str", default="truth", choices=["truth", "measured"],
        help="radius [pixels]: truth HLR over the pixel scale, or the measured FLUX_RADIUS"),
]


def _check_truth(config, section):
    """Read the truth header once before any job: a wrong file is one error, not N."""
    opts = config.read_keys(section, KEYS)
    read_truth(os.path.expanduser(opts["TRUTH_PATH"]))


@module_runner(
    version="1.0",
    input_module="sextractor_runner",
    file_pattern=["CFIS_image", "CFIS_weight", "sexcat", "segmentation"],
    file_ext=[".fits", ".fits", ".fits", ".fits"],
    depends=["numpy", "astropy", "scipy"],
    executes=[],
    numbering_scheme="-000-000",
    run_method="parallel",
    keys=KEYS,
    validate=_check_truth,
)
def blend_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                 w_log):
    """Cut the isolated galaxies of one tile into ``blend_input<number>/``."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from shapepipe.utils.ldac import read_ldac

    opts = config.read_keys(module_config_sec, KEYS)
    if len(input_file_list) != 4:
        raise ValueError(
            f"[{module_config_sec}] expected 4 input files (tile image, tile weight, sexcat, "
            f"segmentation); got {len(input_file_list)}: "
            f"{', '.join(os.path.basename(p) for p in input_file_list)}")
    image_path, weight_path, cat_path, seg_path = input_file_list
    truth = read_truth(os.path.expanduser(opts["TRUTH_PATH"]))
    sexcat, _ = read_ldac(cat_path)
    need = ["NUMBER", "XWIN_IMAGE", "YWIN_IMAGE", "XWIN_WORLD", "YWIN_WORLD", "FLAGS"]
    need += ["MAG_AUTO"] if opts["MAG_SOURCE"].lower() == "measured" else []
    need += ["FLUX_RADIUS"] if opts["RADIUS_SOURCE"].lower() == "measured" else []
    missing = [c for c in need if c not in sexcat.columns.names]
    if missing:
        raise ValueError(f"{cat_path}: missing column(s) {', '.join(missing)} (add them to the "
                         "sextractor .param file)")
    with fits.open(image_path, memmap=True) as h_img, \
            fits.open(weight_path, memmap=True) as h_w, \
            fits.open(seg_path, memmap=True) as h_seg:
        image, weight, seg = h_img[0].data, h_w[0].data, h_seg[0].data
        if not (image.shape == weight.shape == seg.shape):
            raise ValueError(f"{seg_path}: shape {seg.shape}, tile image {image.shape}, weight "
                             f"{weight.shape}: expected one shape")
        wcs = WCS(h_img[0].header)
        img, segs, cat, counts = select_and_cut(
            image, weight, seg, sexcat, truth, wcs,
            match_radius=opts["MATCH_RADIUS"], min_gap=opts["MIN_GAP"],
            margin=opts["EDGE_MARGIN"], hidden_mag=opts["HIDDEN_BLEND_MAG"],
            flag_mask=opts["FLAG_MASK"], mag_source=opts["MAG_SOURCE"].lower(),
            radius_source=opts["RADIUS_SOURCE"].lower())
    out = os.path.join(run_dirs["output"], f"blend_input{file_number_string}")
    write_inputs(out, img, segs, cat)
    w_log.info("%s: %s -> %d stamps in %s", os.path.basename(image_path),
               ", ".join(f"{k} {v}" for k, v in counts.items()), img.shape[0], out)
    types, n_type = np.unique(cat["galtype"], return_counts=True)
    w_log.info("types: %s", ", ".join(f"{t} {n}" for t, n in zip(types, n_type)))
    return None, None
