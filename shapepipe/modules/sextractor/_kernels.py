"""Compiled per-object measurement loops, following SExtractor 2.25's definitions.

SExtractor measures each object on an image where the pixels detected above the threshold
and belonging to *other* objects are blanked (MASK_TYPE BLANK/CORRECT): a blanked or
bad-weight pixel is skipped (Kron radius) or replaced by the pixel symmetric about the
object's centre, or 0 when that one is blanked too (CORRECT). Each measurement visits a
different set of pixels (ellipse, circle with sub-sampled edges, iterated Gaussian window),
so the loops below run per object over its own window, compiled with numba (cached on
disk). They reproduce SExtractor's photom.c (AUTO, APER), growth.c (FLUX_RADIUS and the
half-light radius) and winpos.c (XWIN/YWIN, FLUX_WIN, the windowed moments): the same
pixel windows, sub-pixel sampling, mirror rule, iteration and give-up rules.

Pixel masks passed in: ``mask`` (uint8: bit 1 for the pixels detected above the threshold
in the filtered detection image, bit 2 for the unusable pixels of the image: zero weight,
non-finite) and ``seg`` (int32, the segmentation map): a pixel is unusable for object
``own`` when bit 2 is set, or bit 1 and ``seg != own``.
"""

import math

import numpy as np
from numba import njit

BIG = 1e30
F_CROWDED, F_APERT_PB = 1, 16
KRON_NSIG = 6.0
CROWD_THRESHOLD = 0.1
APER_OVERSAMP = 5
GROWTH_NSTEP = 64
GROWTH_OVERSAMP = 5
GROWTH_NSIG = 6.0
GROWTH_MINHLRAD = 0.5
WINPOS_NITERMAX = 16
WINPOS_NSIG = 4.0
WINPOS_OVERSAMP = 11
WINPOS_STEPMIN = 1e-4
WINPOS_FAC = 2.0


@njit(cache=True, inline="always")
def _unusable(mask, seg, own, y, x):
    m = mask[y, x]
    return m != 0 and (m >= 2 or seg[y, x] != own)


@njit(cache=True, inline="always")
def _usable(mask, seg, own, y, x):
    """Pixel (y, x) can be measured for object ``own`` (the negation of ``_unusable``)."""
    m = mask[y, x]
    return m == 0 or (m == 1 and seg[y, x] == own)


@njit(cache=True)
def _mirror(sub, var, has_var, mask, seg, own, y, x, m2x, m2y, corr, backvar):
    """(value, variance) replacing the unusable pixel (y, x): SExtractor's CORRECT rule.

    The pixel symmetric about the centre, (int(m2y - y), int(m2x - x)) with ``m2x`` =
    2 x0 + 0.49999, if it is usable and CORRECT is on; else 0. The loops test ``_usable``
    first and call this only otherwise: keeping the usable case a plain load, outside any
    function with several returns, makes the loops ~3x faster.
    """
    ny, nx = sub.shape
    x2 = int(m2x - x)
    y2 = int(m2y - y)
    if corr and x2 >= 0 and x2 < nx and y2 >= 0 and y2 < ny \
            and not _unusable(mask, seg, own, y2, x2):
        return np.float64(sub[y2, x2]), (np.float64(var[y2, x2]) if has_var else backvar)
    return 0.0, (0.0 if has_var else backvar)


@njit(cache=True, inline="always")
def _edge_area(dx, dy, off, scale, nsub, raper2):
    """Fraction of the nsub x nsub sub-pixels of a pixel inside a circle of radius^2 raper2.

    ``dx``, ``dy``: pixel centre minus circle centre. Counts, for each sub-row, the
    sub-pixels with (dx + off + k*scale)^2 < raper2 - dy_s^2 in closed form (the same
    sub-pixel grid as SExtractor's loops, without the inner loop).
    """
    count = 0
    sdy = dy + off
    a = dx + off
    for _sy in range(nsub):
        rhs = raper2 - sdy * sdy
        if rhs > 0:
            h = math.sqrt(rhs)
            kmin = math.floor((-h - a) / scale) + 1
            kmax = math.ceil((h - a) / scale) - 1
            if kmin < 0:
                kmin = 0
            if kmax > nsub - 1:
                kmax = nsub - 1
            if kmax >= kmin:
                count += kmax - kmin + 1
        sdy += scale
    return count * scale * scale


