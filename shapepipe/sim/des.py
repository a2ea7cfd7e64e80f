"""DES-like 5-band coadd tiles, their geometry table, a truth table and a target catalogue."""

import os

import numpy as np
from astropy.io import fits

from shapepipe.sim import geometry as geo
from shapepipe.sim.catalog import _power_law_mags, draw_ellipticities, galaxy_sizes
from shapepipe.sim.render import _add_stamp, _draw, galaxy_profile
from shapepipe.sim.tables import table_hdulist
from shapepipe.utils.atomic import atomic_path, write_fits
from shapepipe.utils.rng import make_rng

DES_SCALE = 0.263  # arcsec / px
BANDS = ("g", "r", "i", "z", "Y")
BAND_FWHM = {"g": 1.10, "r": 1.00, "i": 0.95, "z": 0.90, "Y": 0.95}  # arcsec
BAND_NOISE = {"g": 4.0, "r": 4.5, "i": 5.0, "z": 7.0, "Y": 12.0}  # ADU rms per pixel
DES_MAGZERO = 30.0
DES_SATURATE = 1.0e5
UNIQUE = 0.065  # deg: side of the unique area of a 1000-px tile (scaled with the size)
ID_OFFSET = 100000000
MASK_BAD = 1
MASK_SAT = 2

# (name, RA, Dec): one tile straddles RA = 0.
DEFAULT_TILES = [("DES0000+0000", 0.0, 0.0), ("DES2359+0000", 359.935, 0.0),
                 ("DES0000+0004", 0.0, 0.065)]


def _wrap(ra):
    return np.mod(ra, 360.0)


def in_unique_area(ra, dec, row):
    """Whether (ra, dec) fall in a tile's unique area (handles URAMIN > URAMAX across RA = 0)."""
    ra = _wrap(np.asarray(ra, float))
    dec = np.asarray(dec, float)
    if row["URAMIN"] <= row["URAMAX"]:
        in_ra = (ra >= row["URAMIN"]) & (ra < row["URAMAX"])
    else:
        in_ra = (ra >= row["URAMIN"]) | (ra < row["URAMAX"])
    return in_ra & (dec >= row["UDECMIN"]) & (dec < row["UDECMAX"])


def tile_geometry(tiles=DEFAULT_TILES, size=1000):
    """Rows of ``tile_geometry.fits`` as a dict of columns."""
    half_img = size / 2.0 * DES_SCALE / 3600.0
    half_u = UNIQUE * size / 1000.0 / 2.0
    cols = {k: [] for k in ("TILENAME", "RA_CENT", "DEC_CENT", "URAMIN", "URAMAX", "UDECMIN",
                            "UDECMAX", "RACMIN", "RACMAX", "DECCMIN", "DECCMAX", "NAXIS1",
                            "NAXIS2", "PIXSCALE")}
    for name, ra, dec in tiles:
        cosd = np.cos(np.deg2rad(dec))
        vals = (name, ra, dec, _wrap(ra - half_u / cosd), _wrap(ra + half_u / cosd),
                dec - half_u, dec + half_u, _wrap(ra - half_img / cosd),
                _wrap(ra + half_img / cosd), dec - half_img, dec + half_img, size, size,
                DES_SCALE)
        for key, val in zip(cols, vals):
            cols[key].append(val)
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["NAXIS1"] = out["NAXIS1"].astype(np.int32)
    out["NAXIS2"] = out["NAXIS2"].astype(np.int32)
    return out


