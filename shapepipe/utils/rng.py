"""Deterministic random numbers: one generator per job, or per object.

Seeds are derived with ``numpy.random.SeedSequence`` from the configured seed and the
job number (or the object id), so results never depend on how work is chunked.
"""

import hashlib

import numpy as np


def _entropy(label):
    if isinstance(label, (int, np.integer)):
        return [int(label) & 0xFFFFFFFF, (int(label) >> 32) & 0xFFFFFFFF]
    digest = hashlib.sha256(str(label).encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def make_rng(seed, *labels):
    """A ``numpy.random.Generator`` determined by ``seed`` and any labels.

    Parameters
    ----------
    seed : int
        The configured seed.
    *labels : int or str
        Job number string, object id, stage name...; order matters.

    Returns
    -------
    numpy.random.Generator
    """
    entropy = [int(seed) & 0xFFFFFFFF]
    for label in labels:
        entropy.extend(_entropy(label))
    return np.random.default_rng(np.random.SeedSequence(entropy))