@njit(cache=True, inline="always")
def _clip_box(xmin, xmax, ymin, ymax, nx, ny):
    """A pixel box clipped to the image, and whether it had to be (SExtractor's APERT_PB)."""
    clipped = xmin < 0 or xmax > nx or ymin < 0 or ymax > ny
    return max(xmin, 0), min(xmax, nx), max(ymin, 0), min(ymax, ny), clipped


@njit(cache=True, inline="always")
def _ellipse_box(x0, y0, c2x, c2y, c2xy, lim):
    """Pixel box (end exclusive) of the ellipse c2x dx^2 + c2y dy^2 + c2xy dx dy <= lim^2."""
    dxl = c2x - c2xy * c2xy / (4.0 * c2y)
    dxl = lim / math.sqrt(dxl) if dxl > 0 else 0.0
    dyl = c2y - c2xy * c2xy / (4.0 * c2x)
    dyl = lim / math.sqrt(dyl) if dyl > 0 else 0.0
    return (int(np.rint(x0 - dxl)), int(np.rint(x0 + dxl)) + 1,
            int(np.rint(y0 - dyl)), int(np.rint(y0 + dyl)) + 1)


@njit(cache=True)
def auto_flux(sub, var, has_var, mask, seg, own, mx, my, a, b, cxx, cyy, cxy,
              kron_fact, kron_min, corr, gain, backvar):
    """Kron factor, FLUX_AUTO, its error and flag bits (SExtractor's computeautoflux).

    Returns
    -------
    kron, flux, fluxerr : numpy.ndarray
    flags : numpy.ndarray of int16 (CROWDED, APERT_PB bits)
    """
    n = mx.size
    ny, nx = sub.shape
    kron = np.zeros(n)
    flux = np.zeros(n)
    fluxerr = np.zeros(n)
    flags = np.zeros(n, dtype=np.int16)
    for i in range(n):
        x0, y0 = mx[i], my[i]
        c2x, c2y, c2xy = cxx[i], cyy[i], cxy[i]
        klim2 = KRON_NSIG * KRON_NSIG
        xmin, xmax, ymin, ymax = _ellipse_box(x0, y0, c2x, c2y, c2xy, KRON_NSIG)
        xmin, xmax, ymin, ymax, clipped = _clip_box(xmin, xmax, ymin, ymax, nx, ny)
        if clipped:
            flags[i] |= F_APERT_PB
        r1 = 0.0
        v1 = 0.0
        area = 0
        areab = 0
        for y in range(ymin, ymax):
            dy = y - y0
            for x in range(xmin, xmax):
                dx = x - x0
                r2 = c2x * dx * dx + c2y * dy * dy + c2xy * dx * dy
                if r2 <= klim2:
                    if _unusable(mask, seg, own[i], y, x):
                        areab += 1
                    else:
                        area += 1
                        p = sub[y, x]
                        r1 += math.sqrt(r2) * p
                        v1 += p
        area += areab
        if area == 0:
            continue
        if r1 > 0.0 and v1 > 0.0:
            kf = kron_fact * r1 / v1
            if kf < kron_min:
                kf = kron_min
        else:
            kf = kron_min
        if areab > CROWD_THRESHOLD * area:
            flags[i] |= F_CROWDED
        klim2 = kf * kf
        xmin, xmax, ymin, ymax = _ellipse_box(x0, y0, c2x, c2y, c2xy, kf)
        xmin, xmax, ymin, ymax, clipped = _clip_box(xmin, xmax, ymin, ymax, nx, ny)
        if clipped:
            flags[i] |= F_APERT_PB
        area = 0
        areab = 0
        tv = 0.0
        sigtv = 0.0
        m2x = 2.0 * x0 + 0.49999
        m2y = 2.0 * y0 + 0.49999
        for y in range(ymin, ymax):
            dy = y - y0
            for x in range(xmin, xmax):
                dx = x - x0
                if c2x * dx * dx + c2y * dy * dy + c2xy * dx * dy <= klim2:
                    area += 1
                    if _usable(mask, seg, own[i], y, x):
                        p = np.float64(sub[y, x])
                        v = np.float64(var[y, x]) if has_var else backvar
                    else:
                        areab += 1
                        p, v = _mirror(sub, var, has_var, mask, seg, own[i], y, x, m2x, m2y,
                                       corr, backvar)
                    sigtv += v
                    tv += p
                    if has_var and gain > 0 and p > 0:
                        sigtv += p / gain * v / backvar
        if areab > CROWD_THRESHOLD * area:
            flags[i] |= F_CROWDED
        if (not has_var) and gain > 0 and tv > 0:
            sigtv += tv / gain
        flux[i] = tv
        fluxerr[i] = math.sqrt(sigtv)
        kron[i] = kf if tv > 0 else 0.0
    return kron, flux, fluxerr, flags