def des_catalog(seed, tiles=DEFAULT_TILES, size=1000, gal_density=15.0, star_density=1.0):
    """Objects over the tiles plus a margin that no tile covers (for off-tile targets)."""
    rng = make_rng(seed, "des_catalog")
    half_img = size / 2.0 * DES_SCALE / 3600.0
    ras = np.array([((t[1] + 180.0) % 360.0) - 180.0 for t in tiles])
    decs = np.array([t[2] for t in tiles])
    # Box in degrees around the tiles, extended on one side to hold off-tile objects.
    ra_lo, ra_hi = ras.min() - half_img, ras.max() + half_img + 0.02
    dec_lo, dec_hi = decs.min() - half_img - 0.01, decs.max() + half_img
    cosd = np.cos(np.deg2rad(0.5 * (dec_lo + dec_hi)))
    area = (ra_hi - ra_lo) * cosd * (dec_hi - dec_lo) * 3600.0
    n_gal = rng.poisson(gal_density * area)
    n_star = rng.poisson(star_density * area)
    n = n_star + n_gal
    ra = _wrap(rng.uniform(ra_lo, ra_hi, n))
    dec = rng.uniform(dec_lo, dec_hi, n)
    mag_r = np.concatenate([_power_law_mags(rng, n_star, 0.2, 13.0, 23.0),
                            _power_law_mags(rng, n_gal, 0.32, 18.0, 24.5)])
    is_star = np.concatenate([np.ones(n_star), np.zeros(n_gal)]).astype(np.int16)
    colour_gr = np.where(is_star == 1, rng.uniform(0.2, 1.4, n), rng.uniform(0.3, 1.2, n))
    mags = {"r": mag_r, "g": mag_r + colour_gr}
    mags["i"] = mag_r - rng.uniform(0.1, 0.5, n)
    mags["z"] = mags["i"] - rng.uniform(0.0, 0.3, n)
    mags["Y"] = mags["z"] - rng.uniform(0.0, 0.2, n)
    hlr_d, hlr_b, bf, hlr = galaxy_sizes(rng, mag_r[n_star:])
    e1, e2 = draw_ellipticities(rng, n_gal)
    z = np.zeros(n_star)
    cat = {
        "COADD_OBJECT_ID": np.arange(ID_OFFSET + 1, ID_OFFSET + n + 1, dtype=np.int64),
        "RA": ra, "DEC": dec, "IS_STAR": is_star,
        "HLR": np.concatenate([z, hlr]).astype(np.float32),
        "HLR_DISK": np.concatenate([z, hlr_d]),
        "HLR_BULGE": np.concatenate([z, hlr_b]),
        "BULGE_FRAC": np.concatenate([z, bf]),
        "E1_INT": np.concatenate([z, e1]).astype(np.float32),
        "E2_INT": np.concatenate([z, e2]).astype(np.float32),
    }
    for b in BANDS:
        cat[f"MAG_{b.upper()}"] = mags[b].astype(np.float32)
    return cat


def render_des_tile(cat, name, ra_c, dec_c, band, seed, size=1000):
    """Image (float32, background-subtracted) and mask (int32) of one tile in one band."""
    import galsim

    header = geo.tan_header((ra_c, dec_c), ((size + 1) / 2.0, (size + 1) / 2.0), (size, size),
                            scale=DES_SCALE)
    wcs = geo.make_wcs(header)
    rng = make_rng(seed, "des", name, band)
    x, y = geo.sky_to_pix(wcs, cat["RA"], cat["DEC"])
    margin = 40
    idx = np.flatnonzero((x > -margin) & (x < size + margin) & (y > -margin)
                         & (y < size + margin))
    fwhm = BAND_FWHM[band] * rng.uniform(0.95, 1.05)
    pg1, pg2 = rng.normal(0.0, 0.01, 2)
    gsp = galsim.GSParams(folding_threshold=5e-3, maxk_threshold=1e-3)
    psf = galsim.Moffat(beta=3.5, fwhm=fwhm / DES_SCALE, gsparams=gsp).shear(g1=pg1, g2=pg2)
    image = np.zeros((size, size))
    flux = 10.0 ** (-0.4 * (cat[f"MAG_{band.upper()}"].astype(float) - DES_MAGZERO))
    if idx.size:
        jac = geo.local_jacobian(wcs, x[idx], y[idx])
    for k, i in enumerate(idx):
        if cat["IS_STAR"][i]:
            prof = psf.withFlux(flux[i])
            half = int(np.clip(6 + 4 * np.log10(max(flux[i], 1.0)), 8, 60))
        else:
            gal = galaxy_profile(flux[i], float(cat["HLR_DISK"][i]), float(cat["HLR_BULGE"][i]),
                                 float(cat["BULGE_FRAC"][i]), float(cat["E1_INT"][i]),
                                 float(cat["E2_INT"][i]), 0.0, 0.0, gsp)
            local = galsim.JacobianWCS(*jac[k])
            prof = galsim.Convolve(local.profileToImage(gal), psf, gsparams=gsp)
            half = int(np.clip(8 + 6 * cat["HLR"][i] / DES_SCALE, 10, 80))
        stamp, x0, y0 = _draw(prof, x[i], y[i], half)
        _add_stamp(image, stamp, x0, y0)
    image += rng.normal(0.0, BAND_NOISE[band], image.shape)
    mask = np.zeros(image.shape, dtype=np.int32)
    sat = image >= DES_SATURATE
    image[sat] = DES_SATURATE
    mask[sat] |= MASK_SAT
    col = int(rng.integers(0, size))
    mask[:, col] |= MASK_BAD
    image[:, col] = 0.0
    for key, val in (("TILENAME", name), ("BAND", band), ("MAGZERO", DES_MAGZERO),
                     ("GAIN", 4.0), ("SATURATE", DES_SATURATE), ("PSF_FWHM", round(fwhm, 4)),
                     ("SKYSIGMA", BAND_NOISE[band])):
        header[key] = val
    return image.astype(np.float32), mask, header


