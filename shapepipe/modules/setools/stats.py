"""Statistics of catalogue columns that never crash on empty, tiny or degenerate samples.

Reductions of an empty sample return NaN (comparisons against NaN are false, so a cut
built on an empty reference selection selects nothing instead of failing the job).
"""

import numpy as np

__all__ = [
    "nan_mean",
    "nan_median",
    "nan_std",
    "nan_var",
    "nan_min",
    "nan_max",
    "sigma_mad",
    "robust_mode",
]

#: Below this many values a histogram carries no information beyond the median.
MODE_MIN_SAMPLES = 10
#: Iteration cap of the mode refinement (each pass keeps 3 of at least 4 bins).
MODE_MAX_ITER = 64


def _finite(x):
    x = np.asarray(x, dtype=float).ravel()
    return x[np.isfinite(x)]


def _reduce(func, x):
    x = np.asarray(x)
    if x.size == 0:
        return np.nan
    with np.errstate(all="ignore"):
        return func(x)


def nan_mean(x):
    """Mean (NaN for an empty sample)."""
    return _reduce(np.mean, x)


def nan_median(x):
    """Median (NaN for an empty sample)."""
    return _reduce(np.median, x)


def nan_std(x):
    """Standard deviation, ``ddof=0`` as numpy (NaN for an empty sample)."""
    return _reduce(np.std, x)


def nan_var(x):
    """Variance, ``ddof=0`` as numpy (NaN for an empty sample)."""
    return _reduce(np.var, x)


def nan_min(x):
    """Minimum (NaN for an empty sample)."""
    return _reduce(np.min, x)


def nan_max(x):
    """Maximum (NaN for an empty sample)."""
    return _reduce(np.max, x)


def sigma_mad(x):
    """Standard deviation estimated from the median absolute deviation.

    ``1.4826 * median(|x - median(x)|)``, the Gaussian-consistent MAD scale.
    NaN for an empty sample.
    """
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return np.nan
    return 1.482602218505602 * np.median(np.abs(x - np.median(x)))


def shorth(values):
    """Length of the shortest interval holding half of a sorted sample."""
    n = values.size
    half = (n + 1) // 2
    return float(np.min(values[half - 1 :] - values[: n - half + 1]))


def robust_mode(x):
    """Most frequent value of a continuous sample, by iterated histogram refinement.

    Each pass histograms the current sample with bins of width ``shorth * n^(-1/3)``,
    where ``shorth`` is the length of the shortest interval holding half of the values:
    for a symmetric unimodal sample it equals the IQR (this is then half the
    Freedman-Diaconis width), but unlike the IQR it is not inflated by a broad
    background under a narrow peak, such as galaxies around the stellar locus. The pass
    keeps the peak of the histogram smoothed over 3 bins, together with its two
    neighbouring bins, and the next pass works on the values inside. It stops when
    fewer than :data:`MODE_MIN_SAMPLES` values remain, when more than half of them are
    equal, or when the histogram has no more than three bins; the mode is the median
    of what remains.

    Parameters
    ----------
    x : array_like
        The sample; non-finite values are ignored.

    Returns
    -------
    float
        The mode; the median for fewer than 10 values; NaN for no finite value.
    """
    values = np.sort(_finite(x))
    if values.size == 0:
        return np.nan
    for _ in range(MODE_MAX_ITER):
        n = values.size
        if n < MODE_MIN_SAMPLES or values[0] == values[-1]:
            break
        scale = shorth(values)
        if scale <= 0:
            break
        width = scale * n ** (-1.0 / 3.0)
        n_bins = int(min(np.ceil((values[-1] - values[0]) / width), n))
        if n_bins <= 3:
            break
        edges = np.linspace(values[0], values[-1], n_bins + 1)
        counts = np.histogram(values, bins=edges)[0]
        # The peak is chosen on the histogram smoothed over the 3-bin window that is
        # kept, so shot noise in single bins of a sparse sample does not decide it.
        smooth = np.convolve(counts, [1, 2, 1], mode="same")
        peak = int(np.argmax(smooth))
        lo = edges[max(peak - 1, 0)]
        hi = edges[min(peak + 2, n_bins)]
        start = np.searchsorted(values, lo, side="left")
        stop = np.searchsorted(values, hi, side="right")
        if stop - start >= n:
            break
        values = values[start:stop]
    return float(np.median(values))