@njit(cache=True)
def aper_flux(sub, var, has_var, mask, seg, own, mx, my, raper, corr, gain, backvar):
    """FLUX_APER and its error in a circle of radius ``raper`` (computeaperflux)."""
    n = mx.size
    ny, nx = sub.shape
    flux = np.zeros(n)
    fluxerr = np.zeros(n)
    flags = np.zeros(n, dtype=np.int16)
    raper2 = raper * raper
    rint = raper - 0.75
    rintlim2 = rint * rint if rint > 0 else 0.0
    rextlim2 = (raper + 0.75) ** 2
    scale = 1.0 / APER_OVERSAMP
    off = 0.5 * (scale - 1.0)
    for i in range(n):
        x0, y0 = mx[i], my[i]
        xmin = int(x0 - raper + 0.499999)
        xmax = int(x0 + raper + 1.499999)
        ymin = int(y0 - raper + 0.499999)
        ymax = int(y0 + raper + 1.499999)
        xmin, xmax, ymin, ymax, clipped = _clip_box(xmin, xmax, ymin, ymax, nx, ny)
        if clipped:
            flags[i] |= F_APERT_PB
        m2x = 2.0 * x0 + 0.49999
        m2y = 2.0 * y0 + 0.49999
        tv = 0.0
        sigtv = 0.0
        for y in range(ymin, ymax):
            for x in range(xmin, xmax):
                dx = x - x0
                dy = y - y0
                r2 = dx * dx + dy * dy
                if r2 >= rextlim2:
                    continue
                if r2 > rintlim2:
                    locarea = _edge_area(dx, dy, off, scale, APER_OVERSAMP, raper2)
                else:
                    locarea = 1.0
                if _usable(mask, seg, own[i], y, x):
                    p = np.float64(sub[y, x])
                    v = np.float64(var[y, x]) if has_var else backvar
                else:
                    p, v = _mirror(sub, var, has_var, mask, seg, own[i], y, x, m2x, m2y, corr,
                                   backvar)
                sigtv += v * locarea
                tv += locarea * p
                if has_var and gain > 0 and p > 0:
                    sigtv += p / gain * v / backvar
        if (not has_var) and gain > 0 and tv > 0:
            sigtv += tv / gain
        flux[i] = tv
        fluxerr[i] = math.sqrt(sigtv)
    return flux, fluxerr, flags


