"""Metadetection: weighted moments, the stack's noise texture, the shear recovered on a cell."""

import numpy as np
import pytest

from shapepipe.modules.metadetect.cell import metadetect_cell, noise_power, tile_noise
from shapepipe.modules.metadetect.moments import FLAG_EDGE, FLAG_MASKED, weighted_moments
from shapepipe.modules.ngmix.observation import Jacobian

SCALE = 0.187


def _gaussian(shape, x0, y0, cov_pix, flux=1.0):
    y, x = np.mgrid[:shape[0], :shape[1]]
    d = np.stack([x - x0, y - y0])
    inv = np.linalg.inv(cov_pix)
    q = np.einsum("i...,ij,j...->...", d, inv, d)
    return flux * np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(np.linalg.det(cov_pix)))


def test_weighted_moments_of_a_gaussian_match_the_analytic_product():
    cov_pix = np.array([[9.0, 2.0], [2.0, 5.0]])  # well sampled: pixel effects ~1e-3
    img = _gaussian((81, 81), 40.3, 39.6, cov_pix, flux=1000.0)
    jac = np.array([[SCALE, 0.0], [0.0, SCALE]])
    sigma_w = 0.8
    m = weighted_moments(img, [40.3], [39.6], jac, sigma_w)
    c = cov_pix * SCALE ** 2
    cw = np.linalg.inv(np.linalg.inv(c) + np.eye(2) / sigma_w ** 2)
    e1 = (cw[0, 0] - cw[1, 1]) / np.trace(cw)
    e2 = 2 * cw[0, 1] / np.trace(cw)
    assert m["flags"][0] == 0
    assert m["e1"][0] == pytest.approx(e1, abs=2e-3)
    assert m["e2"][0] == pytest.approx(e2, abs=2e-3)
    assert m["T_w"][0] == pytest.approx(np.trace(cw), rel=3e-3)
    # the weight divided out gives the object's own size
    assert m["T"][0] == pytest.approx(np.trace(c), rel=1e-2)


def test_weighted_moments_flag_edges_masks_and_non_shapes():
    img = _gaussian((41, 41), 20, 20, np.eye(2) * 4.0, 100.0)
    jac = np.eye(2) * SCALE
    bad = np.zeros(img.shape, bool)
    bad[21, 20] = True
    m = weighted_moments(img, [20.0, 2.0], [20.0, 20.0], jac, 0.5, bad=bad)
    assert m["flags"][0] & FLAG_MASKED and not m["flags"][0] & FLAG_EDGE
    assert m["flags"][1] & FLAG_EDGE
    # pure negative noise: no shape, no e
    neg = weighted_moments(-img, [20.0], [20.0], jac, 0.5)
    assert neg["flags"][0] and np.isnan(neg["e1"][0])


def test_tile_noise_has_the_level_and_texture_of_bilinear_resampling():
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(5)
    shape = (400, 400)
    offsets = [(0.3, 0.7), (0.5, 0.1), (0.9, 0.4)]
    w = np.full(shape, 4.0)  # stack weight: 3 epochs of weight 4/3 each
    # the stacker's operation on white noise of each epoch (sigma^2 = 3/4)
    ref = np.zeros(shape)
    y, x = np.mgrid[:shape[0], :shape[1]].astype(float)
    for ux, uy in offsets:
        white = rng.standard_normal((shape[0] + 2, shape[1] + 2)) * np.sqrt(0.75)
        ref += map_coordinates(white, [y + uy, x + ux], order=1)
    ref /= len(offsets)
    sim = tile_noise(np.random.default_rng(6), shape, w, offsets)
    assert sim.var() == pytest.approx(ref.var(), rel=0.03)
    for axis in (0, 1):
        lag_ref = np.mean(ref * np.roll(ref, 1, axis)) / ref.var()
        lag_sim = np.mean(sim * np.roll(sim, 1, axis)) / sim.var()
        assert lag_sim == pytest.approx(lag_ref, abs=0.02)
    assert np.all(tile_noise(rng, (5, 5), np.zeros((5, 5)), offsets) == 0)


def _ring_cell(g1, g2, n=260, noise=0.05):
    """Exponential galaxies in rotated rings, sheared in shape and position, Moffat PSF."""
    import galsim

    psf = galsim.Moffat(beta=3.0, fwhm=0.7).shear(g1=0.03, g2=-0.02)
    img = galsim.ImageD(n, n, scale=SCALE)
    c = (n - 1) / 2.0
    a = np.array([[1 + g1, g2], [g2, 1 - g1]]) / np.sqrt(1 - g1 * g1 - g2 * g2)
    k = 0
    for iy in range(4):
        for ix in range(4):
            e = 0.3
            beta = np.pi / 4 * k  # 8 orientations: shape noise cancels in the mean
            gal = galsim.Exponential(half_light_radius=0.5 + 0.1 * (k % 3), flux=5000.0)
            gal = gal.shear(e=e, beta=beta * galsim.radians).shear(g1=g1, g2=g2)
            p = a @ np.array([40 + 60 * ix - c, 40 + 60 * iy - c]) + c
            galsim.Convolve(gal, psf).drawImage(img, add_to_image=True,
                                                offset=(p[0] - c, p[1] - c))
            k += 1
    psf_img = psf.drawImage(nx=41, ny=41, scale=SCALE).array
    rng = np.random.default_rng(1)
    image = img.array + rng.normal(0, noise, img.array.shape)
    weight = np.full(image.shape, noise ** -2)
    return image, weight, psf_img / psf_img.sum()


