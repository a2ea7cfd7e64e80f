"""Compiled kernel of the model fits: chi^2, gradient and normal matrix in one pixel pass.

The numpy path (:func:`~shapepipe.modules.ngmix.gmix.model_and_derivs` followed by
``J @ J.T``) builds a (6, n_pixel) derivative array and some twenty temporaries per
evaluation; this kernel accumulates ``chi^2``, ``J r`` and ``J J^T`` directly and skips
the exponential where a component is below ``exp(-30)`` of its peak. It is used when
numba is installed and gives the same numbers as the numpy path to rounding (checked by
the tests); without numba the numpy path is used.
"""

import math

import numpy as np

try:
    from numba import njit
except ImportError:  # pragma: no cover - exercised only without numba
    njit = None

# Components beyond this many "sigma squared" contribute < exp(-30) of their peak.
_SKIP_Q = 60.0


def _normal_equations(x, u, v, area, data, sw, sum_d2, p, f, pflux, pu, pv, pcuu, pcvv,
                      pcuv, grad, A):
    """Accumulate into ``grad`` (6,) and ``A`` (6, 6); returns chi^2, or -1 if undefined.

    ``x = (u0, v0, g1, g2, T, flux)``; ``p, f`` the profile mixture; ``p*`` the PSF
    mixture (fluxes normalised here); ``sw`` the square roots of the weights and
    ``sum_d2 = sum((data * sw)**2)``.
    """
    u0, v0, g1, g2, T, flux = x[0], x[1], x[2], x[3], x[4], x[5]
    gsq = g1 * g1 + g2 * g2
    den = 1.0 + gsq
    e1 = 2.0 * g1 / den
    e2 = 2.0 * g2 / den
    ngal = p.size
    npsf = pflux.size
    nc = ngal * npsf
    ftot = 0.0
    for j in range(npsf):
        ftot += pflux[j]
    amp = np.empty(nc)
    iuu = np.empty(nc)
    ivv = np.empty(nc)
    iuv = np.empty(nc)
    cu = np.empty(nc)
    cv = np.empty(nc)
    fsc = np.empty(nc)
    for i in range(ngal):
        for j in range(npsf):
            k = i * npsf + j
            cuu = 0.5 * T * (1.0 + e1) * f[i] + pcuu[j]
            cvv = 0.5 * T * (1.0 - e1) * f[i] + pcvv[j]
            cuv = 0.5 * T * e2 * f[i] + pcuv[j]
            det = cuu * cvv - cuv * cuv
            if det <= 0.0 or cuu <= 0.0 or cvv <= 0.0:
                return -1.0
            amp[k] = p[i] * pflux[j] / ftot / (2.0 * math.pi * math.sqrt(det))
            iuu[k] = cvv / det
            ivv[k] = cuu / det
            iuv[k] = -cuv / det
            cu[k] = u0 + pu[j]
            cv[k] = v0 + pv[j]
            fsc[k] = f[i]
    den2 = den * den
    de1_dg1 = 2.0 / den - 4.0 * g1 * g1 / den2
    de1_dg2 = -4.0 * g1 * g2 / den2
    de2_dg1 = de1_dg2
    de2_dg2 = 2.0 / den - 4.0 * g2 * g2 / den2
    half_t = 0.5 * T
    # Sums in scalars (registers) rather than arrays: ~2x faster.
    g0 = g1 = g2 = g3 = g4 = g5 = 0.0
    a00 = a10 = a11 = a20 = a21 = a22 = a30 = 0.0
    a31 = a32 = a33 = a40 = a41 = a42 = a43 = 0.0
    a44 = a50 = a51 = a52 = a53 = a54 = a55 = 0.0
    chi2 = sum_d2
    for n in range(u.size):
        unit = 0.0
        d_u0 = 0.0
        d_v0 = 0.0
        s_uu = 0.0
        s_vv = 0.0
        s_uv = 0.0
        for k in range(nc):
            du = u[n] - cu[k]
            dv = v[n] - cv[k]
            wu = iuu[k] * du + iuv[k] * dv
            wv = iuv[k] * du + ivv[k] * dv
            q = du * wu + dv * wv
            if q > _SKIP_Q:
                continue
            e = amp[k] * area[n] * math.exp(-0.5 * q)
            unit += e
            gk = flux * e
            d_u0 += gk * wu
            d_v0 += gk * wv
            gf = gk * fsc[k]
            s_uu += gf * 0.5 * (wu * wu - iuu[k])
            s_vv += gf * 0.5 * (wv * wv - ivv[k])
            s_uv += gf * (wu * wv - iuv[k])
        if unit == 0.0:
            continue
        s = sw[n]
        m = flux * unit * s
        ds = data[n] * s
        # (m - d)^2 = d^2 + m (m - 2 d): the d^2 of every pixel is in sum_d2 already.
        chi2 += m * (m - 2.0 * ds)
        r = m - ds
        diff = s_uu - s_vv
        j0 = d_u0 * s
        j1 = d_v0 * s
        j2 = half_t * (de1_dg1 * diff + de2_dg1 * s_uv) * s
        j3 = half_t * (de1_dg2 * diff + de2_dg2 * s_uv) * s
        j4 = 0.5 * ((1.0 + e1) * s_uu + (1.0 - e1) * s_vv + e2 * s_uv) * s
        j5 = unit * s
        g0 += j0 * r
        g1 += j1 * r
        g2 += j2 * r
        g3 += j3 * r
        g4 += j4 * r
        g5 += j5 * r
        a00 += j0 * j0
        a10 += j1 * j0
        a11 += j1 * j1
        a20 += j2 * j0
        a21 += j2 * j1
        a22 += j2 * j2
        a30 += j3 * j0
        a31 += j3 * j1
        a32 += j3 * j2
        a33 += j3 * j3
        a40 += j4 * j0
        a41 += j4 * j1
        a42 += j4 * j2
        a43 += j4 * j3
        a44 += j4 * j4
        a50 += j5 * j0
        a51 += j5 * j1
        a52 += j5 * j2
        a53 += j5 * j3
        a54 += j5 * j4
        a55 += j5 * j5
    grad[0] = g0
    grad[1] = g1
    grad[2] = g2
    grad[3] = g3
    grad[4] = g4
    grad[5] = g5
    A[0, 0] = a00
    A[1, 0] = a10
    A[0, 1] = a10
    A[1, 1] = a11
    A[2, 0] = a20
    A[0, 2] = a20
    A[2, 1] = a21
    A[1, 2] = a21
    A[2, 2] = a22
    A[3, 0] = a30
    A[0, 3] = a30
    A[3, 1] = a31
    A[1, 3] = a31
    A[3, 2] = a32
    A[2, 3] = a32
    A[3, 3] = a33
    A[4, 0] = a40
    A[0, 4] = a40
    A[4, 1] = a41
    A[1, 4] = a41
    A[4, 2] = a42
    A[2, 4] = a42
    A[4, 3] = a43
    A[3, 4] = a43
    A[4, 4] = a44
    A[5, 0] = a50
    A[0, 5] = a50
    A[5, 1] = a51
    A[1, 5] = a51
    A[5, 2] = a52
    A[2, 5] = a52
    A[5, 3] = a53
    A[3, 5] = a53
    A[5, 4] = a54
    A[4, 5] = a54
    A[5, 5] = a55
    return max(chi2, 0.0)