@njit(cache=True)
def _growth_accumulate(growth, sub, mask, seg, own, x0, y0, rmax, stepdens, step, corr):
    """Add to ``growth`` (per-bin sums) the pixels of centre distance < ``rmax``."""
    ny, nx = sub.shape
    scale = 1.0 / GROWTH_OVERSAMP
    scale2 = scale * scale
    off = 0.5 * (scale - 1.0)
    prevmargin = 0.75
    nextmargin = step - 0.75
    rmax2 = rmax * rmax
    xmin = max(int(x0 - rmax + 0.499999), 0)
    xmax = min(int(x0 + rmax + 1.499999), nx)
    ymin = max(int(y0 - rmax + 0.499999), 0)
    ymax = min(int(y0 + rmax + 1.499999), ny)
    m2x = 2.0 * x0 + 0.49999
    m2y = 2.0 * y0 + 0.49999
    for y in range(ymin, ymax):
        dy = y - y0
        for x in range(xmin, xmax):
            dx = x - x0
            r2 = dx * dx + dy * dy
            if r2 >= rmax2:
                continue
            if _usable(mask, seg, own, y, x):
                p = np.float64(sub[y, x])
            else:
                p, _v = _mirror(sub, sub, False, mask, seg, own, y, x, m2x, m2y, corr, 0.0)
            r = math.sqrt(r2)
            d = r - step * math.floor(r / step)  # fmod for r >= 0
            if d < prevmargin or d > nextmargin:
                sdy = dy + off
                for _sy in range(GROWTH_OVERSAMP):
                    sdx = dx + off
                    sdy2 = sdy * sdy
                    for _sx in range(GROWTH_OVERSAMP):
                        j = int(math.sqrt(sdx * sdx + sdy2) * stepdens)
                        if j < GROWTH_NSTEP:
                            growth[j] += scale2 * p
                        sdx += scale
                    sdy += scale
            else:
                j = int(r * stepdens)
                if j < GROWTH_NSTEP:
                    growth[j] += p


@njit(cache=True)
def growth_radii(sub, mask, seg, own, mx, my, a, flux_auto, fracs, min_aper, corr):
    """FLUX_RADIUS for each fraction and the half-light radius (makeavergrowth).

    The growth curve is sampled in 64 bins out to rlim = 6 A_IMAGE with 5x5 sub-pixels,
    normalised to FLUX_AUTO. As an exact shortcut, it is first built out to
    min(rlim, 2.5 A + 1) only; when every requested fraction is reached inside the bins
    that radius covers completely, the rest of the curve cannot change the result.

    Returns
    -------
    radii : numpy.ndarray (n, len(fracs))
    hl : numpy.ndarray
        Half-light radius as SExtractor uses it internally (>= GROWTH_MINHLRAD).
    flags : numpy.ndarray of int16 (APERT_PB)
    """
    n = mx.size
    ny, nx = sub.shape
    nf = fracs.size
    radii = np.zeros((n, nf))
    hl = np.zeros(n)
    flags = np.zeros(n, dtype=np.int16)
    growth = np.zeros(GROWTH_NSTEP)
    for i in range(n):
        x0, y0 = mx[i], my[i]
        rlim = GROWTH_NSIG * a[i]
        if rlim < min_aper:
            rlim = min_aper
        raper = rlim + 1.5
        stepdens = GROWTH_NSTEP / rlim
        step = 1.0 / stepdens
        if int(x0 - raper + 0.499999) < 0 or int(x0 + raper + 1.499999) > nx \
                or int(y0 - raper + 0.499999) < 0 or int(y0 + raper + 1.499999) > ny:
            flags[i] |= F_APERT_PB
        # Largest fraction asked (the half-light radius is always needed).
        fmax = 0.5
        for f in range(nf):
            if fracs[f] > fmax:
                fmax = fracs[f]
        r0 = 2.5 * a[i] + 1.0
        done = False
        if r0 < rlim:
            growth[:] = 0.0
            _growth_accumulate(growth, sub, mask, seg, own[i], x0, y0, r0 + 0.75, stepdens,
                               step, corr)
            jfull = int(r0 * stepdens)  # bins [0, jfull) are complete
            acc = 0.0
            for k in range(GROWTH_NSTEP):
                growth[k] += acc
                acc = growth[k]
            tv = fmax * flux_auto[i]
            done = jfull > 0 and (tv <= 0.0 or growth[jfull - 1] >= tv)
        if not done:
            growth[:] = 0.0
            _growth_accumulate(growth, sub, mask, seg, own[i], x0, y0, raper, stepdens, step,
                               corr)
            acc = 0.0
            for k in range(GROWTH_NSTEP):
                growth[k] += acc
                acc = growth[k]
        for f in range(nf + 1):
            frac = fracs[f] if f < nf else 0.5
            tv = frac * flux_auto[i]
            k = 0
            while k < GROWTH_NSTEP - 1 and growth[k] < tv:
                k += 1
            if k > 0:
                dg = growth[k] - growth[k - 1]
                r = step * (k + (tv - growth[k - 1]) / dg if dg != 0.0 else k)
            else:
                r = step * (tv / growth[0] if growth[0] != 0.0 else 0.0)
            if f < nf:
                radii[i, f] = r if r <= rlim else rlim
            else:
                r = abs(r)
                if r > rlim:
                    r = rlim
                hl[i] = r if r >= GROWTH_MINHLRAD else GROWTH_MINHLRAD
    return radii, hl, flags


