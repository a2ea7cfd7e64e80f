"""Moved to :mod:`shapepipe.sim.small_ccd` (test-data simulators live with ``shapepipe.sim``).

Kept so that existing imports keep working; new code imports ``shapepipe.sim.small_ccd``.
"""

from shapepipe.sim.small_ccd import make_ccd  # noqa: F401
