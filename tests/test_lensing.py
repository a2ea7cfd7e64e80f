"""The scene shear of positions (shapepipe.utils.lensing) against GalSim's shear."""

import galsim
import numpy as np
import pytest

from shapepipe.utils.lensing import gnomonic, shear_matrix, shear_positions, tangent_to_sky


def test_gnomonic_round_trip_and_orientation():
    rng = np.random.default_rng(1)
    ra0, dec0 = 210.3, 33.2
    ra = ra0 + rng.uniform(-0.3, 0.3, 200)
    dec = dec0 + rng.uniform(-0.3, 0.3, 200)
    u, v = gnomonic(ra, dec, ra0, dec0)
    back = tangent_to_sky(ra0, dec0, -np.rad2deg(u) * 3600, np.rad2deg(v) * 3600)
    assert np.allclose(back[0], ra, atol=1e-10) and np.allclose(back[1], dec, atol=1e-10)
    # +u is west (decreasing RA), +v north.
    u1, v1 = gnomonic(ra0 + 0.01, dec0, ra0, dec0)
    u2, v2 = gnomonic(ra0, dec0 + 0.01, ra0, dec0)
    assert u1 < 0 and abs(v1) < 1e-3 * abs(u1) and v2 > 0 and abs(u2) < 1e-12


def test_shear_matrix_is_galsims_and_inverts():
    for g1, g2 in ((0.02, 0.0), (-0.03, 0.05), (0.2, -0.1)):
        assert np.allclose(shear_matrix(g1, g2), galsim.Shear(g1=g1, g2=g2).getMatrix())
        assert np.allclose(shear_matrix(g1, g2) @ shear_matrix(-g1, -g2), np.eye(2))
    with pytest.raises(ValueError, match="must be < 1"):
        shear_matrix(0.8, 0.7)


def test_separations_shear_like_profiles():
    """Two galaxies sheared as a scene: their separation vector turns and stretches exactly
    as GalSim stretches a profile with the same shear (moments of a sheared pair)."""
    ra0, dec0 = 150.0, -10.0
    g = (0.03, -0.02)
    # A pair 4" apart near a point 0.1 deg from the centre.
    ra = np.array([150.1, 150.1 + 4.0 / 3600 / np.cos(np.deg2rad(-10.0))])
    dec = np.array([-10.05, -10.05 + 1.0 / 3600])
    rs, ds = shear_positions(ra, dec, *g, ra0, dec0)
    u, v = gnomonic(ra, dec, ra0, dec0)
    us, vs = gnomonic(rs, ds, ra0, dec0)
    sep = np.array([u[1] - u[0], v[1] - v[0]])
    sep_s = np.array([us[1] - us[0], vs[1] - vs[0]])
    assert np.allclose(sep_s, shear_matrix(*g) @ sep, rtol=1e-6)
    # GalSim: a point source offset by sep, sheared, lands at S sep.
    prof = galsim.Gaussian(sigma=1e-3).shift(*(sep * 206265.0)).shear(g1=g[0], g2=g[1])
    assert np.allclose(prof.centroid.x / 206265.0, sep_s[0], rtol=1e-6)
    assert np.allclose(prof.centroid.y / 206265.0, sep_s[1], rtol=1e-6)
    # Undone by the opposite shear; the centre does not move.
    back = shear_positions(rs, ds, -g[0], -g[1], ra0, dec0)
    assert np.allclose(back[0], ra, atol=1e-11) and np.allclose(back[1], dec, atol=1e-11)
    c = shear_positions(np.array([ra0]), np.array([dec0]), *g, ra0, dec0)
    assert np.allclose(c[0], ra0) and np.allclose(c[1], dec0)


def test_groups_shear_their_separations_and_isolated_galaxies_stay():
    from shapepipe.utils.lensing import shear_groups

    ra0, dec0 = 150.0, 20.0
    cosd = np.cos(np.deg2rad(dec0))
    # A pair 3" apart, a triple chained by 6" links (its ends 12" apart), an isolated galaxy.
    du = np.array([0.0, 3.0, 100.0, 106.0, 112.0, -200.0]) / 3600.0
    dv = np.array([0.0, 0.0, 50.0, 50.0, 50.0, -80.0]) / 3600.0
    ra = ra0 + 0.05 - du / cosd  # u points west
    dec = dec0 + dv
    g = (0.04, 0.02)
    rs, ds, labels = shear_groups(ra, dec, *g, ra0, dec0, link_arcsec=8.0)
    assert labels[0] == labels[1] and labels[2] == labels[3] == labels[4]
    assert len(set(labels.tolist())) == 3
    assert rs[5] == ra[5] and ds[5] == dec[5]  # isolated: not moved at all
    u, v = gnomonic(ra, dec, ra0, dec0)
    us, vs = gnomonic(rs, ds, ra0, dec0)
    for a, b in ((0, 1), (2, 4), (3, 4)):
        sep = np.array([u[b] - u[a], v[b] - v[a]])
        assert np.allclose([us[b] - us[a], vs[b] - vs[a]], shear_matrix(*g) @ sep, rtol=1e-6)
    # Each group keeps its centre.
    for members in ([0, 1], [2, 3, 4]):
        assert np.allclose(us[members].mean(), u[members].mean(), atol=1e-13)
        assert np.allclose(vs[members].mean(), v[members].mean(), atol=1e-13)
