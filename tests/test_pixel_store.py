"""pixel_store: forcepho's PixelStore, MetaStore and PSFStore layouts, masks, padding, search."""

import json
import os

import galsim
import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from shapepipe.modules.pixel_store import (
    PSF_DTYPE,
    ImageNameSet,
    ImageSet,
    MetaStore,
    PixelStore,
    PSFStore,
    fit_psf_mixture,
    grid_locations,
    merge_parts,
    mixture_image,
    psf_mixtures_from_model,
    read_exposure,
    superpixelize,
    write_parts,
)
from shapepipe.modules.psfex.dotpsf import PSFModel, write_psf
from shapepipe.modules.psfex_interp.interp import hsm_shapes

SCALE = 0.187 / 3600


def loop_superpixelize(im, ierr, s):
    """forcepho's double loop, as the reference of the layout (multiples of s only)."""
    nsx, nsy = im.shape[0] // s, im.shape[1] // s
    out = np.empty((nsx, nsy, 2 * s * s), np.float32)
    for i in range(nsx):
        for j in range(nsy):
            out[i, j, :s * s] = im[i * s:(i + 1) * s, j * s:(j + 1) * s].flatten()
            out[i, j, s * s:] = ierr[i * s:(i + 1) * s, j * s:(j + 1) * s].flatten()
    return out


def header(nx, ny, ra=150.0, dec=2.0, filt="r.MP9602", zp=30.0):
    h = fits.Header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, nx, ny
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = ra, dec
    h["CRPIX1"], h["CRPIX2"] = (nx + 1) / 2, (ny + 1) / 2
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -SCALE, 0.0, 0.0, SCALE
    h["FILTER"], h["MAGZP"], h["EXPTIME"] = filt, zp, 200.0
    return h


def imageset(nx=64, ny=40, seed=0, **kw):
    rng = np.random.default_rng(seed)
    im = rng.normal(100, 5, (nx, ny)).astype(np.float32)
    ierr = rng.uniform(0.1, 0.3, (nx, ny)).astype(np.float32)
    fields = dict(im=im, ierr=ierr, mask=None, bkg=None, hdr=header(nx, ny), band="R",
                  expID="2000001-0", names=ImageNameSet("im.fits", "w.fits", None, None))
    fields.update(kw)
    return ImageSet(**fields)


# -- PixelStore layout ----------------------------------------------------------------------
def test_superpixelize_matches_the_loop_layout():
    rng = np.random.default_rng(1)
    im = rng.normal(size=(48, 32)).astype(np.float32)
    ierr = rng.random((48, 32)).astype(np.float32)
    for s in (1, 4, 8, 16):
        np.testing.assert_array_equal(superpixelize(im, ierr, s), loop_superpixelize(im, ierr, s))
    # float64 or non-contiguous inputs take the general path: same layout
    np.testing.assert_array_equal(superpixelize(im.astype(np.float64), ierr.T.copy().T, 8),
                                  loop_superpixelize(im, ierr, 8))


def test_store_layout_and_attributes(tmp_path):
    path = str(tmp_path / "pix.h5")
    store = PixelStore(path, nside_full=(64, 40), super_pixel_size=8)
    imset = imageset()
    store.add_exposure(imset, bitmask=3)
    with h5py.File(path, "r") as h5:
        assert list(h5.attrs["nside_full"]) == [64, 40]
        assert h5.attrs["super_pixel_size"] == 8
        dset = h5["R/2000001-0/data"]
        assert dset.shape == (8, 5, 128) and dset.dtype == np.float32
        assert dset.attrs["counts_to_flux"] == 1.0
        assert dset.attrs["flux_units"] == "image"
        assert dset.attrs["bitmask_applied"] == 3
        assert dset.attrs["im"] == "im.fits" and dset.attrs["err"] == "w.fits"
        data = dset[...]
    # super-pixel (I, J): block im[I*8:(I+1)*8, J*8:(J+1)*8] flattened in C order
    np.testing.assert_array_equal(data[2, 3, :64], imset.im[16:24, 24:32].ravel())
    np.testing.assert_array_equal(data[2, 3, 64:], imset.ierr[16:24, 24:32].ravel())
    # xpix/ypix say where every stored pixel comes from
    assert store.xpix.shape == (8, 5, 64)
    np.testing.assert_array_equal(data[..., :64], imset.im[store.xpix, store.ypix])
    corners = store.superpixel_corners()
    assert corners.shape == (8, 5, 4, 2)
    np.testing.assert_array_equal(corners[2, 3], [[16, 24], [23, 24], [23, 31], [16, 31]])
    # the file's attributes win over the arguments when it exists
    again = PixelStore(path, nside_full=2048, super_pixel_size=4)
    assert again.super_pixel_size == 8 and list(again.imsize) == [64, 40]


