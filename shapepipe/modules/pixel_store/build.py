"""Fill the stores from FITS files: one exposure-CCD into part files, then one merge.

Parallel jobs never share an HDF5 file: each writes its own part files (under temporary
names, renamed when complete); :func:`merge_parts` then copies every part into the final
stores, written under temporary names and renamed, so an interrupted run leaves either the
previous stores or the new ones, never half of one.
"""

import json
import os

import h5py
import numpy as np
import sep
from astropy.io import fits

from shapepipe.utils.atomic import atomic_path

from .meta_store import MetaStore
from .pixel_store import ImageNameSet, ImageSet, PixelStore
from .psf_store import PSFStore, grid_locations, psf_mixtures_from_model

__all__ = ["estimate_background", "read_exposure", "band_from_header", "write_parts",
           "merge_parts", "PIXEL_STORE", "META_STORE", "PSF_STORE"]

#: Final file names in the merge step's output directory.
PIXEL_STORE, META_STORE, PSF_STORE = "pixel_store.h5", "meta_store.json", "psf_store.h5"


def band_from_header(hdr, where=""):
    """Band name from the FILTER keyword, upper case (forcepho's rule)."""
    if "FILTER" not in hdr or not str(hdr["FILTER"]).strip():
        raise KeyError(f"{where}: no FILTER keyword in the header: cannot name the band")
    return str(hdr["FILTER"]).strip().upper()


def estimate_background(image, mask=None, box_size=64, filter_size=3):
    """Smooth background of an image with ``sep`` (SExtractor's algorithm).

    Parameters
    ----------
    image : numpy.ndarray
        2-d image (any orientation; the result has the same shape).
    mask : numpy.ndarray of bool, optional
        Pixels to ignore.
    box_size, filter_size : int
        Mesh size and median filter size.

    Returns
    -------
    numpy.ndarray
        float32 background map.
    """
    data = np.ascontiguousarray(image, dtype=np.float32)
    if mask is not None:
        mask = np.ascontiguousarray(mask, dtype=bool)
    # sep needs finite values even under the mask.
    bad = ~np.isfinite(data)
    if bad.any():
        data = np.where(bad, 0.0, data).astype(np.float32)
        mask = bad if mask is None else (mask | bad)
    bkg = sep.Background(data, mask=mask, bw=box_size, bh=box_size, fw=filter_size,
                         fh=filter_size)
    return bkg.back(dtype=np.float32)


def _read(path, what):
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if hdu.data is not None and hdu.data.ndim == 2:
                    return np.asarray(hdu.data), hdu.header
    except OSError as err:
        raise OSError(f"{path}: cannot read the {what} ({err})") from None
    raise ValueError(f"{path}: no 2-d image HDU (expected the {what})")


