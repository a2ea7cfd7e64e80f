"""Small multi-epoch tile inputs of known shear, for tests and benchmarks of the tile shapes.

Writes, in one directory, the files ``ngmix_runner`` reads, in the tile chain's layout:
``tile_sexcat-<tile>.fits`` (FITS_LDAC with ``EPOCH_<i>`` HDUs), the stores
``image_vignet``, ``background_vignet``, ``weight_vignet``, ``flag_vignet``,
``galaxy_psf`` (``-<tile>.sqlite``) and ``log_exp_headers.sqlite``. Galaxies are round
exponentials with a per-object shear, rendered with GalSim through the exact local Jacobian of
each exposure-CCD's TAN WCS (0.187"/px; one CCD rotated, one with a skewed CD matrix), under a
Moffat PSF per epoch, on a sloped background, with Gaussian noise and a few flagged pixels.
"""

import os

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from shapepipe.utils.pixels import stamp_corner
from shapepipe.utils.rng import make_rng
from shapepipe.utils.stamp_store import open_store

from .observation import Jacobian

RA0, DEC0 = 216.8654, 51.5
SCALE = 0.187
SIGMA = 10.0   # noise rms (ADU)

#: Exposure-CCDs: (exposure, ccd, rotation in degrees, CD skew (a, b, c, d) multipliers).
EPOCHS = (
    ("2000001", 0, 0.0, (1.0, 0.0, 0.0, 1.0)),
    ("2000002", 1, 30.0, (1.0, 0.0, 0.0, 1.0)),
    ("2000003", 0, -10.0, (1.03, 0.04, 0.02, 0.97)),
)


def ccd_header(rotation_deg, skew, crpix=(600.0, 500.0), ra0=RA0, dec0=DEC0, size=(1200, 1000)):
    """TAN header of a fake CCD: 0.187"/px, north up east left, then rotated and skewed."""
    s = SCALE / 3600.0
    theta = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    a, b, c, d = skew
    cd = rot @ np.array([[-s * a, s * b], [s * c, s * d]])
    header = fits.Header()
    header["NAXIS"] = 2
    header["NAXIS1"], header["NAXIS2"] = size
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRVAL1"], header["CRVAL2"] = ra0, dec0
    header["CRPIX1"], header["CRPIX2"] = crpix
    header["CD1_1"], header["CD1_2"] = cd[0]
    header["CD2_1"], header["CD2_2"] = cd[1]
    header["RADESYS"], header["EQUINOX"] = "ICRS", 2000.0
    return header


def write_headers(directory, epochs=EPOCHS):
    """``log_exp_headers.sqlite`` for the epochs (via merge_headers' own file format)."""
    from shapepipe.modules.merge_headers import OUTPUT_NAME, merge_headers

    by_exp = {}
    for exp, ccd, rot, skew in epochs:
        by_exp.setdefault(exp, {})[ccd] = ccd_header(rot, skew).tostring()
    files = []
    for exp, ccds in by_exp.items():
        # CCDs this test does not use get the header of a used one: every entry must be text.
        texts = [ccds.get(i, next(iter(ccds.values()))) for i in range(max(ccds) + 1)]
        path = os.path.join(directory, f"headers-{exp}.npy")
        np.save(path, np.array(texts, dtype="S"))
        files.append(path)
    out = os.path.join(directory, OUTPUT_NAME)
    merge_headers(files, out)
    for path in files:
        os.unlink(path)
    return out


