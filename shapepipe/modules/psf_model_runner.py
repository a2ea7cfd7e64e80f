"""psf_model_runner: the built-in PSF model (no external program), PSFEx's file format.

Reads a star catalogue (setools selection or SExtractor catalogue with VIGNETs) and writes
``<input name>.psf`` (PSFEx layout: PSF_MASK, POLNAME/POLZERO/POLSCAL/POLDEG, PSF_SAMP,
ACCEPTED, CHI2, PSF_FWHM) and ``psfex_cat<number>.cat`` (per-star flags and chi2), the same
outputs as psfex_runner, so psfex_interp reads either.

Keys: those of PSFEx's configuration listed in ``KEYS`` (from ``DOT_PSFEX_FILE`` or given
here), ``CHI2_CLIP``, and ``DEGREE_SELECTION`` (``PRESS``, the default: PSFVAR_DEGREES or a
lower degree down to ``DEGREE_MIN``, whichever predicts the training stars' shapes best when
each star is left out; ``NONE``: PSFVAR_DEGREES as PSFEx). The degree used is the header's
POLDEG and is logged per job.
"""

import os

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.modules.psf_model.build import build_psf_model, options_from_psfex_file

KEYS = [
    Key("DOT_PSFEX_FILE", "file", default=None,
        help="PSFEx configuration whose PSF_SIZE, PSF_SAMPLING, PSF_ACCURACY, CENTER_KEYS, "
             "PHOTFLUX_KEY, PSFVAR_*, SAMPLE_MINSN are used (keys below override it)"),
    Key("PSF_SIZE", "int_list", default=None, help="model size nx,ny (default: VIGNET size)"),
    Key("PSF_SAMPLING", "float", default=None, help="model sampling step in image pixels"),
    Key("PSF_ACCURACY", "float", default=None, help="relative accuracy of model pixel values"),
    Key("CENTER_KEYS", "list", default=None, help="columns of the star centres"),
    Key("PHOTFLUX_KEY", "str", default=None, help="column of the initial fluxes"),
    Key("PSFVAR_KEYS", "list", default=None, help="columns the PSF varies with"),
    Key("PSFVAR_GROUPS", "int_list", default=None, help="group of each PSFVAR_KEYS column"),
    Key("PSFVAR_DEGREES", "int_list", default=None, help="polynomial degree of each group"),
    Key("SAMPLE_MINSN", "float", default=None, help="minimum SNR_WIN of a star"),
    Key("DEGREE_SELECTION", "str", default=None, choices=["PRESS", "NONE"],
        help="PRESS (default): keep PSFVAR_DEGREES or a lower degree, whichever predicts the "
             "stars' shapes best when each is left out of the fit; NONE: PSFVAR_DEGREES"),
    Key("DEGREE_MIN", "int", default=None,
        help="lowest degree DEGREE_SELECTION = PRESS tries (default 1)"),
    Key("CHI2_CLIP", "float", default=4.0,
        help="reject stars whose chi2 exceeds the median by this many robust sigmas"),
]


@module_runner(version="1.0", input_module="setools_runner", file_pattern=["star_selection"],
               file_ext=[".fits"], depends=["numpy", "astropy"], executes=[],
               numbering_scheme="-0000000-0", run_method="parallel", keys=KEYS)
def psf_model_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                     w_log):
    """Fit the built-in PSF model to one star catalogue."""
    opts = config.read_keys(module_config_sec, KEYS)
    options = {}
    if opts["DOT_PSFEX_FILE"]:
        options.update(options_from_psfex_file(os.path.expanduser(opts["DOT_PSFEX_FILE"])))
    for key, value in opts.items():
        if key != "DOT_PSFEX_FILE" and value is not None:
            options[key] = value
    catalogue = input_file_list[0]
    stem = os.path.splitext(os.path.basename(catalogue))[0]
    psf_path = os.path.join(run_dirs["output"], f"{stem}.psf")
    cat_path = os.path.join(run_dirs["output"], f"psfex_cat{file_number_string}.cat")
    summary = build_psf_model(catalogue, psf_path, cat_path, options, log=w_log)
    w_log.info("wrote %s and %s", psf_path, cat_path)
    return f"psf_model: {summary}", None
