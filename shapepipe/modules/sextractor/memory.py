"""Keep freed memory in the process for the next image (glibc only).

A run allocates a few dozen full-image arrays (the image, weight, background, variance,
masks, segmentation map, sep's pixel stacks: ~40 MB each for a 2048 x 4612 CCD). glibc
serves every allocation above 32 MB with a fresh ``mmap`` and gives it back to the kernel
when it is freed, so the next array of the same size is faulted in and zeroed by the kernel
page by page again: on the benchmark's CCDs ~55,000 page faults and ~0.5 s of system time
per CCD, a quarter of the run. SExtractor works on scan-line buffers and pays none of it.

:func:`reuse_freed_memory` tells glibc to take every allocation from its heap and not to
trim the heap, so a freed array's pages serve the next one. The price: the process keeps
its peak memory (~0.6 GB for such a CCD) until it exits, which a pipeline worker does.
It is not called by :func:`run_sextractor` (a notebook may not want it); the pipeline's
runner calls it in its worker process.
"""

import ctypes
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def reuse_freed_memory():
    """Ask glibc's allocator to keep freed memory for reuse (no-op elsewhere).

    Returns
    -------
    bool
        True if the allocator was configured (now or by an earlier call).
    """
    global _done
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success.
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**30))
    return _done