def test_round_trip_is_exact(tmp_path):
    store = PixelStore(str(tmp_path / "pix.h5"), nside_full=(64, 40))
    imset = imageset()
    store.add_exposure(imset)
    im, ierr = store.get_image("R", "2000001-0")
    np.testing.assert_array_equal(im, imset.im)
    np.testing.assert_array_equal(ierr, imset.ierr)
    assert store.exposures() == [("R", "2000001-0")]
    store.close()


def test_masks_background_and_inputs_untouched(tmp_path):
    imset = imageset()
    im0, ierr0 = imset.im.copy(), imset.ierr.copy()
    im = imset.im.copy()
    ierr = imset.ierr.copy()
    im[1, 1] = np.nan
    ierr[2, 2] = np.inf
    ierr[3, 3] = -1
    flags = np.zeros(im.shape, np.int16)
    flags[4, 4] = 1  # selected by the bitmask
    flags[5, 5] = 8  # not selected
    bkg = np.full(im.shape, 10.0, np.float32)
    imset = imset._replace(im=im, ierr=ierr, mask=flags, bkg=bkg)
    store = PixelStore(str(tmp_path / "pix.h5"), nside_full=(64, 40))
    store.add_exposure(imset, bitmask=1 | 2)
    out_im, out_ierr = store.get_image("R", "2000001-0")
    for x, y in [(1, 1), (2, 2), (3, 3), (4, 4)]:
        assert out_ierr[x, y] == 0 and out_im[x, y] == 0
    assert out_ierr[5, 5] == ierr[5, 5]
    np.testing.assert_allclose(out_im[5, 5], im[5, 5] - 10.0)
    assert np.all(np.isfinite(out_im)) and np.all(np.isfinite(out_ierr))
    # default: any flag masks
    store.add_exposure(imset)
    assert store.get_image("R", "2000001-0")[1][5, 5] == 0
    # the caller's arrays are not modified (forcepho subtracts in place)
    assert np.isnan(imset.im[1, 1]) and imset.ierr[3, 3] == -1
    np.testing.assert_array_equal(imset.im[10:], im0[10:])
    np.testing.assert_array_equal(imset.ierr[10:], ierr0[10:])


def test_flux_calibration_from_zero_point(tmp_path):
    store = PixelStore(str(tmp_path / "pix.h5"), nside_full=(64, 40))
    imset = imageset()
    store.add_exposure(imset, do_fluxcal=True)
    conv = 1e9 * 10 ** (0.4 * (8.9 - 30.0))  # nJy per count at MAGZP = 30
    dset = store.data["R/2000001-0/data"]
    assert dset.attrs["flux_units"] == "nJy"
    np.testing.assert_allclose(dset.attrs["counts_to_flux"], conv)
    im, ierr = store.get_image("R", "2000001-0")
    np.testing.assert_allclose(im, imset.im * conv, rtol=1e-6)
    np.testing.assert_allclose(ierr, imset.ierr / conv, rtol=1e-6)
    store.close()


def test_padding_and_other_sizes(tmp_path):
    store = PixelStore(str(tmp_path / "pix.h5"), nside_full=(64, 40))
    odd = imageset(nx=61, ny=37, seed=3, expID="2000002-1")
    store.add_exposure(odd)
    dset = store.data["R/2000002-1/data"]
    assert dset.shape == (8, 5, 128)
    assert (dset.attrs["nx"], dset.attrs["ny"]) == (61, 37)
    raw = dset[...]
    xpix, ypix = store.pixel_coordinates((61, 37))
    outside = (xpix >= 61) | (ypix >= 37)
    assert outside.sum() == 64 * 40 - 61 * 37
    assert np.all(raw[..., 64:][outside] == 0) and np.all(raw[..., :64][outside] == 0)
    im, ierr = store.get_image("R", "2000002-1")
    np.testing.assert_array_equal(im, odd.im)
    np.testing.assert_array_equal(ierr, odd.ierr)
    store.close()