@njit(cache=True)
def _win_sums(sub, var, has_var, mask, seg, own, mx, my, sig, corr, invgain, backvar, full,
              glo, ghi):
    """One pass of the windowed sums at (mx, my) (the body of SExtractor's iteration).

    Returns (tv, dxpos, dypos, esum, mx2, my2, mxy, apert_pb); the error and moment sums
    only when ``full`` (the iterations need the first three only). ``glo``, ``ghi`` are
    scratch space of WINPOS_OVERSAMP integers.
    """
    ny, nx = sub.shape
    scale = 1.0 / WINPOS_OVERSAMP
    scale2 = scale * scale
    off = 0.5 * (scale - 1.0)
    invtwosig2 = 1.0 / (2.0 * sig * sig)
    raper = WINPOS_NSIG * sig
    raper2 = raper * raper
    rint = raper - 0.75
    rintlim2 = rint * rint if rint > 0 else 0.0
    rextlim2 = (raper + 0.75) ** 2
    xmin = int(mx - raper + 0.499999)
    xmax = int(mx + raper + 1.499999)
    ymin = int(my - raper + 0.499999)
    ymax = int(my + raper + 1.499999)
    xmin, xmax, ymin, ymax, pb = _clip_box(xmin, xmax, ymin, ymax, nx, ny)
    m2x = mx * 2.0 + 0.49999
    m2y = my * 2.0 + 0.49999
    tv = esum = mx2 = my2 = mxy = 0.0
    dxpos = dypos = 0.0
    # The Gaussian is separable: one exp per column and per row.
    ex = np.empty(max(xmax - xmin, 0))
    for x in range(xmin, xmax):
        ex[x - xmin] = math.exp(-(x - mx) * (x - mx) * invtwosig2)
    for y in range(ymin, ymax):
        dy = y - my
        ey = math.exp(-dy * dy * invtwosig2)
        # Sub-pixel columns inside the aperture circle on each sub-row of this pixel row:
        # sub-column g = N x + j sits at x + off + j/N, inside when its distance to mx is
        # below the half-chord h; [glo, ghi] (empty when glo > ghi) per sub-row.
        sdy = dy + off
        for k in range(WINPOS_OVERSAMP):
            rhs = raper2 - sdy * sdy
            if rhs > 0:
                h = math.sqrt(rhs)
                glo[k] = math.floor(WINPOS_OVERSAMP * (mx - off - h)) + 1
                ghi[k] = math.ceil(WINPOS_OVERSAMP * (mx - off + h)) - 1
            else:
                glo[k] = 1
                ghi[k] = 0
            sdy += scale
        for x in range(xmin, xmax):
            dx = x - mx
            r2 = dx * dx + dy * dy
            if r2 >= rextlim2:
                continue
            if r2 > rintlim2:
                # Sub-pixels of this pixel inside the circle: interval overlaps.
                count = 0
                g0 = WINPOS_OVERSAMP * x
                g1 = g0 + WINPOS_OVERSAMP - 1
                for k in range(WINPOS_OVERSAMP):
                    lo = glo[k] if glo[k] > g0 else g0
                    hi = ghi[k] if ghi[k] < g1 else g1
                    if hi >= lo:
                        count += hi - lo + 1
                locarea = count * scale2
            else:
                locarea = 1.0
            locarea *= ex[x - xmin] * ey
            # The variance map is read only in the final pass (the iterations do not
            # need it).
            if _usable(mask, seg, own, y, x):
                p = np.float64(sub[y, x])
                v = np.float64(var[y, x]) if has_var and full else backvar
            else:
                p, v = _mirror(sub, var, has_var and full, mask, seg, own, y, x, m2x, m2y,
                               corr, backvar)
            locpix = locarea * p
            tv += locpix
            dxpos += locpix * dx
            dypos += locpix * dy
            if full:
                err = v
                if invgain > 0 and p > 0:
                    if has_var:
                        err += p * invgain * v / backvar
                    else:
                        err += p * invgain
                esum += locarea * locarea * err
                mx2 += locpix * dx * dx
                my2 += locpix * dy * dy
                mxy += locpix * dx * dy
    return tv, dxpos, dypos, esum, mx2, my2, mxy, pb