def _mean_shear(g1, g2):
    image, weight, psf = _ring_cell(g1, g2)
    n = image.shape[0]
    jac = Jacobian((n - 1) / 2.0, (n - 1) / 2.0, np.eye(2) * SCALE)
    white = np.random.default_rng(2).standard_normal(image.shape)
    res, info = metadetect_cell(image, weight, psf, jac, white)
    mean = {}
    for t, r in res.items():
        ok = (r["flags"] == 0) & (r["s2n"] > 10) & (r["T_ratio"] > 0.5)
        mean[t] = (ok.sum(), np.mean(r["e1"][ok]), np.mean(r["e2"][ok]))
    r11 = (mean["1p"][1] - mean["1m"][1]) / 0.02
    r22 = (mean["2p"][2] - mean["2m"][2]) / 0.02
    return mean, r11, r22, info


def test_metadetect_recovers_the_shear_of_a_cell():
    g = (0.02, -0.01)
    mean, r11, r22, info = _mean_shear(*g)
    assert all(v[0] == 16 for v in mean.values())  # every galaxy, once, in every step
    assert 0.2 < r11 < 0.8 and 0.2 < r22 < 0.8
    # 16 galaxies of 8 orientations: shape noise cancels to ~1e-4 in the means
    assert mean["noshear"][1] / r11 == pytest.approx(g[0], abs=1e-3)
    assert mean["noshear"][2] / r22 == pytest.approx(g[1], abs=1e-3)
    assert info["sigma_reconv"] > 0 and info["T_reconv"] > 0


def _moffat_psf(size=41):
    import galsim

    psf = galsim.Moffat(beta=3.0, fwhm=0.7).shear(g1=0.05, g2=-0.03)
    img = psf.drawImage(nx=size, ny=size, scale=SCALE).array
    return img / img.sum()


def test_correction_noise_has_the_spectrum_of_the_rotated_sheared_noise():
    """make_corrected's correction has the power spectrum of Sheldon & Huff's construction
    (noise rotated by 90 degrees, put through the step's operator, rotated back)."""
    from shapepipe.modules.ngmix.metacal import MetacalImager

    n = 96
    psf = _moffat_psf()
    jac = Jacobian((n - 1) / 2.0, (n - 1) / 2.0, np.eye(2) * SCALE)
    offsets = [(0.3, 0.7), (0.5, 0.1), (0.9, 0.4)]
    weight = np.full((n, n), 4.0)
    sigma_r = 0.45
    g = (0.05, 0.0)  # a large step, so that the anisotropy is measurable
    imager = MetacalImager((n, n), jac, psf, sigma_r)
    rng = np.random.default_rng(11)
    inner = slice(16, n - 16)  # away from the stamp operator's edges
    ref, new = np.zeros((n - 32, n - 32)), np.zeros((n - 32, n - 32))
    for _ in range(60):
        noise = tile_noise(rng, (n, n), weight, offsets)
        rotated = np.rot90(imager.make(np.rot90(noise, 1), *g).real, -1)
        ref += np.abs(np.fft.fft2(rotated[inner, inner])) ** 2
        c = imager.make_corrected(np.zeros((n, n)), rng.standard_normal((n, n)), *g,
                                  noise_power=noise_power(offsets, 4.0))
        new += np.abs(np.fft.fft2(c[inner, inner])) ** 2
    assert new.sum() == pytest.approx(ref.sum(), rel=0.05)  # same variance
    k = 2 * np.pi * np.fft.fftfreq(n - 32)
    kx, ky = np.meshgrid(k, k)
    low = (kx ** 2 + ky ** 2 < 1.0) & (kx ** 2 + ky ** 2 > 0)
    # the anisotropy: power along kx against along ky, the same in both constructions
    aniso_ref = (ref[low] * (kx[low] ** 2 - ky[low] ** 2)).sum() / ref[low].sum()
    aniso_new = (new[low] * (kx[low] ** 2 - ky[low] ** 2)).sum() / new[low].sum()
    assert abs(aniso_ref) > 0.01
    assert aniso_new == pytest.approx(aniso_ref, rel=0.15)


