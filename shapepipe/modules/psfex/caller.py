"""Command line of the real PSFEx program, and the check of its outcome."""

import os

from shapepipe.modules.psfex.ldac_fix import needs_preparation, prepare_for_psfex


def psfex_command(executable, catalogue, config_file, output_dir, outcat_path, check_images=(),
                  check_prefix="", file_number_string=""):
    """Build the PSFEx command (a list of arguments, no shell).

    Parameters
    ----------
    executable : str
        PSFEx program (``psfex``).
    catalogue : str
        Input FITS_LDAC catalogue; the model is ``<output_dir>/<catalogue stem>.psf``.
    config_file : str
        The ``.psfex`` configuration.
    output_dir : str
        Where PSFEx writes the ``.psf`` (``PSF_DIR``).
    outcat_path : str
        PSFEx's output catalogue (``OUTCAT_NAME``, written as FITS_LDAC).
    check_images : sequence of str
        PSFEx check-image types (``CHI``, ``PROTOTYPES``, ``SAMPLES``, ``RESIDUALS``,
        ``SNAPSHOTS``...); each is written as ``<output_dir>/<prefix><type><number>.fits``.
    check_prefix, file_number_string : str
        Name parts of the check images.

    Returns
    -------
    list of str
    """
    cmd = [executable, catalogue, "-c", config_file, "-PSF_DIR", output_dir,
           "-OUTCAT_TYPE", "FITS_LDAC", "-OUTCAT_NAME", outcat_path, "-WRITE_XML", "N"]
    types = [c.strip().upper() for c in check_images if c.strip()]
    if types:
        names = [os.path.join(output_dir, f"{check_prefix}{t.lower()}{file_number_string}.fits")
                 for t in types]
        cmd += ["-CHECKIMAGE_TYPE", ",".join(types), "-CHECKIMAGE_NAME", ",".join(names)]
    else:
        cmd += ["-CHECKIMAGE_TYPE", "NONE"]
    return cmd


def psfex_input(catalogue, tmp_dir):
    """The catalogue to give PSFEx: itself, or a fixed copy in ``tmp_dir`` with the same name.

    See :mod:`shapepipe.modules.psfex.ldac_fix` for what PSFEx cannot read.
    """
    if not needs_preparation(catalogue):
        return catalogue
    fixed = os.path.join(tmp_dir, os.path.basename(catalogue))
    prepare_for_psfex(catalogue, fixed)
    return fixed


def psfex_errors(stdout, stderr):
    """PSFEx's own error line (``*Error*: ...``) if it printed one, else None.

    PSFEx prints its messages on stderr and, for some errors, exits with status 0.
    """
    for text in (stderr or "", stdout or ""):
        for line in text.splitlines():
            if "*Error*" in line:
                return line.strip().lstrip(">").strip()
    return None
