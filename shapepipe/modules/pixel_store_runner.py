"""pixel_store_runner: one exposure-CCD into part files of the pixel, meta and PSF stores.

Run after ``example/config_exp.ini``; ``pixel_store_merge_runner`` then merges the parts.
Parallel jobs never write the same HDF5 file: each job writes its own parts, atomically.

Inputs per job (split_exp_runner, numbering ``-0000000-0``): image, weight (ierr =
sqrt(weight)), flag, and the background image if USE_BKG_IMAGE (otherwise the background is
estimated with sep). Also read: the CCD header from merge_headers' ``log_exp_headers.sqlite``
(LOG_WCS) and the PSF model ``<PSF_DIR>/<PSF_PATTERN><number>.psf`` (PSFEx or psf_model).

Outputs: ``pixel_store_part<number>.h5``, ``meta_store_part<number>.json`` and
``psf_store_part<number>.h5`` (band = FILTER upper case, expID = ``<exp>-<ccd>``).

Keys: LOG_WCS, PSF_DIR, PSF_PATTERN, PSF_GRID, PSF_NGAUSS, PSF_NRADII, PSF_STAMP_SIZE,
SUPER_PIXEL_SIZE, BITMASK, USE_BKG_IMAGE, BKG_BOX_SIZE, BKG_FILTER_SIZE, DO_FLUXCAL.
"""

import os
import re

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.modules.pixel_store import read_exposure, write_parts

KEYS = [
    Key("LOG_WCS", "str", default="merge_headers_runner",
        help="log_exp_headers.sqlite: file, directory or module reference"),
    Key("PSF_DIR", "str", default="psfex_runner",
        help="directory or module reference (psfex_runner, psf_model_runner) of the .psf "
             "models; 'none' for no PSF store"),
    Key("PSF_PATTERN", "str", default="star_split_ratio_80",
        help="PSF model name: <PSF_PATTERN><number>.psf"),
    Key("PSF_GRID", "int", default=3, help="PSF locations per CCD axis (GRID x GRID)"),
    Key("PSF_NGAUSS", "int", default=3, help="Gaussians per PSF mixture"),
    Key("PSF_NRADII", "int", default=1,
        help="copies of each mixture (forcepho's sersic_bin 0..NRADII-1)"),
    Key("PSF_STAMP_SIZE", "int", default=None,
        help="side of the model stamps fitted (default: the model's)"),
    Key("SUPER_PIXEL_SIZE", "int", default=8, help="super-pixel side in pixels"),
    Key("BITMASK", "str", default=None,
        help="flag bits that mask a pixel (e.g. 7 or 0x7); default: any non-zero flag"),
    Key("USE_BKG_IMAGE", "bool", default=False,
        help="the job's fourth input is a background image; otherwise estimated with sep"),
    Key("BKG_BOX_SIZE", "int", default=64, help="sep background mesh size (pixels)"),
    Key("BKG_FILTER_SIZE", "int", default=3, help="sep background median filter size"),
    Key("DO_FLUXCAL", "bool", default=False,
        help="convert counts to nJy with the header's zero point (ABMAG, MAGZP or PHOTZP)"),
]

_NUMBER = re.compile(r"^-?(.+)-(\d+)$")


def parse_bitmask(value, where="BITMASK"):
    """Integer of a BITMASK value (decimal, 0x.. or 0b..), None when unset."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    try:
        mask = int(str(value).strip(), 0)
    except ValueError:
        raise ValueError(f"{where} = {value}: expected an integer (e.g. 7 or 0x7)") from None
    if mask < 0:
        raise ValueError(f"{where} = {value}: expected a non-negative integer")
    return mask


def _check(config, section):
    """Check the keys once, before any job."""
    opts = config.read_keys(section, KEYS)
    parse_bitmask(opts["BITMASK"], f"[{section}] BITMASK")
    for key in ("PSF_GRID", "PSF_NGAUSS", "PSF_NRADII", "SUPER_PIXEL_SIZE", "BKG_BOX_SIZE",
                "BKG_FILTER_SIZE"):
        if opts[key] < 1:
            raise ValueError(f"[{section}] {key} = {opts[key]}: expected >= 1")


@module_runner(
    version="1.0",
    input_module="split_exp_runner",
    file_pattern=["image", "weight", "flag"],
    file_ext=[".fits", ".fits", ".fits"],
    depends=["numpy", "astropy", "h5py", "sep"],
    executes=[],
    numbering_scheme="-0000000-0",
    run_method="parallel",
    keys=KEYS,
    validate=_check,
)
def pixel_store_runner(input_file_list, run_dirs, file_number_string, config,
                       module_config_sec, w_log):
    """Write the part files of one exposure-CCD."""
    from shapepipe.modules.merge_headers import find_log_wcs, read_exp_headers
    from shapepipe.pipeline.run_log import resolve_module_dir

    opts = config.read_keys(module_config_sec, KEYS)
    expected = 4 if opts["USE_BKG_IMAGE"] else 3
    if len(input_file_list) != expected:
        raise ValueError(f"[{module_config_sec}] expected {expected} input files (image, "
                         f"weight, flag{', background' if expected == 4 else ''}), got "
                         f"{len(input_file_list)}: {input_file_list}")
    match = _NUMBER.match(file_number_string)
    if not match:
        raise ValueError(f"job number {file_number_string}: expected -<exposure>-<ccd>")
    exp, ccd = match.group(1), int(match.group(2))
    bitmask = parse_bitmask(opts["BITMASK"], f"[{module_config_sec}] BITMASK")

    def resolve(ref):
        return resolve_module_dir(ref, run_dirs)

    log_wcs = find_log_wcs(opts["LOG_WCS"], resolve, key=f"[{module_config_sec}] LOG_WCS")
    headers = read_exp_headers(log_wcs, [exp]).get(exp)
    if not headers or ccd >= len(headers) or headers[ccd] is None:
        raise KeyError(f"{log_wcs}: no header for exposure {exp} CCD {ccd}")

    psf_path = None
    if opts["PSF_DIR"].strip().lower() != "none":
        name = f"{opts['PSF_PATTERN']}{file_number_string}.psf"
        dirs = resolve(opts["PSF_DIR"])
        found = [os.path.join(d, name) for d in dirs if os.path.isfile(os.path.join(d, name))]
        if not found:
            raise FileNotFoundError(f"[{module_config_sec}] PSF_DIR = {opts['PSF_DIR']}: no "
                                    f"{name} in {', '.join(dirs)}")
        psf_path = found[0]

    image, weight, flag = input_file_list[:3]
    imset = read_exposure(image, weight, flag, input_file_list[3] if expected == 4 else None,
                          header=headers[ccd], expID=f"{exp}-{ccd}", bitmask=bitmask,
                          box_size=opts["BKG_BOX_SIZE"], filter_size=opts["BKG_FILTER_SIZE"])
    out = write_parts(imset, (run_dirs["output"], file_number_string), psf_path=psf_path,
                      super_pixel_size=opts["SUPER_PIXEL_SIZE"], bitmask=bitmask,
                      do_fluxcal=opts["DO_FLUXCAL"], psf_grid=opts["PSF_GRID"],
                      n_gauss=opts["PSF_NGAUSS"], nradii=opts["PSF_NRADII"],
                      stamp_size=opts["PSF_STAMP_SIZE"])
    w_log.info("%s/%s: %d x %d pixels, %d masked; PSF %s%s", imset.band, imset.expID,
               imset.im.shape[0], imset.im.shape[1], out["n_masked"], psf_path,
               f" ({out['psf_fit_failed']} fits not converged)" if out.get("psf_fit_failed")
               else "")
    return None, None
