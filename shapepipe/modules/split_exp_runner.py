"""split_exp_runner: split multi-CCD exposures into single-CCD FITS files.

Inputs per job (one exposure): the files of the patterns, by default ``image``, ``weight``
and ``flag`` (``.fits.fz``; ``.fitsfz`` or ``.fits`` via FILE_EXT), numbering ``-0000000``.
Writes ``<suffix>-<exp>-<ccd>.fits`` for every input and CCD (CCD from 0), flags as
integers, and ``headers-<exp>.npy`` (the CCD headers of the ``image`` input, as text) for
``merge_headers_runner``.

Keys: ``OUTPUT_SUFFIX`` (one output prefix per input pattern); ``N_HDU`` (optional: the
number of CCD extensions each file must have; absent, every image HDU after the primary is
split, 4 per simulated exposure, 40 with ``--full`` or on MegaCam data). Either way the image,
weight and flag files of an exposure are checked to have the same number before any CCD is
written, and a difference fails the job with every file's count.
"""

import os

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.modules.split_exp import check_ccd_counts, save_headers, split_exposure

KEYS = [
    Key("OUTPUT_SUFFIX", "list",
        help="output name prefix of each input, in pattern order, e.g. image, weight, flag"),
    Key("N_HDU", "int", default=None,
        help="number of CCD extensions in each exposure file (default: every image HDU)"),
]


def _check_keys(config, section):
    """N_HDU, when given, must be positive: one error before any job rather than one per job."""
    n_hdu = config.read_keys(section, KEYS)["N_HDU"]
    if n_hdu is not None and n_hdu < 1:
        raise ValueError(f"N_HDU = {n_hdu}: expected a positive integer")


@module_runner(
    version="1.1",
    file_pattern=["image", "weight", "flag"],
    file_ext=[".fits.fz", ".fits.fz", ".fits.fz"],
    depends=["numpy", "astropy"],
    executes=[],
    numbering_scheme="-0000000",
    run_method="parallel",
    keys=KEYS,
    validate=_check_keys,
)
def split_exp_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                     w_log):
    """Split the exposure files of one exposure into single-CCD files."""
    opts = config.read_keys(module_config_sec, KEYS)
    suffixes = opts["OUTPUT_SUFFIX"]
    n_hdu = opts["N_HDU"]
    if n_hdu is not None and n_hdu < 1:
        raise ValueError(f"[{module_config_sec}] N_HDU = {n_hdu}: expected a positive integer")
    if len(suffixes) != len(input_file_list):
        raise ValueError(
            f"[{module_config_sec}] OUTPUT_SUFFIX has {len(suffixes)} entries "
            f"({', '.join(suffixes)}) but the job has {len(input_file_list)} input files "
            f"({', '.join(os.path.basename(p) for p in input_file_list)}); give one per pattern"
        )
    # Every file is checked before any is split: a weight with fewer CCDs than its image
    # must not leave image CCDs without weights.
    n_ccd = check_ccd_counts(input_file_list, n_hdu)
    w_log.info("%d CCD extensions in each of %d files", n_ccd, len(input_file_list))
    # The WCS headers come from the image (ShapePipe's rule); without an "image" suffix,
    # from the first input.
    header_index = next((i for i, s in enumerate(suffixes) if "image" in s.lower()), 0)
    out_dir = run_dirs["output"]
    for index, (path, suffix) in enumerate(zip(input_file_list, suffixes)):
        files, headers = split_exposure(path, suffix, file_number_string, out_dir, n_ccd)
        w_log.info("%s: wrote %d CCD files %s-...", path, len(files), suffix)
        if index == header_index:
            header_file = os.path.join(out_dir, f"headers{file_number_string}.npy")
            save_headers(headers, header_file)
            w_log.info("wrote %s", header_file)
    return None, None
