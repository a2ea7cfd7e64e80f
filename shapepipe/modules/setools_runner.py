"""SETools runner: apply a ``.setools`` selection file to each SExtractor catalogue.

Writes ``mask/<mask><num>.fits`` (FITS_LDAC, input layout kept, e.g. for PSFEx),
``plot/<plot><num>.png``, ``stat/<stat><num>.txt`` and
``rand_split/<split>_ratio_<p><num>.fits`` in the module's output directory.
"""

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.modules.setools import read_setools, run_setools

KEYS = [
    Key("SETOOLS_CONFIG_PATH", "file", help="the .setools selection file"),
    Key("SEED", "int", default=0,
        help="seed of [RAND_SPLIT] sections, combined with each input's file number"),
]


def _check_setools_file(config, section):
    """Parse the selection file once, before any job: a mistake would fail every job."""
    read_setools(config.getexpanded(section, "SETOOLS_CONFIG_PATH"))


@module_runner(
    version="1.1",
    input_module="sextractor_runner",
    file_pattern=["sexcat"],
    file_ext=[".fits"],
    depends=["numpy", "astropy", "matplotlib"],
    executes=[],
    numbering_scheme="-0000000-0",
    run_method="parallel",
    keys=KEYS,
    validate=_check_setools_file,
)
def setools_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                   w_log):
    """Apply SETOOLS_CONFIG_PATH to one catalogue; outputs go to ``run_dirs['output']``."""
    opts = config.read_keys(module_config_sec, KEYS)
    written = run_setools(
        input_file_list[0],
        config.getexpanded(module_config_sec, "SETOOLS_CONFIG_PATH"),
        run_dirs["output"],
        file_number_string=file_number_string,
        seed=opts["SEED"],
        log=w_log,
    )
    w_log.info("setools wrote %d files", len(written))
    return None, None