@njit(cache=True)
def win_pos(sub, var, has_var, mask, seg, own, posx, posy, sig, cxx, cyy, cxy,
            corr, gain, backvar):
    """Windowed centroid, flux and moments (SExtractor's compute_winpos).

    ``posx``, ``posy`` are the 0-based isophotal barycentres (the first guess, and the
    fallback when the windowed estimate is rejected). The iterations accumulate only the
    flux and first moments; the error and second-moment sums, which SExtractor reports
    from its last pass, are computed in one more pass at that position.

    Returns
    -------
    out : numpy.ndarray (n, 7)
        x, y (0-based), flux, error sum (variance), mx2, my2, mxy.
    niter : numpy.ndarray of int32
    win_flag : numpy.ndarray of int16
        SExtractor's FLAGS_WIN (non-zero: reverted to the isophotal position).
    flags : numpy.ndarray of int16 (APERT_PB)
    """
    n = posx.size
    out = np.zeros((n, 7))
    niter = np.zeros(n, dtype=np.int32)
    wflag = np.zeros(n, dtype=np.int16)
    flags = np.zeros(n, dtype=np.int16)
    invgain = 1.0 / gain if gain > 0 else 0.0
    glo = np.empty(WINPOS_OVERSAMP, dtype=np.int64)
    ghi = np.empty(WINPOS_OVERSAMP, dtype=np.int64)
    for i in range(n):
        s = sig[i]
        mx = posx[i]
        my = posy[i]
        lastx, lasty = mx, my
        it = 0
        while it < WINPOS_NITERMAX:
            lastx, lasty = mx, my
            tv, dxpos, dypos, _e, _a, _b, _c, pb = _win_sums(
                sub, var, has_var, mask, seg, own[i], mx, my, s, corr, invgain, backvar,
                False, glo, ghi)
            if pb:
                flags[i] |= F_APERT_PB
            it += 1
            if tv > 0.0:
                dxpos /= tv
                dypos /= tv
                mx += dxpos * WINPOS_FAC
                my += dypos * WINPOS_FAC
            else:
                break
            if dxpos * dxpos + dypos * dypos < WINPOS_STEPMIN * WINPOS_STEPMIN:
                break
        niter[i] = it
        tv, dxpos, dypos, esum, mx2, my2, mxy, pb = _win_sums(
            sub, var, has_var, mask, seg, own[i], lastx, lasty, s, corr, invgain, backvar,
            True, glo, ghi)
        if tv != 0.0:
            dxpos /= tv
            dypos /= tv
            mx2 = mx2 / tv - dxpos * dxpos
            my2 = my2 / tv - dypos * dypos
            mxy = mxy / tv - dxpos * dypos
        temp2 = mx2 * my2 - mxy * mxy
        ddx = mx - posx[i]
        ddy = my - posy[i]
        f = 0
        if ddx * ddx > 1.0 and ddy * ddy > 1.0 and \
                cxx[i] * ddx * ddx + cyy[i] * ddy * ddy + cxy[i] * ddx * ddy > 1.0:
            f |= 8
        if tv <= 0.0:
            f |= 4
        if mx2 < 0.0 or my2 < 0.0:
            f |= 2
        if temp2 < 0.0:
            f |= 1
        wflag[i] = f
        if f:
            mx = posx[i]
            my = posy[i]
        out[i, 0] = mx
        out[i, 1] = my
        out[i, 2] = tv
        out[i, 3] = esum
        out[i, 4] = mx2
        out[i, 5] = my2
        out[i, 6] = mxy
    return out, niter, wflag, flags