def test_re_adding_replaces_the_exposure(tmp_path):
    path = str(tmp_path / "pix.h5")
    store = PixelStore(path, nside_full=(64, 40))
    store.add_exposure(imageset(seed=1))
    second = imageset(seed=2)
    store.add_exposure(second)
    np.testing.assert_array_equal(store.get_image("R", "2000001-0")[0], second.im)
    store.close()
    with h5py.File(path, "r") as h5:
        assert list(h5["R"].keys()) == ["2000001-0"]  # no temporary group left


def test_superpixels_in_a_circle(tmp_path):
    store = PixelStore(str(tmp_path / "pix.h5"), nside_full=(64, 40))
    imset = imageset()
    store.add_exposure(imset)
    x, y, r = 20.3, 17.8, 9.0
    got = store.superpixels_in_circle("R", "2000001-0", x, y, r)
    # brute force: a super-pixel is kept when one of its pixel squares touches the circle
    corners = store.superpixel_corners()
    lo = corners[:, :, 0] - 0.5
    hi = corners[:, :, 2] + 0.5
    dx = np.maximum(np.maximum(lo[..., 0] - x, x - hi[..., 0]), 0)
    dy = np.maximum(np.maximum(lo[..., 1] - y, y - hi[..., 1]), 0)
    want = np.argwhere(dx ** 2 + dy ** 2 <= r ** 2)
    assert sorted(map(tuple, got["index"])) == sorted(map(tuple, want))
    np.testing.assert_array_equal(got["data"][:, :64], imset.im[got["xpix"], got["ypix"]])
    # on the sky, with the exposure's WCS (pixel (20.3, 17.8) 0-based)
    wcs = WCS(imset.hdr)
    ra, dec = wcs.all_pix2world([[x, y]], 0)[0]
    sky = store.superpixels_near("R", "2000001-0", wcs, (ra, dec), r * 0.187)
    assert sorted(map(tuple, sky["index"])) == sorted(map(tuple, want))
    far = store.superpixels_in_circle("R", "2000001-0", -100, -100, 5)
    assert far["data"].shape == (0, 128)
    store.close()


def test_bad_inputs_are_refused(tmp_path):
    store = PixelStore(str(tmp_path / "pix.h5"), nside_full=(64, 40))
    with pytest.raises(ValueError, match="same 2-d shape"):
        store.add_exposure(imageset()._replace(ierr=np.ones((3, 3), np.float32)))
    with pytest.raises(ValueError, match="nside_full"):
        PixelStore(str(tmp_path / "other.h5"), nside_full=(1, 2, 3))


# -- MetaStore ------------------------------------------------------------------------------
def test_meta_store_round_trip_and_table(tmp_path):
    meta = MetaStore()
    meta.add_exposure(imageset(hdr=header(64, 40)))
    meta.add_exposure(imageset(hdr=header(64, 40, filt="i.MP9703"), band="I", expID="e2"))
    path = str(tmp_path / "meta.json")
    meta.write_to_file(path)
    with open(path) as handle:
        raw = json.load(handle)
    assert set(raw) == {"R", "I"} and isinstance(raw["R"]["2000001-0"], str)
    back = MetaStore(path)
    assert back.nexp == 2 and back.wcs == {}  # WCS built lazily
    assert back.headers["I"]["e2"]["FILTER"] == "i.MP9703"
    back.populate_wcs()
    assert back.wcs["R"]["2000001-0"].wcs.ctype[0] == "RA---TAN"
    table = str(tmp_path / "exposures.fits")
    back.to_table(table)
    rows = fits.getdata(table, "EXPOSURES")
    assert len(rows) == 2 and set(rows["BAND"]) == {"R", "I"}
    np.testing.assert_allclose(rows["RA"][0], 150.0, atol=1e-9)


def edge_positions(hdr, eps):
    """Sky positions just inside and just outside the left and top pixel edges."""
    wcs = WCS(hdr)
    nx, ny = hdr["NAXIS1"], hdr["NAXIS2"]
    inside = [(-0.5 + eps, ny / 2), (nx / 2, ny - 0.5 - eps), (-0.5 + eps, -0.5 + eps)]
    outside = [(-0.5 - eps, ny / 2), (nx / 2, ny - 0.5 + eps), (nx - 0.5 + eps, 3.0)]
    return wcs.all_pix2world(inside, 0), wcs.all_pix2world(outside, 0)


