"""Metadetection of one cell: shear the whole image, then detect and measure on each version.

Metacalibration on a catalogue (ngmix_runner) shears stamps cut around objects that were
detected, deblended and masked on the *real* image. Under a real shear those detections,
segmentation boundaries and neighbour masks change; under metacal's artificial shear they
do not, so the measured response misses that part (session 9 measured -20% response for
galaxies with a neighbour 1-3" away and -60% for blends with stars). Metadetection (Sheldon
et al. 2020, ApJ 902, 138) removes the asymmetry: the whole cell is deconvolved, sheared and
reconvolved five times (noshear, 1p, 1m, 2p, 2m), and detection, deblending, measurement and
selection are redone on each. The response is then the difference of catalogue means,
``R11 = (<e1>_1p - <e1>_1m) / (2 step)``, which contains the detection and selection terms.

The measurement is Gaussian-weighted moments (:mod:`.moments`), as in DES Y6. The images
come from :class:`~shapepipe.modules.ngmix.metacal.MetacalImager` (exact sheared transforms)
with the Sheldon & Huff (2017) noise correction, drawn so that it is the same realisation in
every step (:meth:`MetacalImager.make_corrected`).
"""

import threading
from dataclasses import dataclass

import numpy as np

from shapepipe.modules.metadetect.moments import weighted_moments
from shapepipe.modules.ngmix.fitting import fit_psf_gauss
from shapepipe.modules.ngmix.metacal import METACAL_TYPES, MetacalImager, shear_matrix
from shapepipe.modules.ngmix.observation import Jacobian

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
FLAG_NO_PSF = 8  #: the cell's PSF could not be fitted
#: sep's deblending draws from a process-wide generator reset at each extraction: one
#: extraction at a time, so that cells measured in threads give the same catalogue.
_SEP_LOCK = threading.Lock()


@dataclass
class DetectConfig:
    """sep detection settings on the sheared images (those of the metadetect simulations)."""

    thresh: float = 0.8  # in units of the sheared image's pixel noise
    minarea: int = 4
    deblend_nthresh: int = 32
    deblend_cont: float = 1e-5
    filter_fwhm: float = 3.0  # pixels: the 7x7 Gaussian convolution kernel


def gaussian_kernel(fwhm, size=7):
    """A ``size`` x ``size`` Gaussian convolution kernel of FWHM ``fwhm`` pixels (peak 1)."""
    h = (size - 1) / 2.0
    t = np.arange(size) - h
    s = fwhm / _FWHM_PER_SIGMA
    g = np.exp(-0.5 * (t / s) ** 2)
    return np.outer(g, g)


def tile_noise(rng, shape, weight, offsets=None):
    """A noise field with the texture and level of a bilinear-resampled, stacked tile.

    Each epoch's white noise passes through its bilinear resampling kernel (fractional grid
    offsets ``(ux, uy)``) and the epochs are averaged, as the stacker does; the result is
    scaled so that its variance is ``(1 / weight) x`` the mean kernel norm, which is the stack's
    real pixel variance when the epochs have equal depth (the stack's weight map is the sum
    of the epochs' weights and ignores the variance the interpolation removes).

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : tuple
        ``(ny, nx)``.
    weight : numpy.ndarray
        Inverse-variance weight map (0: no data, noise 0 there).
    offsets : sequence of (float, float), optional
        ``(ux, uy)`` per epoch; None or empty: white noise of variance ``1 / weight``.

    Returns
    -------
    numpy.ndarray
    """
    ny, nx = shape
    w = np.asarray(weight, dtype=float)
    good = w > 0
    inv_w = np.where(good, 1.0 / np.where(good, w, 1.0), 0.0)
    if not offsets:
        return rng.standard_normal(shape) * np.sqrt(inv_w)
    acc = np.zeros(shape)
    for ux, uy in offsets:
        n = rng.standard_normal((ny + 1, nx + 1))
        acc += (1.0 - uy) * ((1.0 - ux) * n[:-1, :-1] + ux * n[:-1, 1:]) \
            + uy * ((1.0 - ux) * n[1:, :-1] + ux * n[1:, 1:])
    # var(acc) = sum_e f_e, f_e the kernel norm; the stack's is (1 / w) mean_e f_e.
    return acc * np.sqrt(inv_w / len(offsets))


