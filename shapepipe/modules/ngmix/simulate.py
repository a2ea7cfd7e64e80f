"""Moved to :mod:`shapepipe.sim.shear_stamps` (test-data simulators live with ``shapepipe.sim``).

Kept so that existing imports keep working; new code imports ``shapepipe.sim.shear_stamps``.
"""

from shapepipe.sim.shear_stamps import (  # noqa: F401
    bias_from_groups,
    draw_group,
    group_sums,
    make_stamp_set,
    sample_snr,
    shear_bias,
    snr_from_weight,
)