@pytest.mark.parametrize("ra0", [150.0, 0.0, 359.995])
def test_find_exposures_at_the_edges_and_across_ra_zero(ra0):
    meta = MetaStore()
    hdr = header(2000, 1000, ra=ra0, dec=-30.0)
    meta.add_exposure(imageset(hdr=hdr))
    meta.add_exposure(imageset(hdr=header(2000, 1000, ra=(ra0 + 1.0) % 360, dec=-30.0),
                               expID="elsewhere"))
    inside, outside = edge_positions(hdr, 1e-3)
    for ra, dec in inside:
        assert meta.find_exposures((ra, dec), ["R"]) == (["2000001-0"], ["R"])
    for ra, dec in outside:
        assert meta.find_exposures((ra, dec), ["R"]) == ([], [])
    # the image straddles RA = 0 when ra0 is 0: both sides of the wrap are found
    if ra0 == 0.0:
        for ra in (359.99, 0.01):
            assert meta.find_exposures((ra, -30.0), ["R"])[0] == ["2000001-0"]
    assert meta.find_exposures((ra0 + 180.0, 30.0), ["R"]) == ([], [])  # antipode
    assert meta.find_exposures((ra0, -30.0), ["G"]) == ([], [])


# -- PSFStore -------------------------------------------------------------------------------
def moffat_psf_file(path, size=41, fwhm=3.6, beta=3.5):
    """A PSFEx-format model varying across a 400 x 300 detector: size and ellipticity."""
    def draw(fwhm, g1=0.0):
        prof = galsim.Moffat(beta=beta, fwhm=fwhm).shear(g1=g1, g2=0.02)
        return prof.drawImage(nx=size, ny=size, scale=1.0).array
    base = draw(fwhm)
    mask = np.stack([base, 0.5 * (draw(fwhm * 1.15) - base), 0.5 * (draw(fwhm, 0.06) - base)])
    model = PSFModel(mask, ["XWIN_IMAGE", "YWIN_IMAGE"], [200.5, 150.5], [200.0, 150.0],
                     [1, 1], [1])
    write_psf(str(path), model, accepted=50, loaded=50, chi2=1.0, fwhm=fwhm)


