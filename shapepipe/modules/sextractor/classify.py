"""CLASS_STAR: SExtractor's neural-network star/galaxy classifier.

The network (a ``.nnw`` file, STARNNW_NAME; Debian ships
``/usr/share/source-extractor/default.nnw``) is a multi-layer perceptron with sigmoid
units. Its 10 inputs, as SExtractor 2.25 builds them for each object:

- ``log10(A_0 / s^2)``, then ``log10(peak / T)``, then ``log10(A_i / s^2)`` for i = 1..7,
  where ``A_i`` is the number of footprint pixels above the i-th of 8 isophotes spaced
  logarithmically from the object's analysis threshold to its peak (``0.01`` replaces an
  empty area, ``0.1`` a non-positive peak), ``T`` the analysis threshold in ADU and
  ``s = SEEING_FWHM / pixel scale`` the seeing in pixels;
- ``log10(SEEING_FWHM)`` (arcsec).

Inputs are scaled by the file's input bias and scale, outputs by its output bias and scale.
"""

import numpy as np

NISO = 8


class NNWError(ValueError):
    """A ``.nnw`` file that cannot be read."""


def read_nnw(path):
    """Read a SExtractor ``.nnw`` neural-network file.

    Parameters
    ----------
    path : str

    Returns
    -------
    dict
        ``layers`` (neurons per layer), ``inbias``, ``inscale``, ``weights`` (one
        (n_in, n_out) array per connection), ``biases``, ``outbias``, ``outscale``.
    """
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise NNWError(f"STARNNW_NAME {path}: cannot read ({exc.strerror})") from None
    if not lines or not lines[0].startswith("NNW"):
        raise NNWError(f"STARNNW_NAME {path}: not a NNW table (first line must be 'NNW')")
    rows = []
    for line in lines[1:]:
        text = line.strip()
        if text and not text.startswith("#"):
            try:
                rows.append([float(v) for v in text.split()])
            except ValueError:
                raise NNWError(f"STARNNW_NAME {path}: non-numeric line {text[:40]!r}") from None
    try:
        n_layers = int(rows[0][0])
        layers = [int(v) for v in rows[0][1:1 + n_layers]]
        inbias = np.array(rows[1][:layers[0]])
        inscale = np.array(rows[2][:layers[0]])
        k = 3
        weights, biases = [], []
        for n_in, n_out in zip(layers[:-1], layers[1:]):
            block = np.array([r[:n_in + 1] for r in rows[k:k + n_out]])
            weights.append(block[:, :n_in].T)
            biases.append(block[:, n_in])
            k += n_out
        outbias = np.array(rows[k][:layers[-1]])
        outscale = np.array(rows[k + 1][:layers[-1]])
    except (IndexError, ValueError):
        raise NNWError(f"STARNNW_NAME {path}: truncated or inconsistent NNW table") from None
    if inbias.size != layers[0] or any(w.shape[0] != n for w, n in zip(weights, layers)):
        raise NNWError(f"STARNNW_NAME {path}: truncated or inconsistent NNW table")
    return {"layers": layers, "inbias": inbias, "inscale": inscale, "weights": weights,
            "biases": biases, "outbias": outbias, "outscale": outscale}


def nnw_response(brain, inputs):
    """Network output for each row of ``inputs`` (n, n_inputs) -> (n, n_outputs)."""
    x = inputs * brain["inscale"] + brain["inbias"]
    for w, b in zip(brain["weights"], brain["biases"]):
        x = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    return (x - brain["outbias"]) / brain["outscale"]


def iso_areas(pix, oid, peak, thresh, n):
    """Pixels above each of SExtractor's 8 isophotes, per object.

    Parameters
    ----------
    pix : numpy.ndarray
        Footprint pixel values (background-subtracted), grouped by object.
    oid : numpy.ndarray of int
        Object index of each pixel.
    peak, thresh : numpy.ndarray
        Peak value and analysis threshold (ADU) of each object.
    n : int
        Number of objects.

    Returns
    -------
    numpy.ndarray of int (n, 8)
    """
    ok = (peak > 0) & (thresh > 0)
    safe_t = np.where(ok, thresh, 1.0)
    ratio = np.where(ok, peak / safe_t, 1.0)
    areas = np.zeros((n, NISO), dtype=np.int64)
    pix32 = pix.astype(np.float32)
    for i in range(NISO):
        # Thresholds in single precision, as SExtractor stores them.
        level = np.where(ok, safe_t * ratio ** (i / NISO), 0.0).astype(np.float32)
        areas[:, i] = np.bincount(oid, weights=pix32 > level[oid], minlength=n)
    return areas


def class_star(brain, areas, peak, field_thresh, seeing_fwhm, pixel_scale):
    """CLASS_STAR of each object.

    Parameters
    ----------
    brain : dict
        From ``read_nnw``.
    areas : numpy.ndarray (n, 8)
        From ``iso_areas``.
    peak : numpy.ndarray
        Peak pixel value above the background.
    field_thresh : float
        Analysis threshold of the image (ADU).
    seeing_fwhm : float
        SEEING_FWHM (arcsec).
    pixel_scale : float
        Arcsec per pixel.

    Returns
    -------
    numpy.ndarray of float32
    """
    n = len(peak)
    fac2 = (seeing_fwhm / pixel_scale) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        logarea = np.log10(np.where(areas > 0, areas / fac2, 0.01))
        if field_thresh > 0:
            logpeak = np.log10(np.where(peak > 0, peak / field_thresh, 0.1))
        else:
            logpeak = np.full(n, -1.0)
    inputs = np.empty((n, NISO + 2))
    inputs[:, 0] = logarea[:, 0]
    inputs[:, 1] = logpeak
    inputs[:, 2:NISO + 1] = logarea[:, 1:]
    inputs[:, NISO + 1] = np.log10(seeing_fwhm)
    return nnw_response(brain, inputs)[:, 0].astype(np.float32)