def _kernel_power(kx, ky, offsets):
    """Mean over epochs of ``|K_e(k)|^2`` for the two-tap bilinear kernels (1 without)."""
    if not offsets:
        return np.ones_like(kx)
    out = np.zeros_like(kx)
    for ux, uy in offsets:
        out += (1.0 - 2.0 * ux * (1.0 - ux) * (1.0 - np.cos(kx))) \
            * (1.0 - 2.0 * uy * (1.0 - uy) * (1.0 - np.cos(ky)))
    return out / len(offsets)


def noise_power(offsets, weight_level):
    """``N(kx, ky)`` of a stacked tile's noise (per unit white variance), for the correction.

    The mean over epochs of the bilinear kernels' ``|K_e(k)|^2`` (:func:`tile_noise`), times
    the stack's white-noise level ``1 / weight``.
    """
    def power(kx, ky):
        return _kernel_power(kx, ky, offsets) / weight_level
    return power


def reconvolution_sigma(psf, jac_matrix, step):
    """Sigma (arcsec) of the round reconvolution Gaussian and the PSF's Gaussian fit.

    The major axis of the PSF's Gaussian fit, dilated by ``1 + 2 |step|`` (as ngmix_runner).
    """
    n = psf.shape[0]
    fit = fit_psf_gauss(psf, Jacobian((n - 1) / 2.0, (n - 1) / 2.0, jac_matrix))
    if fit["flags"]:
        return None, fit
    cov = np.array([[fit["gmix"].cuu[0], fit["gmix"].cuv[0]],
                    [fit["gmix"].cuv[0], fit["gmix"].cvv[0]]])
    return float(np.sqrt(np.linalg.eigvalsh(cov).max()) * (1.0 + 2.0 * abs(step))), fit


def _gaussian_stamp(sigma, jac_matrix, size):
    """A round Gaussian of sigma ``sigma`` arcsec sampled on a stamp (unit sum, centred)."""
    h = (size - 1) / 2.0
    t = np.arange(size) - h
    dx, dy = np.meshgrid(t, t)
    u = jac_matrix[0, 0] * dx + jac_matrix[0, 1] * dy
    v = jac_matrix[1, 0] * dx + jac_matrix[1, 1] * dy
    g = np.exp(-0.5 * (u * u + v * v) / sigma ** 2)
    return g / g.sum()


