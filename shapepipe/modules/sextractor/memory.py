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

The first image of a process still faults its arrays in page by page, and numpy asks for
transparent huge pages on them, which on a busy machine can mean memory compaction inside
the faults: 0.2-0.6 s of system time for the benchmark's first CCD. :func:`populate_heap`
makes a block of heap resident in one ``madvise(MADV_POPULATE_WRITE)`` call and frees it,
so the first image's arrays are carved from pages already there (~0.2 s of system time
for the same memory, measured; see bench/RESULTS.md, issue 18 fourth pass).
"""

import ctypes
import platform
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_AT = 2**30  # glibc gives the top of the heap back above this (M_TRIM_THRESHOLD)
_MADV_POPULATE_WRITE = 23  # Linux >= 5.14
_PAGE = 4096
_done = False
_populated = 0  # bytes of heap made resident so far (0: none; -1: unavailable here)


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
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_AT))
    return _done


def populate_heap(nbytes):
    """Make ``nbytes`` of heap resident now, for the arrays that follow (Linux, glibc).

    Allocates one block from glibc's heap, populates its pages with one
    ``madvise(MADV_POPULATE_WRITE)`` and frees it: with :func:`reuse_freed_memory` in force
    the heap keeps the pages, and the next allocations are served from them without a page
    fault each. Does nothing when the process already populated as much, outside the main
    thread (other threads allocate from other glibc arenas), when the allocator cannot
    keep freed memory, or where the kernel lacks ``MADV_POPULATE_WRITE`` (Linux < 5.14):
    then the pages are faulted in as they are used, as before. The values computed are
    not affected in any case.

    Parameters
    ----------
    nbytes : int
        Bytes to make resident; best no more than the next job will allocate (the memory
        stays with the process, as everything :func:`reuse_freed_memory` keeps).

    Returns
    -------
    int
        Bytes populated by this call (0 if nothing was done).
    """
    global _populated
    # A block above the trim threshold would go straight back to the kernel when freed.
    nbytes = min(int(nbytes), _TRIM_AT - 2**26)
    if (_populated < 0 or nbytes <= _populated + 16 * _PAGE
            or threading.current_thread() is not threading.main_thread()
            or not reuse_freed_memory()):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    malloc, free, madvise = libc.malloc, libc.free, libc.madvise
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.restype, free.argtypes = None, [ctypes.c_void_p]
    madvise.restype = ctypes.c_int
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    block = malloc(nbytes)
    if not block:
        return 0
    try:
        start = -(-block // _PAGE) * _PAGE  # madvise wants page-aligned addresses
        length = (block + nbytes - start) // _PAGE * _PAGE
        if madvise(start, length, _MADV_POPULATE_WRITE) != 0:
            _populated = -1  # EINVAL: an older kernel; do not ask again
            return 0
    finally:
        free(block)
    _populated = nbytes
    return nbytes
