"""psfex_runner: run the real PSFEx on a star catalogue.

Writes ``<input name>.psf`` and ``psfex_cat<number>.cat`` (PSFEx's OUTCAT, FITS_LDAC), plus
the check images asked for in CHECKIMAGE. A non-zero return code of PSFEx, or an
``*Error*`` message, fails the job with PSFEx's message.
"""

import os

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.modules.psfex.caller import psfex_command, psfex_errors, psfex_input
from shapepipe.pipeline.errors import ExecutionError
from shapepipe.pipeline.execute import execute

KEYS = [
    Key("EXEC_PATH", "str", default="psfex", help="the PSFEx program"),
    Key("DOT_PSFEX_FILE", "file", help="PSFEx configuration file (.psfex)"),
    Key("CHECKIMAGE", "list", default=[],
        help="PSFEx check images (CHI, PROTOTYPES, SAMPLES, RESIDUALS, SNAPSHOTS...)"),
]


@module_runner(version="1.0", input_module="setools_runner", file_pattern=["star_selection"],
               file_ext=[".fits"], depends=["numpy", "astropy"], executes=["psfex"],
               numbering_scheme="-0000000-0", run_method="parallel", keys=KEYS)
def psfex_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                 w_log):
    """Run PSFEx on one star catalogue."""
    opts = config.read_keys(module_config_sec, KEYS)
    catalogue = input_file_list[0]
    output_dir = run_dirs["output"]
    stem = os.path.splitext(os.path.basename(catalogue))[0]
    prefix = stem[: -len(file_number_string)] if stem.endswith(file_number_string) else stem
    source = psfex_input(catalogue, run_dirs["tmp"])
    if source != catalogue:
        w_log.info("gave PSFEx a copy of %s with blank-padded SExtractor header cards", catalogue)
    outcat = os.path.join(output_dir, f"psfex_cat{file_number_string}.cat")
    cmd = psfex_command(os.path.expanduser(opts["EXEC_PATH"]), source,
                        os.path.expanduser(opts["DOT_PSFEX_FILE"]), output_dir, outcat,
                        opts["CHECKIMAGE"], prefix, file_number_string)
    w_log.info("running %s", " ".join(cmd))
    stdout, stderr = execute(cmd)
    error = psfex_errors(stdout, stderr)
    psf_path = os.path.join(output_dir, f"{stem}.psf")
    if error:
        raise ExecutionError(f"psfex on {catalogue}: {error}")
    if not os.path.isfile(psf_path):
        raise ExecutionError(f"psfex on {catalogue}: finished without writing {psf_path}")
    return stdout, stderr