def test_psf_mixtures_reproduce_the_model_size(tmp_path):
    psf_path = tmp_path / "model.psf"
    moffat_psf_file(psf_path)
    locations = grid_locations(400, 300, 3)
    params, stamps, flags = psf_mixtures_from_model(str(psf_path), locations, n_gauss=3,
                                                    nradii=2)
    assert params.dtype == PSF_DTYPE and params.shape == (9, 6)
    assert np.all(flags == 0)
    np.testing.assert_array_equal(params["sersic_bin"][0], [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(params["amp"][:, :3].sum(axis=1), 1.0, rtol=1e-6)
    mixtures = np.array([mixture_image(p[:3], stamps[0].shape) for p in params])
    model = hsm_shapes(stamps)
    mixture = hsm_shapes(mixtures)
    assert np.all(model[:, 3] == 0)
    # the model varies across the detector, and the mixtures follow it
    assert np.ptp(model[:, 2]) > 0.05 * model[:, 2].mean()
    np.testing.assert_allclose(mixture[:, 2], model[:, 2], rtol=0.01)
    np.testing.assert_allclose(mixture[:, :2], model[:, :2], atol=0.003)


def test_fit_psf_mixture_recovers_a_gaussian_mixture():
    truth = np.zeros(2, PSF_DTYPE)
    truth["amp"] = 0.7, 0.3
    truth["Cxx"], truth["Cyy"], truth["Cxy"] = (2.0, 8.0), (2.5, 7.0), (0.3, -0.5)
    stamp = mixture_image(truth, (31, 31))
    fit, flags = fit_psf_mixture(stamp, n_gauss=2)
    assert flags == 0
    for name in ("amp", "Cxx", "Cyy", "Cxy"):
        np.testing.assert_allclose(fit[name], truth[name], atol=2e-3)


def test_psf_store_lookup_and_local_psf(tmp_path):
    path = str(tmp_path / "psf.h5")
    store = PSFStore(path)
    locations = np.array([[10.0, 100.0, 10.0], [10.0, 10.0, 100.0]])
    params = np.zeros((3, 2), PSF_DTYPE)
    params["amp"] = 0.5
    params["Cxx"] = np.array([1.0, 2.0, 3.0])[:, None]
    store.add_psf("R", locations, params, expID="2000001-0")
    store.add_psf("R", locations, params)  # band-wide, as forcepho reads it
    with h5py.File(path, "r") as h5:
        assert h5["R/2000001-0/parameters"].dtype == PSF_DTYPE
        assert h5["R/2000001-0/detector_locations"].shape == (2, 3)
        assert h5["R/2000001-0"].attrs["n_psf_per_source"] == 2
    assert store.lookup("R", xy=(95, 20), expID="2000001-0")["Cxx"][0] == 2.0
    assert store.lookup("R/2000001-0", xy=(0, 90))["Cxx"][0] == 3.0  # forcepho's path form
    assert store.lookup("R")["Cxx"][0] == 1.0  # no position: the first location
    wcs = WCS(header(200, 200))
    ra, dec = wcs.all_pix2world([[99.0, 12.0]], 0)[0]
    assert store.get_local_psf("R", source=(ra, dec), wcs=wcs, expID="2000001-0")["Cxx"][0] \
        == 2.0
    with pytest.raises(KeyError, match="no PSF parameters"):
        store.lookup("G")
    store.close()


# -- FITS to stores -------------------------------------------------------------------------
def write_ccd(directory, number, nx=96, ny=72, seed=0):
    rng = np.random.default_rng(seed)
    hdr = header(nx, ny)
    data = rng.normal(200.0, 3.0, (ny, nx)).astype(np.float32)
    weight = np.full((ny, nx), 1 / 9.0, np.float32)
    weight[5, 7] = 0.0
    flags = np.zeros((ny, nx), np.int16)
    flags[10, 20] = 4
    paths = []
    for kind, arr in (("image", data), ("weight", weight), ("flag", flags)):
        path = os.path.join(directory, f"{kind}{number}.fits")
        fits.PrimaryHDU(arr, header=hdr).writeto(path)
        paths.append(path)
    return paths, data, weight


def test_read_exposure_transposes_and_estimates_the_background(tmp_path):
    paths, data, weight = write_ccd(str(tmp_path), "-2000001-0")
    imset = read_exposure(*paths, expID="2000001-0")
    assert imset.im.shape == (96, 72) and imset.band == "R.MP9602"
    np.testing.assert_array_equal(imset.im[7, 5], data[5, 7])  # im[x, y] = FITS data[y, x]
    np.testing.assert_allclose(imset.ierr, np.sqrt(weight).T)
    np.testing.assert_allclose(np.median(imset.bkg), 200.0, atol=0.5)
    assert imset.mask[20, 10] == 4


def test_parts_merge_into_stores(tmp_path):
    data_dir, out_dir = tmp_path / "data", tmp_path / "out"
    data_dir.mkdir()
    out_dir.mkdir()
    psf_path = tmp_path / "model.psf"
    moffat_psf_file(psf_path)
    for i, number in enumerate(["-2000001-0", "-2000001-1"]):
        paths, _, _ = write_ccd(str(data_dir), number, seed=i)
        imset = read_exposure(*paths, expID=number[1:])
        write_parts(imset, (str(out_dir), number), psf_path=str(psf_path), bitmask=4,
                    psf_grid=2)
    parts = sorted(os.listdir(out_dir))
    assert len(parts) == 6 and not any(p.startswith(".") for p in parts)
    final = tmp_path / "final"
    final.mkdir()
    summary = merge_parts([str(out_dir / p) for p in parts if p.startswith("pixel")],
                          [str(out_dir / p) for p in parts if p.startswith("meta")],
                          [str(out_dir / p) for p in parts if p.startswith("psf")], str(final))
    assert summary["nexp"] == 2 and summary["nside_full"] == [96, 72]
    store = PixelStore(str(final / "pixel_store.h5"))
    assert sorted(store.exposures()) == [("R.MP9602", "2000001-0"), ("R.MP9602", "2000001-1")]
    im, ierr = store.get_image("R.MP9602", "2000001-0")
    assert ierr[7, 5] == 0 and ierr[20, 10] == 0  # zero weight, flag 4
    assert abs(np.median(im)) < 0.5  # background subtracted
    store.close()
    psf = PSFStore(str(final / "psf_store.h5"))
    assert psf.lookup("R.MP9602", xy=(10, 10), expID="2000001-1").shape == (3,)
    psf.close()
    meta = MetaStore(str(final / "meta_store.json"))
    assert meta.nexp == 2
    with pytest.raises(ValueError, match="more than one part"):
        merge_parts([str(out_dir / p) for p in parts if p.startswith("pixel")] * 2,
                    [], [], str(tmp_path))
    assert not os.path.exists(tmp_path / "pixel_store.h5")  # nothing half-written
