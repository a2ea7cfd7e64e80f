"""Once-per-process start-up work (heavy imports, JIT set-up) without the cyclic GC's cost.

Importing a science stack creates a few hundred thousand objects that live as long as the
process (astropy, numba and scipy: ~245,000 for sextractor_runner). Python's cyclic
garbage collector runs every 700 new objects and scans the younger generations, and later
the whole heap again and again, for objects that will never be garbage: ~0.1 s of CPU per
process for sextractor_runner (measured, bench/RESULTS.md, issue 18 fourth pass).
:func:`startup_phase` pauses the collector for such a block; in a worker process it then
moves every object alive into the permanent generation (``gc.freeze``, what the Python
documentation advises for forked workers), so no later collection scans them. Nothing is
leaked: the collector runs again as before after the block, on the objects made after it.
"""

import contextlib
import gc
import os

_FROZEN_IN = None  # pid of the process that froze its start-up objects


@contextlib.contextmanager
def startup_phase(freeze=False):
    """Run a block with the cyclic garbage collector paused.

    Parameters
    ----------
    freeze : bool
        Then move the objects alive into the permanent generation (``gc.freeze``), once
        per process: for worker processes that keep what the block imported until they
        exit. Leave False in a long-lived interactive process (objects alive then are never
        collected by the cyclic collector afterwards).
    """
    global _FROZEN_IN
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze and _FROZEN_IN != os.getpid():
            _FROZEN_IN = os.getpid()
            gc.freeze()
        if enabled:
            gc.enable()