def make_tile_inputs(directory, n_obj=10, seed=1, snr=150.0, g_max=0.08, stamp_size=51,
                     psf_size=31, tile="-270-283", epochs=EPOCHS, keep_stamps=False):
    """Write the inputs of ``ngmix_runner`` for ``n_obj`` galaxies.

    Parameters
    ----------
    directory : str
        Created if absent.
    n_obj : int
        Number of objects (NUMBER 1..n_obj), each on every epoch.
    seed : int
    snr : float
        Optimal S/N of each galaxy over all epochs.
    g_max : float
        Shears are drawn uniformly in the disc ``|g| < g_max``.
    keep_stamps : bool
        Also return the stamps in memory (for benchmarks).

    Returns
    -------
    dict
        ``files`` (role -> path; roles ``catalogue``, ``image``, ``background``, ``psf``,
        ``weight``, ``flag``, ``log_wcs``), ``id``, ``g1``, ``g2`` (true shears), ``ra``,
        ``dec``, and with ``keep_stamps`` ``stamps``: ``{id: [(image - background, weight,
        psf, Jacobian), ...]}``.
    """
    import galsim

    os.makedirs(directory, exist_ok=True)
    rng = make_rng(seed, "tile_sim")
    ids = np.arange(1, n_obj + 1)
    # Positions within ~50" of the field centre: on every fake CCD.
    ra = RA0 + rng.uniform(-50, 50, n_obj) / 3600.0 / np.cos(np.deg2rad(DEC0))
    dec = DEC0 + rng.uniform(-50, 50, n_obj) / 3600.0
    gmod = g_max * np.sqrt(rng.uniform(0, 1, n_obj))
    phi = rng.uniform(0, 2 * np.pi, n_obj)
    g1, g2 = gmod * np.cos(2 * phi), gmod * np.sin(2 * phi)
    hlr = rng.uniform(0.35, 0.6, n_obj)
    wcs = {(e, c): WCS(ccd_header(r, s)) for e, c, r, s in epochs}
    psf_pars = {(e, c): (rng.uniform(0.6, 0.8), rng.uniform(3.0, 4.5), rng.uniform(-0.03, 0.03, 2))
                for e, c, _, _ in epochs}
    files = {role: os.path.join(directory, f"{name}{tile}.sqlite") for role, name in (
        ("image", "image_vignet"), ("background", "background_vignet"), ("psf", "galaxy_psf"),
        ("weight", "weight_vignet"), ("flag", "flag_vignet"))}
    stores = {role: open_store(path, "n") for role, path in files.items()}
    stamps = {}
    S = stamp_size
    centre = (S - 1) / 2.0
    yy, xx = np.mgrid[0:S, 0:S]
    try:
        for k, obj_id in enumerate(ids):
            orng = make_rng(seed, "object", int(obj_id))
            gal = galsim.Exponential(half_light_radius=hlr[k], flux=1.0).shear(g1=g1[k],
                                                                               g2=g2[k])
            entries = {role: {} for role in files}
            flux = None
            obj_stamps = []
            for exp, ccd, _, _ in epochs:
                key = f"{exp}-{ccd}"
                w = wcs[(exp, ccd)]
                x, y = (float(v) for v in w.all_world2pix(ra[k], dec[k], 0))
                _, _, dx, dy = stamp_corner(x, y, S)
                m = Jacobian.from_wcs(w, x, y).matrix
                local = galsim.JacobianWCS(m[0, 0], m[0, 1], m[1, 0], m[1, 1])
                fwhm, beta, pg = psf_pars[(exp, ccd)]
                psf = galsim.Moffat(beta=beta, fwhm=fwhm).shear(g1=pg[0], g2=pg[1])
                im = galsim.Convolve(gal, psf).drawImage(
                    nx=S, ny=S, wcs=local, offset=(dx - centre, dy - centre)).array
                if flux is None:
                    # Flux giving the target S/N over all epochs with a noise rms SIGMA
                    # (fixed from the first epoch's unit-flux image).
                    flux = snr * SIGMA / np.sqrt(np.sum(im ** 2) * len(epochs))
                im = im * flux
                psf_im = psf.drawImage(nx=psf_size, ny=psf_size, wcs=local).array
                background = (150.0 + 0.05 * (xx - centre) - 0.03 * (yy - centre)).astype(
                    np.float32)
                flag = np.zeros((S, S), np.int16)
                # A cosmic ray on some stamps: garbage pixel values that the flag must mask.
                if orng.uniform() < 0.5:
                    j0, i0 = orng.integers(5, S - 5, 2)
                    flag[j0, i0 - 2:i0 + 3] = 2
                image = im + background + SIGMA * orng.standard_normal((S, S))
                image = np.where(flag != 0, 5e4, image).astype(np.float32)
                weight = np.full((S, S), 1.0 / SIGMA ** 2, np.float32)
                entries["image"][key] = {"VIGNET": image}
                entries["background"][key] = {"VIGNET": background}
                entries["weight"][key] = {"VIGNET": weight}
                entries["flag"][key] = {"VIGNET": flag}
                entries["psf"][key] = {"VIGNET": (psf_im / psf_im.sum()).astype(np.float32)}
                if keep_stamps:
                    # The stored (float32) pixels, as the runner reads them.
                    obj_stamps.append((np.where(flag != 0, 0.0,
                                                image.astype(float) - background),
                                       np.where(flag != 0, 0.0, weight),
                                       entries["psf"][key]["VIGNET"],
                                       Jacobian(dx, dy, m)))
            for role, store in stores.items():
                store[str(int(obj_id))] = entries[role]
            if keep_stamps:
                stamps[int(obj_id)] = obj_stamps
        for store in stores.values():
            store.commit()
    finally:
        for store in stores.values():
            store.close()
    files["catalogue"] = write_tile_catalogue(os.path.join(directory, f"tile_sexcat{tile}.fits"),
                                              ids, ra, dec, epochs)
    files["log_wcs"] = write_headers(directory, epochs)
    out = {"files": files, "id": ids, "g1": g1, "g2": g2, "ra": ra, "dec": dec}
    if keep_stamps:
        out["stamps"] = stamps
    return out


def write_tile_catalogue(path, ids, ra, dec, epochs=EPOCHS):
    """A FITS_LDAC tile catalogue with NUMBER, X/YWIN_WORLD and ``EPOCH_<i>`` HDUs."""
    from shapepipe.utils.atomic import write_fits
    from shapepipe.utils.ldac import imhead_hdu

    n = len(ids)
    objects = fits.BinTableHDU.from_columns([
        fits.Column(name="NUMBER", format="J", array=np.asarray(ids, np.int32)),
        fits.Column(name="XWIN_WORLD", format="D", array=ra),
        fits.Column(name="YWIN_WORLD", format="D", array=dec),
        fits.Column(name="N_EPOCH", format="J", array=np.full(n, len(epochs), np.int32)),
    ])
    objects.header["EXTNAME"] = "LDAC_OBJECTS"
    hdus = [fits.PrimaryHDU(), imhead_hdu(ccd_header(0.0, (1, 0, 0, 1))), objects]
    for i, (exp, ccd, _, _) in enumerate(epochs):
        hdu = fits.BinTableHDU.from_columns([
            fits.Column(name="NUMBER", format="J", array=np.asarray(ids, np.int32)),
            fits.Column(name="EXP_NAME", format=f"{len(exp)}A", array=np.full(n, exp)),
            fits.Column(name="CCD_N", format="J", array=np.full(n, ccd, np.int32)),
        ])
        hdu.header["EXTNAME"] = f"EPOCH_{i}"
        hdus.append(hdu)
    write_fits(fits.HDUList(hdus), path)
    return path