def test_correction_noise_moves_with_the_scene_in_every_step():
    """Under an object 100+ pixels from the cell centre, the 1p and 1m corrections are the
    same realisation (each moved with its sheared scene)."""
    from scipy.ndimage import map_coordinates

    from shapepipe.modules.ngmix.metacal import MetacalImager, shear_matrix

    n = 200
    psf = _moffat_psf()
    c0 = (n - 1) / 2.0
    jac = Jacobian(c0, c0, np.eye(2) * SCALE)
    white = np.random.default_rng(3).standard_normal((n, n))
    imager = MetacalImager((n, n), jac, psf, 0.45)
    step = 0.01
    fields = {}
    for g in (step, -step):
        fields[g] = imager.make_corrected(np.zeros((n, n)), white, g, 0.0)
    # A point p of the unsheared scene is at a(g) p in the image of shear g.
    y, x = np.mgrid[30:60, 30:60].astype(float)  # ~100 pixels from the centre
    p = np.stack([x.ravel() - c0, y.ravel() - c0])
    at = {g: shear_matrix(g, 0.0) @ p + c0 for g in fields}
    vals = {g: map_coordinates(fields[g], [at[g][1], at[g][0]], order=3) for g in fields}
    assert np.corrcoef(vals[step], vals[-step])[0, 1] > 0.98
    # at the same pixel (the rotated construction's behaviour) they are far less alike
    same_pixel = np.corrcoef(fields[step][30:60, 30:60].ravel(),
                             fields[-step][30:60, 30:60].ravel())[0, 1]
    assert same_pixel < np.corrcoef(vals[step], vals[-step])[0, 1] - 0.05


def test_star_mask_radius_grows_with_brightness():
    from shapepipe.modules.metadetect.process import star_mask

    dec0 = 30.0
    stars = (np.array([10.0, 10.01]), np.array([dec0, dec0]), np.array([18.5, 15.0]))
    # detections 2" and 6" east of each star (RA offsets in degrees at dec0)
    off = np.array([2.0, 6.0]) / 3600.0 / np.cos(np.radians(dec0))
    ra = np.r_[10.0 + off, 10.01 + off]
    dec = np.full(4, dec0)
    hit = star_mask(ra, dec, stars, mag_lim=18.0, radius_at_lim=2.5)
    # the r = 18.5 star is fainter than the limit; the r = 15 one masks 2.5 x 10**0.6 = 10"
    assert hit.tolist() == [False, False, True, True]
    assert not star_mask(ra, dec, None).any()


def test_runner_rejects_bad_settings_before_any_job():
    from shapepipe.modules.metadetect_runner import _check

    class Config:
        def __init__(self, **values):
            self.values = values

        def read_keys(self, section, keys):
            out = {k.name: k.default for k in keys}
            out.update(self.values)
            return out

    _check(Config(), "METADETECT_RUNNER")
    for bad in ({"CELL_SIZE": 8}, {"PSF_SIZE": 40}, {"STEP": 0.2},
                {"TILE_RESAMPLING": "BILINEAR", "LOG_WCS": ""},
                {"STAR_MASK_RADIUS": 40.0}):
        with pytest.raises(ValueError, match="METADETECT_RUNNER"):
            _check(Config(**bad), "METADETECT_RUNNER")


def test_size_error_matches_the_scatter_over_noise_realisations():
    """T_err (linear propagation of the pixel variances) against the scatter of T over 400
    noise realisations of a small round Gaussian (S/N ~ 30)."""
    jac = np.eye(2) * SCALE
    truth = _gaussian((41, 41), 20.0, 20.0, np.eye(2) * 4.0, 400.0)
    sigma = 1.0
    rng = np.random.default_rng(8)
    images = truth[None] + rng.normal(0, sigma, (400, 41, 41))
    t, t_w, err, err_w = [], [], [], []
    for img in images:
        m = weighted_moments(img, [20.0], [20.0], jac, 0.5,
                             variance=np.full((41, 41), sigma ** 2))
        t.append(m["T"][0])
        t_w.append(m["T_w"][0])
        err.append(m["T_err"][0])
        err_w.append(m["T_w_err"][0])
    assert np.std(t_w) == pytest.approx(np.median(err_w), rel=0.1)
    assert np.std(t) == pytest.approx(np.median(err), rel=0.15)


def test_default_cuts_size_significance_and_non_finite_shapes():
    from shapepipe.modules.metadetect.shear import default_cuts

    table = {"MDET_FLAGS": np.array([0, 0, 0, 0, 1, 0]), "MASK_FLAGS": np.zeros(6, int),
             "MDET_S2N": np.full(6, 20.0),
             "MDET_T_RATIO": np.array([0.6, 0.6, 2.0, 2.0, 2.0, np.inf]),
             "MDET_T_RATIO_ERR": np.array([0.3, 0.1, 0.1, 0.1, 0.1, np.nan]),
             "MDET_G1": np.array([0.1, 0.1, 0.1, np.nan, 0.1, 0.1]), "MDET_G2": np.zeros(6)}
    assert default_cuts(table).tolist() == [True, True, True, False, False, True]
    # 0.6 is 2 sigma from zero in the first row, 6 sigma in the second; inf (larger than
    # the weight) is resolved whatever its (undefined) error.
    assert default_cuts(table, size_sigma=5.0).tolist() == [False, True, True, False, False,
                                                            True]