def metadetect_cell(image, weight, psf, jacobian, white, step=0.01, weight_fwhm=1.2,
                    detect=None, types=METACAL_TYPES, offsets=None):
    """Detect and measure one cell on its five metacal images.

    Parameters
    ----------
    image, weight : numpy.ndarray
        Square ``(n, n)`` cell image (background subtracted) and inverse-variance weight
        (0 where there is no data).
    psf : numpy.ndarray
        PSF of the cell on the image's pixel grid (odd square stamp, unit sum, centred).
    jacobian : Jacobian
        Pixel -> sky map of the cell; its reference point is the shear centre.
    white : numpy.ndarray
        Unit-variance white noise of the cell's shape, from which every step's noise
        correction is drawn (:meth:`MetacalImager.make_corrected`).
    step : float
        Metacal shear step.
    weight_fwhm : float
        FWHM (arcsec) of the moments' Gaussian weight.
    detect : DetectConfig, optional
    types : sequence of str
    offsets : sequence of (ux, uy), optional
        The epochs' bilinear resampling offsets (the noise texture of a stacked tile).

    Returns
    -------
    results : dict
        ``{type: dict of arrays}`` with ``x, y`` (0-based cell pixel position mapped back to
        the unsheared frame), ``x_sheared, y_sheared``, ``flux, flux_err, s2n, T, T_ratio, e1,
        e2, flags``.
    psf_info : dict
        ``g1, g2, T`` of the PSF's Gaussian fit (arcsec^2), ``sigma_reconv`` (arcsec),
        ``T_reconv`` (deweighted moments of the reconvolution PSF, arcsec^2), ``flags``.
    """
    import sep

    detect = detect or DetectConfig()
    image = np.asarray(image, dtype=float)
    weight = np.asarray(weight, dtype=float)
    if image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ValueError(f"metadetect needs a square cell image, got shape {image.shape}")
    bad = ~(weight > 0)
    sigma_w = weight_fwhm / _FWHM_PER_SIGMA
    jac = jacobian.matrix
    sigma_r, fit = reconvolution_sigma(psf, jac, step)
    psf_info = {"g1": fit["g1"], "g2": fit["g2"], "T": fit["T"], "flags": 0}
    if sigma_r is None:
        psf_info["flags"] = FLAG_NO_PSF
        return None, psf_info
    rpsf = _gaussian_stamp(sigma_r, jac, psf.shape[0])
    c = (psf.shape[0] - 1) / 2.0
    t_reconv = float(weighted_moments(rpsf, [c], [c], jac, sigma_w)["T"][0])
    psf_info.update(sigma_reconv=sigma_r, T_reconv=t_reconv)

    img = np.where(bad, 0.0, image)
    imager = MetacalImager(img.shape, jacobian, psf, sigma_r)
    w_med = np.median(weight[~bad]) if np.any(~bad) else 1.0
    # The correction's noise follows the image's level: white scaled to 1 / weight, the
    # stack's texture in the spectrum.
    white_scaled = np.where(bad, 0.0, white * np.sqrt(w_med / np.where(bad, w_med, weight)))
    power = noise_power(offsets, w_med)
    rel_sigma = np.sqrt(w_med / np.where(bad, w_med, weight))
    # The flux error: deconvolution and reconvolution keep the noise power at the low
    # frequencies a 1" weight integrates (the transfer ratio is 1 at k = 0) and the
    # correction noise doubles it, so the weighted flux has ~2x the variance of the input's
    # white-noise level 1 / weight. The sheared images' own pixel rms is smaller (they are
    # smoothed) and would overstate S/N several times over.
    flux_var = 2.0 / np.where(bad, w_med, weight)
    kernel = gaussian_kernel(detect.filter_fwhm)
    centre = np.array([jacobian.x0, jacobian.y0])
    shears = {"noshear": (0.0, 0.0), "1p": (step, 0.0), "1m": (-step, 0.0),
              "2p": (0.0, step), "2m": (0.0, -step)}
    results = {}
    for t in types:
        # The image and its noise correction in one complex transform (real, imaginary).
        im = np.ascontiguousarray(imager.make_corrected(img, white_scaled, *shears[t],
                                                        noise_power=power))
        vals = im[~bad]
        # Robust pixel noise of the sheared image (objects are a minority of the pixels).
        rms = 1.4826 * np.median(np.abs(vals - np.median(vals))) if vals.size else 1.0
        err = rms * rel_sigma
        with _SEP_LOCK:
            objs = sep.extract(im, detect.thresh, err=err, mask=bad, minarea=detect.minarea,
                               filter_kernel=kernel, filter_type="conv",
                               deblend_nthresh=detect.deblend_nthresh,
                               deblend_cont=detect.deblend_cont)
        xs = np.asarray(objs["x"], dtype=float)
        ys = np.asarray(objs["y"], dtype=float)
        mom = weighted_moments(im, xs, ys, jac, sigma_w, variance=flux_var, bad=bad)
        a_pix = jacobian.inverse @ shear_matrix(*shears[t]) @ jac
        back = np.linalg.solve(a_pix, np.vstack([xs - centre[0], ys - centre[1]]))
        with np.errstate(divide="ignore", invalid="ignore"):
            s2n = np.where(mom["flux_err"] > 0, mom["flux"] / mom["flux_err"], np.nan)
            t_ratio = (mom["T"] - t_reconv) / t_reconv
            t_ratio_err = mom["T_err"] / t_reconv
        results[t] = {"x": back[0] + centre[0], "y": back[1] + centre[1],
                      "x_sheared": xs, "y_sheared": ys, "flux": mom["flux"],
                      "flux_err": mom["flux_err"], "s2n": s2n, "T": mom["T"],
                      "T_ratio": t_ratio, "T_ratio_err": t_ratio_err, "e1": mom["e1"],
                      "e2": mom["e2"],
                      "flags": mom["flags"]}
    return results, psf_info
