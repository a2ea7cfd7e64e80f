"""merge_headers_runner: collect every exposure's CCD headers into one sqlite file.

Serial. Input: the ``headers-<exp>.npy`` files of ``split_exp_runner``. Output:
``log_exp_headers.sqlite`` (keys are exposure names such as ``2000001``, values JSON lists
of per-CCD FITS header strings; see ``shapepipe.modules.merge_headers``) in the module's
output directory, or in OUTPUT_PATH when given.
"""

import os

from shapepipe.modules.merge_headers import merge_headers
from shapepipe.modules.merge_headers.merge_headers import OUTPUT_NAME
from shapepipe.modules.module_decorator import Key, module_runner

KEYS = [
    Key("OUTPUT_PATH", "dir", default=None,
        help="directory for log_exp_headers.sqlite instead of the module output dir"),
]


@module_runner(
    version="1.1",
    input_module="split_exp_runner",
    file_pattern=["headers"],
    file_ext=[".npy"],
    depends=["numpy", "sqlitedict"],
    executes=[],
    numbering_scheme="-0000000",
    run_method="serial",
    keys=KEYS,
)
def merge_headers_runner(input_file_list, run_dirs, file_number_string, config,
                         module_config_sec, w_log):
    """Merge all ``headers-<exp>.npy`` files into ``log_exp_headers.sqlite``."""
    opts = config.read_keys(module_config_sec, KEYS)
    output_dir = run_dirs["output"]
    if opts["OUTPUT_PATH"]:
        output_dir = os.path.expanduser(opts["OUTPUT_PATH"])
    # Serial runners get one list of files per number; a bare path is accepted too.
    files = [item[0] if isinstance(item, (list, tuple)) else item for item in input_file_list]
    output = os.path.join(output_dir, OUTPUT_NAME)
    n_exp = merge_headers(files, output)
    w_log.info("wrote %s (%d exposures)", output, n_exp)
    return None, None