@njit(cache=True)
def blank_orphans(blank, orphan, seg, seg_ymax, ys, xs, minarea):
    """Mark in ``blank`` the detected pixels no object owns that SExtractor keeps blanked.

    ``orphan`` (uint8, modified: visited pixels set to 2) flags the pixels above the
    detection threshold with ``seg == 0``; ``ys``, ``xs`` list them. Each 8-connected
    group of them is either a detection smaller than ``minarea`` that touches no object
    (blanked whole) or the pixels of CLEANed objects (only its top row stays blanked,
    see ``MeasuredSources.blank``): the top row of the whole detection, which includes the
    objects it touches (``seg_ymax``: top row of each segmentation id).
    """
    ny, nx = orphan.shape
    n = ys.size
    stack_y = np.empty(n, dtype=np.int64)
    stack_x = np.empty(n, dtype=np.int64)
    comp_y = np.empty(n, dtype=np.int64)
    comp_x = np.empty(n, dtype=np.int64)
    for s in range(n):
        if orphan[ys[s], xs[s]] != 1:
            continue
        orphan[ys[s], xs[s]] = 2
        top = 0
        size = 0
        touches = False
        stack_y[0] = ys[s]
        stack_x[0] = xs[s]
        depth = 1
        while depth > 0:
            depth -= 1
            y = stack_y[depth]
            x = stack_x[depth]
            comp_y[size] = y
            comp_x[size] = x
            size += 1
            if y > top:
                top = y
            for dy in range(-1, 2):
                yy = y + dy
                if yy < 0 or yy >= ny:
                    continue
                for dx in range(-1, 2):
                    xx = x + dx
                    if xx < 0 or xx >= nx:
                        continue
                    if seg[yy, xx] > 0:
                        touches = True
                        if seg_ymax[seg[yy, xx]] > top:
                            top = seg_ymax[seg[yy, xx]]
                    elif orphan[yy, xx] == 1:
                        orphan[yy, xx] = 2
                        stack_y[depth] = yy
                        stack_x[depth] = xx
                        depth += 1
        small = size < minarea and not touches
        for k in range(size):
            if small or comp_y[k] == top:
                blank[comp_y[k], comp_x[k]] |= 1


