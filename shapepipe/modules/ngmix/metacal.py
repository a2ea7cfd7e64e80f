"""Metacalibration images: deconvolve by the PSF, shear, reconvolve by a round Gaussian.

The sheared image of type ``t`` is, in Fourier space (pixel coordinates ``k``),

    I_t(k) = G(k) * D_I(M k) / D_P(M k),   M = A_pix^T,

where ``D_I`` and ``D_P`` are the discrete-time Fourier transforms of the image and PSF
samples, ``A_pix`` the shear matrix expressed in pixel coordinates (``J^-1 A_sky J``) and
``G`` the reconvolution Gaussian. The image is treated as band-limited (sinc
interpolation), so no interpolation kernel enters: ``D_I`` and ``D_P`` are evaluated
*exactly* at the sheared frequencies.

The trick that makes this cheap: sample ``k`` on a lattice ``k = (2 pi / N) L m`` with
``L = [[1, 0], [l, 1]]`` and ``l`` chosen so that ``T = M L`` is upper triangular. Then
``exp(-i (T m) . x)`` factorises into a row transform, a diagonal phase and a column
transform: two small matrix products per image (no FFT grid, no k-space interpolation).
The inverse transform from the same lattice back to the pixel grid factorises the same
way, and the output is evaluated only on the stamp pixels. ``N`` (odd, so that the lattice
is symmetric and real images stay real) is the stamp size plus a margin that keeps the
periodic copies of the output away from the stamp.

The noise correction (Sheldon & Huff 2017, "fixnoise") rides along for free: the caller
passes ``image + 1j * rot90(noise)``; the operator is real, so the real part of the result
is the sheared image and the imaginary part the sheared rotated noise.
"""

import numpy as np

METACAL_TYPES = ("noshear", "1p", "1m", "2p", "2m")


def shear_matrix(g1, g2):
    """GalSim's area-preserving shear matrix for reduced shear ``(g1, g2)``."""
    gsq = g1 * g1 + g2 * g2
    if gsq >= 1.0:
        raise ValueError(f"shear |g| = {np.sqrt(gsq)} must be < 1")
    return np.array([[1.0 + g1, g2], [g2, 1.0 - g1]]) / np.sqrt(1.0 - gsq)


def metacal_shears(step=0.01):
    """``{type: (g1, g2)}`` of the five metacal types."""
    return {"noshear": (0.0, 0.0), "1p": (step, 0.0), "1m": (-step, 0.0),
            "2p": (0.0, step), "2m": (0.0, -step)}


def _odd(n):
    n = int(np.ceil(n))
    return n if n % 2 else n + 1