def read_exposure(image_path, weight_path, flag_path=None, bkg_path=None, header=None,
                  band=None, expID=None, estimate_bkg=True, bitmask=None, box_size=64,
                  filter_size=3):
    """Read one exposure-CCD into an :class:`ImageSet` of (nx, ny) arrays (FITS transposed).

    Parameters
    ----------
    image_path, weight_path : str
        Image and inverse-variance weight; ``ierr = sqrt(weight)``.
    flag_path : str, optional
        Integer flag image.
    bkg_path : str, optional
        Background image; otherwise estimated with :func:`estimate_background` if
        ``estimate_bkg`` (masking flagged and zero-weight pixels).
    header : astropy.io.fits.Header, optional
        Header to store (e.g. from merge_headers' store); default the image's.
    band, expID : str, optional
        Default: band from FILTER, expID from the image file name.
    bitmask : int, optional
        Flags that mask a pixel in the background estimate (None: any flag).

    Returns
    -------
    ImageSet
    """
    im, im_hdr = _read(image_path, "image")
    weight, _ = _read(weight_path, "weight")
    if weight.shape != im.shape:
        raise ValueError(f"{weight_path}: weight shape {weight.shape}, image {image_path} "
                         f"{im.shape}")
    flags = None
    if flag_path:
        flags, _ = _read(flag_path, "flags")
        if flags.shape != im.shape:
            raise ValueError(f"{flag_path}: flag shape {flags.shape}, image {im.shape}")
        if flags.dtype.kind not in "iub":
            raise ValueError(f"{flag_path}: flags of type {flags.dtype}, expected integers")
    hdr = header if header is not None else im_hdr
    with np.errstate(invalid="ignore"):
        ierr = np.sqrt(np.where(weight > 0, weight, 0)).astype(np.float32)
    im = im.astype(np.float32)
    bkg = None
    if bkg_path:
        bkg, _ = _read(bkg_path, "background")
        if bkg.shape != im.shape:
            raise ValueError(f"{bkg_path}: background shape {bkg.shape}, image {im.shape}")
        bkg = bkg.astype(np.float32)
    elif estimate_bkg:
        masked = ierr <= 0
        if flags is not None:
            masked |= (flags != 0) if bitmask is None else (flags & int(bitmask)) != 0
        bkg = estimate_background(im, masked, box_size, filter_size)
    if band is None:
        band = band_from_header(hdr, image_path)
    if expID is None:
        expID = os.path.basename(image_path).split(".")[0]
    names = ImageNameSet(image_path, weight_path, flag_path, bkg_path)
    # forcepho's convention: arrays indexed [x, y], i.e. the FITS data transposed.
    return ImageSet(im=im.T, ierr=ierr.T, mask=None if flags is None else flags.T,
                    bkg=None if bkg is None else bkg.T, hdr=hdr, band=band, expID=expID,
                    names=names)


def write_parts(imset, out_prefix, psf_path=None, super_pixel_size=8, bitmask=None,
                do_fluxcal=False, psf_grid=3, n_gauss=3, nradii=1, stamp_size=None):
    """Write the three part files of one exposure-CCD.

    Files ``pixel_store_part<suffix>.h5``, ``meta_store_part<suffix>.json`` and (with a PSF
    model) ``psf_store_part<suffix>.h5`` in the directory, each written atomically.

    Parameters
    ----------
    imset : ImageSet
        The exposure-CCD.
    out_prefix : (str, str)
        Output directory and the suffix of the part names (the job number, ``-2000001-0``).
    psf_path : str, optional
        PSFEx-format model; None writes no PSF part.
    super_pixel_size, bitmask, do_fluxcal
        See :meth:`PixelStore.add_exposure`.
    psf_grid, n_gauss, nradii, stamp_size
        Locations per axis and mixture settings (see :func:`psf_mixtures_from_model`).

    Returns
    -------
    dict
        Paths written and a few numbers for the log.
    """
    directory, suffix = out_prefix
    nx, ny = imset.im.shape
    out = {"n_masked": 0}
    pix = os.path.join(directory, f"pixel_store_part{suffix}.h5")
    with atomic_path(pix) as tmp:
        store = PixelStore(tmp, nside_full=(nx, ny), super_pixel_size=super_pixel_size)
        superpixels, attrs = store.prepare(imset, bitmask=bitmask, do_fluxcal=do_fluxcal)
        store.write_superpixels(imset.band, imset.expID, superpixels, attrs)
        out["n_masked"] = attrs["n_masked"]
    out["pixel"] = pix
    meta = MetaStore()
    meta.add_exposure(imset)
    out["meta"] = os.path.join(directory, f"meta_store_part{suffix}.json")
    meta.write_to_file(out["meta"])
    if psf_path:
        locations = grid_locations(nx, ny, psf_grid)
        params, _, flags = psf_mixtures_from_model(psf_path, locations, n_gauss, nradii,
                                                   stamp_size)
        out["psf"] = os.path.join(directory, f"psf_store_part{suffix}.h5")
        with atomic_path(out["psf"]) as tmp:
            PSFStore(tmp).add_psf(imset.band, locations, params, expID=imset.expID,
                                  psf_file=os.path.basename(psf_path), ngauss=n_gauss,
                                  nradii=nradii, fit_flags=flags)
        out["psf_fit_failed"] = int(np.count_nonzero(flags))
    return out