def _admom_sums(u, v, image, u0, v0, muu, mvv, muv, out):
    """Gaussian-weighted sums of adaptive moments into ``out`` (6,).

    ``out = (S, S_u, S_v, S_uu, S_vv, S_uv)`` with ``S_xy = sum(w I dx dy)``, weight
    ``w = exp(-chi^2 / 2)`` of the ellipse ``(muu, mvv, muv)`` centred at ``(u0, v0)``.
    """
    det = muu * mvv - muv * muv
    for a in range(6):
        out[a] = 0.0
    for n in range(u.size):
        du = u[n] - u0
        dv = v[n] - v0
        chi2 = (mvv * du * du - 2.0 * muv * du * dv + muu * dv * dv) / det
        if chi2 > 2.0 * _SKIP_Q:
            continue
        wi = math.exp(-0.5 * chi2) * image[n]
        out[0] += wi
        out[1] += wi * du
        out[2] += wi * dv
        out[3] += wi * du * du
        out[4] += wi * dv * dv
        out[5] += wi * du * dv


if njit is not None:
    normal_equations = njit(cache=True, nogil=True)(_normal_equations)
    admom_sums = njit(cache=True, nogil=True)(_admom_sums)
else:  # pragma: no cover
    normal_equations = admom_sums = None

HAVE_KERNEL = normal_equations is not None