class MetacalImager:
    """Sheared, reconvolved versions of one observation (one epoch).

    Parameters
    ----------
    image_shape : tuple
        Stamp shape ``(ny, nx)``.
    jacobian : Jacobian
        Pixel -> sky map; its reference point is the centre of the shear.
    psf : numpy.ndarray
        PSF image (unit sum) on the same pixel grid, centred in its stamp.
    sigma_reconv : float
        Sigma (arcsec) of the round Gaussian reconvolution PSF.
    margin : int
        Pixels added on each side of the stamp for the period of the transforms.
    """

    def __init__(self, image_shape, jacobian, psf, sigma_reconv, margin=8):
        self.ny, self.nx = image_shape
        self.psf = np.asarray(psf, dtype=float)
        pny, pnx = self.psf.shape
        self.N = _odd(max(self.ny, self.nx, pny, pnx) + 2 * margin)
        h = (self.N - 1) // 2
        self.m = np.arange(-h, h + 1, dtype=float)
        self.w = 2.0 * np.pi / self.N
        self.x = np.arange(self.nx) - jacobian.x0
        self.y = np.arange(self.ny) - jacobian.y0
        self.px = np.arange(pnx) - (pnx - 1) / 2.0
        self.py = np.arange(pny) - (pny - 1) / 2.0
        self.jac = jacobian.matrix
        self.jinv = jacobian.inverse
        # Reconvolution PSF covariance in pixel units.
        self.sigma_reconv = float(sigma_reconv)
        self.cov_pix = sigma_reconv ** 2 * (self.jinv @ self.jinv.T)
        # Inverse-transform factors that do not depend on the shear.
        self._ey_inv = np.exp(1j * self.w * np.outer(self.y, self.m))       # (ny, N)
        self._ex_inv = np.exp(1j * self.w * np.outer(self.m, self.x))       # (N, nx)
        self.max_gain = 0.0

    def _lattice(self, g1, g2):
        """``M = A_pix^T``, the lattice shear ``l`` and the upper-triangular ``T = M L``."""
        M = (self.jinv @ shear_matrix(g1, g2) @ self.jac).T
        if M[1, 1] == 0:
            raise ValueError("degenerate shear/Jacobian combination")
        ell = -M[1, 0] / M[1, 1]
        return M, ell, M @ np.array([[1.0, 0.0], [ell, 1.0]])

    def _dtft(self, z, xs, ys, T):
        """D(T m w) for every lattice point: (N_y, N_x) complex, exact."""
        w = self.w
        m = self.m
        ey = np.exp(-1j * (w * T[1, 1]) * np.outer(m, ys))                  # (N, ny)
        g = ey @ z                                                          # (N, nx)
        g *= np.exp(-1j * (w * T[0, 1]) * np.outer(m, xs))
        ex = np.exp(-1j * (w * T[0, 0]) * np.outer(xs, m))                  # (nx, N)
        return g @ ex

    def make(self, z, g1, g2):
        """Sheared and reconvolved version of ``z`` (real or complex image).

        Parameters
        ----------
        z : numpy.ndarray
            Image (complex to carry the rotated noise in the imaginary part).
        g1, g2 : float
            Shear applied in sky coordinates.

        Returns
        -------
        numpy.ndarray
            Complex image of the stamp shape (real part only is meaningful for real input).
        """
        M, ell, T = self._lattice(g1, g2)
        d_img = self._dtft(z, self.x, self.y, T)
        d_psf = self._dtft(self.psf, self.px, self.py, T)
        w = self.w
        kx = w * self.m[None, :]
        ky = w * (ell * self.m[None, :] + self.m[:, None])
        c = self.cov_pix
        gk = np.exp(-0.5 * (c[0, 0] * kx * kx + 2 * c[0, 1] * kx * ky + c[1, 1] * ky * ky))
        keep = gk > 1e-14
        absp = np.abs(d_psf)
        if np.any(absp[keep] <= 1e-300):
            raise FloatingPointError("the PSF transform vanishes where the reconvolution "
                                     "PSF does not")
        ratio = np.where(keep, gk / np.where(keep, d_psf, 1.0), 0.0)
        self.max_gain = max(self.max_gain, float(np.abs(ratio).max()))
        f = ratio * d_img
        g = self._ey_inv @ f                                                # (ny, N)
        g *= np.exp(1j * (w * ell) * np.outer(self.y, self.m))
        return (g @ self._ex_inv) / (self.N * self.N)

    def _psf_abs_at(self, qx, qy):
        """``|D_P(q)|`` at arbitrary frequencies (radians per pixel), interpolated.

        The PSF stamp is small, so its transform is smooth: it is sampled by an FFT of the
        stamp zero-padded to ``4 N`` and interpolated (cubic, periodic).
        """
        from scipy.ndimage import map_coordinates

        if getattr(self, "_psf_abs_grid", None) is None:
            size = 4 * self.N
            pny, pnx = self.psf.shape
            pad = np.zeros((size, size))
            iy = (np.arange(pny) - (pny - 1) // 2) % size
            ix = (np.arange(pnx) - (pnx - 1) // 2) % size
            pad[np.ix_(iy, ix)] = self.psf
            self._psf_abs_grid = np.abs(np.fft.fft2(pad))
        size = self._psf_abs_grid.shape[0]
        coords = np.stack([np.mod(qy * size / (2 * np.pi), size),
                           np.mod(qx * size / (2 * np.pi), size)])
        return map_coordinates(self._psf_abs_grid, coords.reshape(2, -1), order=3,
                               mode="grid-wrap").reshape(np.shape(qx))

    def make_corrected(self, image, white, g1, g2, noise_power=None):
        """Sheared image plus a noise correction that moves with the sheared scene.

        Sheldon & Huff's correction is noise whose power spectrum is the sheared image
        noise's turned by 90 degrees: ``|G(k)|^2 N(RMRk) / |D_P(MRk)|^2`` (``R`` the
        90-degree rotation, ``N`` the input noise spectrum; :meth:`make_all` builds it by
        rotating a noise image, shearing it and rotating back). Here it is built directly on
        the sheared lattice from the transform of a fixed white field, ``D_W(Mk)``, as the
        image's own noise is: an object then sees the same correction realisation in every
        step, wherever it is in the image. (Rotating about the image centre moves the
        correction under an object at distance ``r`` by ~``4 |g| r`` between the 1p and 1m
        images: harmless on a stamp centred on the object, a new realisation 100 pixels out
        on a metadetection cell.)

        Parameters
        ----------
        image, white : numpy.ndarray
            Real image and unit-variance white noise field, both of the stamp shape.
        g1, g2 : float
        noise_power : callable, optional
            ``N(kx, ky)`` of the image noise per unit white variance (radians per pixel);
            default flat (white noise).

        Returns
        -------
        numpy.ndarray
            Real image.
        """
        M, ell, T = self._lattice(g1, g2)
        # One transform for both real fields: Z = D_I + i D_W, and the lattice is symmetric.
        z = self._dtft(np.asarray(image, float) + 1j * np.asarray(white, float), self.x,
                       self.y, T)
        z_neg = np.conj(z[::-1, ::-1])
        d_img = 0.5 * (z + z_neg)
        d_white = -0.5j * (z - z_neg)
        d_psf = self._dtft(self.psf, self.px, self.py, T)
        w = self.w
        kx = w * self.m[None, :] + 0.0 * self.m[:, None]
        ky = w * (ell * self.m[None, :] + self.m[:, None])
        c = self.cov_pix
        gk = np.exp(-0.5 * (c[0, 0] * kx * kx + 2 * c[0, 1] * kx * ky + c[1, 1] * ky * ky))
        keep = gk > 1e-14
        ratio = np.where(keep, gk / np.where(keep, d_psf, 1.0), 0.0)
        self.max_gain = max(self.max_gain, float(np.abs(ratio).max()))
        rot = np.array([[0.0, -1.0], [1.0, 0.0]])
        mr = M @ rot
        q_psf = (mr[0, 0] * kx + mr[0, 1] * ky, mr[1, 0] * kx + mr[1, 1] * ky)      # MRk
        rmr = rot @ M @ rot
        q_noise = (rmr[0, 0] * kx + rmr[0, 1] * ky, rmr[1, 0] * kx + rmr[1, 1] * ky)  # RMRk
        p_rot = self._psf_abs_at(*q_psf)
        power = np.ones_like(gk) if noise_power is None else noise_power(*q_noise)
        amp = np.where(keep & (p_rot > 0), gk * np.sqrt(power) / np.where(p_rot > 0, p_rot, 1.0),
                       0.0)
        f = ratio * d_img + amp * d_white
        g = self._ey_inv @ f
        g *= np.exp(1j * (w * ell) * np.outer(self.y, self.m))
        return ((g @ self._ex_inv) / (self.N * self.N)).real

    def make_all(self, image, noise=None, step=0.01, types=METACAL_TYPES):
        """The five metacal images of one epoch.

        Parameters
        ----------
        image : numpy.ndarray
        noise : numpy.ndarray, optional
            Noise realisation for the correction; it is rotated by 90 degrees, sheared with
            the image and rotated back before being added. Needs a square stamp.
        step : float
            Shear step.

        Returns
        -------
        dict
            ``{type: image}``.
        """
        if noise is not None:
            if self.nx != self.ny:
                raise ValueError(f"the noise correction needs square stamps, got "
                                 f"{self.ny}x{self.nx}")
            z = image + 1j * np.rot90(noise, 1)
        else:
            z = np.asarray(image)
            if not np.iscomplexobj(z):
                z = z.astype(float)
        shears = metacal_shears(step)
        out = {}
        for t in types:
            o = self.make(z, *shears[t])
            if noise is not None:
                out[t] = o.real + np.rot90(o.imag, -1)
            else:
                out[t] = o.real
        return out