def _copy_groups(src, dst, what):
    """Copy every ``<band>/<expID>`` group of ``src`` into ``dst`` (refusing duplicates)."""
    for band in src:
        dband = dst.require_group(band)
        for exp in src[band]:
            if exp in dband:
                raise ValueError(f"{what}: {band}/{exp} appears in more than one part file")
            src.copy(src[band][exp], dband, name=exp)


def merge_parts(pixel_parts, meta_parts, psf_parts, output_dir):
    """Merge part files into ``pixel_store.h5``, ``meta_store.json``, ``psf_store.h5``.

    Every store is written under a temporary name and renamed once complete.

    Parameters
    ----------
    pixel_parts, meta_parts, psf_parts : list of str
        Part files (``psf_parts`` may be empty: no PSF store then).
    output_dir : str
        Where the stores go.

    Returns
    -------
    dict
        Paths and counts: ``nexp``, ``bands``, ``nside_full``, ``super_pixel_size``,
        ``pixel_bytes``, ``n_psf``.
    """
    if not pixel_parts:
        raise ValueError("pixel store merge: no pixel_store_part*.h5 files")
    summary = {}
    pixel_path = os.path.join(output_dir, PIXEL_STORE)
    sizes = []
    with atomic_path(pixel_path) as tmp:
        with h5py.File(tmp, "w") as dst:
            spsize = None
            for part in sorted(pixel_parts):
                with h5py.File(part, "r") as src:
                    s = int(src.attrs["super_pixel_size"])
                    if spsize is None:
                        spsize = s
                    elif s != spsize:
                        raise ValueError(f"{part}: super_pixel_size {s}, other parts {spsize}")
                    sizes.append(np.broadcast_to(src.attrs["nside_full"], 2))
                    _copy_groups(src, dst, part)
            # Nominal size: the largest image (exposures of another size keep nx, ny attrs).
            nside = np.max(np.array(sizes), axis=0)
            dst.attrs["nside_full"] = nside.astype(np.int64)
            dst.attrs["super_pixel_size"] = spsize
    summary.update(pixel_store=pixel_path, nside_full=nside.tolist(), super_pixel_size=spsize,
                   pixel_bytes=os.path.getsize(pixel_path))
    meta = MetaStore()
    for part in sorted(meta_parts):
        for band, exps in MetaStore.read_from_file(part).items():
            for exp, hdr in exps.items():
                if exp in meta.headers.get(band, {}):
                    raise ValueError(f"{part}: {band}/{exp} appears in more than one part file")
                meta.headers.setdefault(band, {})[exp] = hdr
    meta_path = os.path.join(output_dir, META_STORE)
    meta.write_to_file(meta_path)
    summary.update(meta_store=meta_path, nexp=meta.nexp, bands=sorted(meta.headers))
    summary["n_psf"] = 0
    if psf_parts:
        psf_path = os.path.join(output_dir, PSF_STORE)
        with atomic_path(psf_path) as tmp:
            with h5py.File(tmp, "w") as dst:
                for part in sorted(psf_parts):
                    with h5py.File(part, "r") as src:
                        _copy_groups(src, dst, part)
                        summary["n_psf"] += sum(len(src[b]) for b in src)
        summary["psf_store"] = psf_path
    return summary


def summary_line(summary):
    """One line describing merged stores (for logs and the main job)."""
    return json.dumps({k: v for k, v in summary.items()
                       if k in ("nexp", "bands", "nside_full", "super_pixel_size",
                                "pixel_bytes", "n_psf")})