def make_des(des_dir, seed=1234, tiles=DEFAULT_TILES, size=1000, log=None):
    """Write DES-like tiles, ``tile_geometry.fits``, ``truth.fits`` and ``targets.csv``.

    Parameters
    ----------
    des_dir : str
        Output directory (``DIR/des``).
    seed : int
        Survey seed.
    tiles : list of tuple
        (TILENAME, RA, Dec) of each tile.
    size : int
        Tile side (px, at 0.263"/px).
    log : callable, optional
        Progress messages.
    """
    log = log or (lambda msg: None)
    os.makedirs(os.path.join(des_dir, "tiles"), exist_ok=True)
    geom = tile_geometry(tiles, size)
    cat = des_catalog(seed, tiles, size)
    tilename = np.full(cat["RA"].size, "", dtype="U12")
    for i, name in enumerate(geom["TILENAME"]):
        row = {k: v[i] for k, v in geom.items()}
        tilename[in_unique_area(cat["RA"], cat["DEC"], row)] = name
    for name, ra_c, dec_c in tiles:
        for band in BANDS:
            image, mask, header = render_des_tile(cat, name, ra_c, dec_c, band, seed, size)
            primary = fits.PrimaryHDU()
            primary.header["TILENAME"] = name
            primary.header["BAND"] = band
            dither = int(make_rng(seed, "des_dither", name, band).integers(1, 10001))
            sci = fits.CompImageHDU(image, header=header, name="SCI", compression_type="RICE_1",
                                    quantize_level=16.0, quantize_method=2, dither_seed=dither)
            msk = fits.CompImageHDU(mask, header=header, name="MSK", compression_type="RICE_1")
            write_fits(fits.HDUList([primary, sci, msk]),
                       os.path.join(des_dir, "tiles", f"{name}_{band}.fits.fz"))
        log(f"DES tile {name} done")
    write_fits(table_hdulist(geom, "TILE_GEOMETRY"), os.path.join(des_dir, "tile_geometry.fits"))
    truth = {k: cat[k] for k in ("COADD_OBJECT_ID", "RA", "DEC", "IS_STAR", "MAG_G", "MAG_R",
                                 "MAG_I", "MAG_Z", "MAG_Y", "HLR", "E1_INT", "E2_INT")}
    truth["TILENAME"] = tilename
    write_fits(table_hdulist(truth, "TRUTH"), os.path.join(des_dir, "truth.fits"))
    # Targets: everything brighter than i = 23.5, on a tile or not.
    sel = np.flatnonzero(cat["MAG_I"] < 23.5)
    lines = ["RA,DEC,COADD_OBJECT_ID,TILENAME,STATUS"]
    lines += [f"{cat['RA'][i]:.7f},{cat['DEC'][i]:.7f},{cat['COADD_OBJECT_ID'][i]},,new"
              for i in sel]
    with atomic_path(os.path.join(des_dir, "targets.csv")) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
    log(f"DES: {len(tiles)} tiles x {len(BANDS)} bands, {sel.size} targets "
        f"({int(np.sum(tilename[sel] == ''))} on no tile)")
