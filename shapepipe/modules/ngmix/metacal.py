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
        a_pix = self.jinv @ shear_matrix(g1, g2) @ self.jac
        M = a_pix.T
        if M[1, 1] == 0:
            raise ValueError("degenerate shear/Jacobian combination")
        ell = -M[1, 0] / M[1, 1]
        L = np.array([[1.0, 0.0], [ell, 1.0]])
        T = M @ L
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