@njit(cache=True)
def detection_mask(sub, kernel, thresh, var, has_map, seg, bad, has_bad, blanking):
    """The measurement mask and the detected pixels no object owns, in one pass.

    Returns ``mask`` (uint8: bit 1 where ``seg > 0`` when ``blanking``, bit 2 where
    ``bad``), ``orphan`` (uint8: 1 where ``seg == 0`` but the filtered image, SExtractor's
    correlation with the .conv kernel, zero outside the image, is above the detection
    threshold) and the flat indices of the orphan pixels. The threshold is ``thresh``, or,
    when ``has_map``, float32(float32(thresh) * sqrt(var)) per pixel (the float32 values
    numpy gives for ``thresh * np.sqrt(var)`` on a float32 map).
    """
    ny, nx = sub.shape
    kh, kw = kernel.shape
    cy, cx = kh // 2, kw // 2
    mask = np.zeros((ny, nx), dtype=np.uint8)
    orphan = np.zeros((ny, nx), dtype=np.uint8)
    idx = np.empty(4096, dtype=np.int64)
    n = 0
    # One row of the filtered image at a time: each kernel term is added to the whole row
    # (a loop the compiler vectorises), in the same order per pixel as a per-pixel sum.
    acc = np.zeros(nx)
    hit = np.zeros(nx, dtype=np.bool_)
    thresh32 = np.float64(np.float32(thresh))
    for y in range(ny):
        for x in range(nx):
            m = np.uint8(2) if has_bad and bad[y, x] != 0 else np.uint8(0)
            if blanking and seg[y, x] != 0:
                m |= 1
            mask[y, x] = m
        if not blanking:
            continue
        acc[:] = 0.0
        for i in range(kh):
            yy = y + i - cy
            if yy < 0 or yy >= ny:
                continue
            for j in range(kw):
                k = kernel[i, j]
                off = j - cx
                x0 = max(0, -off)
                x1 = min(nx, nx - off)
                # Slices indexed from 0: no negative-index check, so the loop vectorises.
                a = acc[x0:x1]
                r = sub[yy, x0 + off:x1 + off]
                for t in range(x1 - x0):
                    a[t] += k * r[t]
        # The comparison without branches (they would follow the noise), then the rare hits.
        for x in range(nx):
            if has_map:
                t = np.float64(np.float32(
                    thresh32 * np.float64(np.float32(math.sqrt(np.float64(var[y, x]))))))
            else:
                t = thresh
            hit[x] = (seg[y, x] == 0) & (acc[x] > t)
        for x in range(nx):
            if hit[x]:
                orphan[y, x] = 1
                if n == idx.size:
                    grown = np.empty(2 * idx.size, dtype=np.int64)
                    grown[:n] = idx[:n]
                    idx = grown
                idx[n] = y * nx + x
                n += 1
    return mask, orphan, idx[:n]


@njit(cache=True)
def footprint_pixels(seg, rank, n):
    """The footprint pixels grouped by object: a counting sort of the segmentation map.

    ``rank`` maps a segmentation id to the object's index (-1: dropped). Returns
    ``starts`` (first position of each object), ``oid`` (object index per pixel) and
    ``idx`` (flat pixel index), ordered by object then by pixel: what a stable argsort of
    the object indices of ``np.flatnonzero(seg)`` gives, in two passes over the map.
    """
    flat = seg.ravel()
    count = np.zeros(n + 1, dtype=np.int64)
    for p in range(flat.size):
        s = flat[p]
        if s != 0:
            r = rank[s]
            if r >= 0:
                count[r + 1] += 1
    for i in range(n):
        count[i + 1] += count[i]
    starts = count[:n].copy()
    total = count[n]
    idx = np.empty(total, dtype=np.int64)
    oid = np.empty(total, dtype=np.int64)
    for p in range(flat.size):
        s = flat[p]
        if s != 0:
            r = rank[s]
            if r >= 0:
                k = count[r]
                idx[k] = p
                oid[k] = r
                count[r] = k + 1
    return starts, oid, idx
