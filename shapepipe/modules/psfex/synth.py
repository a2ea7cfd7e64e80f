"""Moved to :mod:`shapepipe.sim.psf_stars` (test-data simulators live with ``shapepipe.sim``).

Kept so that existing imports keep working; new code imports ``shapepipe.sim.psf_stars``.
"""

from shapepipe.sim.psf_stars import CCD_SHAPE, MoffatField, make_star_catalogue  # noqa: F401
