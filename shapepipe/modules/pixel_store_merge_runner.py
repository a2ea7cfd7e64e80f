"""pixel_store_merge_runner: merge pixel_store_runner's part files into the three stores.

One serial job (the only writer). Inputs (pixel_store_runner's output, numbering
``-0000000-0``): ``pixel_store_part<number>.h5`` and ``meta_store_part<number>.json`` of
every exposure-CCD; the ``psf_store_part<number>.h5`` files next to them are merged too
when present. Outputs, each written under a temporary name and renamed when complete:
``pixel_store.h5``, ``meta_store.json``, ``psf_store.h5`` and ``exposures.fits`` (the
MetaStore's table). The summary (exposures, bands, size) goes to the log and to stdout.

Keys: none.
"""

import os

from shapepipe.modules.module_decorator import module_runner
from shapepipe.modules.pixel_store import MetaStore, merge_parts, summary_line


@module_runner(
    version="1.0",
    input_module="pixel_store_runner",
    file_pattern=["pixel_store_part", "meta_store_part"],
    file_ext=[".h5", ".json"],
    depends=["numpy", "astropy", "h5py"],
    executes=[],
    numbering_scheme="-0000000-0",
    run_method="serial",
    keys=[],
)
def pixel_store_merge_runner(input_file_list, run_dirs, file_number_string, config,
                             module_config_sec, w_log):
    """Merge every part into the final stores."""
    pixel_parts, meta_parts, psf_parts = [], [], []
    for files in input_file_list:
        files = [files] if isinstance(files, str) else files
        for path in files:
            base = os.path.basename(path)
            if base.startswith("pixel_store_part"):
                pixel_parts.append(path)
                psf = os.path.join(os.path.dirname(path),
                                   base.replace("pixel_store_part", "psf_store_part", 1))
                if os.path.isfile(psf):
                    psf_parts.append(psf)
            elif base.startswith("meta_store_part"):
                meta_parts.append(path)
    summary = merge_parts(pixel_parts, meta_parts, psf_parts, run_dirs["output"])
    MetaStore(summary["meta_store"]).to_table(os.path.join(run_dirs["output"],
                                                           "exposures.fits"))
    line = summary_line(summary)
    w_log.info("stores in %s: %s", run_dirs["output"], line)
    return line + "\n", None
