"""Detection with ``sep`` and measurement following SExtractor 2.25, object by object.

``MeasuredSources`` detects (sep's extraction and deblending, SExtractor's algorithm) and computes
the requested columns lazily. The measurements SExtractor makes on its blanked image (AUTO,
APER, the growth curve and FLUX_RADIUS, the windowed positions and fluxes) run SExtractor's
own per-object loops, compiled (``_kernels``), on the same mask (``MeasuredSources.blank``);
isophotal quantities, FWHM, flag-image OR and vignets are numpy on gathered pixel lists;
CLASS_STAR is in ``classify``. Only the columns the ``.param`` file asks for are computed.

Coordinates are 0-based inside this module (numpy and ``sep``); catalogue pixel columns
are converted to SExtractor's 1-based convention with ``shapepipe.utils.pixels``.
"""

import numpy as np
import sep

from shapepipe.modules.sextractor.columns import COLUMNS, VECTOR_PARAMS
from shapepipe.modules.sextractor.config_files import SexConfigError
from shapepipe.utils.pixels import numpy_to_fits

BIG = 1e30
# SExtractor's measurement constants are in _kernels (photom.h, winpos.h, growth.h).

# SExtractor FLAGS bits.
F_CROWDED, F_MERGED, F_SATUR, F_TRUNC, F_APERT_PB, F_ISO_PB, F_DOVERFLOW = 1, 2, 4, 8, 16, 32, 64


def load_compiled_loops():
    """Load the compiled measurement loops now rather than at the first measurement.

    numba's first call of a cached function in a process sets up its compiler context
    (0.3-0.5 s, once per process); ``sextractor_runner`` does it with its imports, with
    the garbage collector paused (``shapepipe.utils.startup``). Nothing is computed.
    """
    from shapepipe.modules.sextractor import _kernels as K

    # The signature the measurements use (an int32 segmentation map, int64 ranks).
    K.footprint_pixels(np.zeros((1, 1), np.int32), np.zeros(1, np.int64), 0)


def check_params(params, settings):
    """Validate the requested parameters against what is supported.

    Parameters
    ----------
    params : list of (str, tuple)
        From ``parse_param``.
    settings : SexSettings

    Raises
    ------
    SexConfigError
        Naming every unsupported parameter, or a vector longer than its configuration list.
    """
    unknown = [name for name, _ in params if name not in COLUMNS]
    if unknown:
        raise SexConfigError(
            f"unsupported output parameter(s): {', '.join(unknown)} "
            f"(supported: {', '.join(sorted(COLUMNS))})"
        )
    for name, shape in params:
        if name == "VIGNET":
            if len(shape) != 2:
                raise SexConfigError("VIGNET needs a size, e.g. VIGNET(51,51)")
        elif name in VECTOR_PARAMS:
            n = shape[0] if shape else 1
            source = VECTOR_PARAMS[name]
            available = len(settings.phot_apertures if source == "PHOT_APERTURES"
                            else settings.phot_fluxfrac)
            if len(shape) > 1 or n > available:
                raise SexConfigError(
                    f"{name}({n}) asks for more values than {source} has ({available})"
                )
        elif shape and shape != (1,):
            raise SexConfigError(f"{name} is not a vector parameter, got {name}{shape}")


def _native(array, dtype=np.float32):
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("="))


class Image:
    """One image prepared for detection or measurement.

    Parameters
    ----------
    data : numpy.ndarray
        Raw pixel values.
    settings : SexSettings
    weight : numpy.ndarray, optional
        Weight/variance/rms map as given by WEIGHT_TYPE.
    header : astropy.io.fits.Header, optional
        For GAIN_KEY / SATUR_KEY.
    owned : bool
        ``data`` is this object's to modify (bad pixels are then filled in place, without
        a full-image copy): true for arrays read from a file by ``run_sextractor``.
    """

    def __init__(self, data, settings, weight=None, header=None, owned=False):
        self.raw = _native(data)
        # Whether self.raw may be written: ours, or a converted copy of the caller's array.
        own_raw = owned or not np.may_share_memory(self.raw, data)
        self.shape = self.raw.shape
        s = settings
        wtype = s.weight_type
        if wtype.startswith("MAP_") and weight is None:
            raise SexConfigError(f"WEIGHT_TYPE {wtype} needs a weight image (WEIGHT_IMAGE)")
        if weight is not None and wtype in ("NONE", "BACKGROUND"):
            weight = None
        self.bad = None
        rel_var = None
        back_mask = None
        if weight is not None:
            w = _native(weight)
            if w.shape != self.shape:
                raise SexConfigError(
                    f"weight image shape {w.shape} differs from the image shape {self.shape}"
                )
            with np.errstate(divide="ignore", invalid="ignore"):
                if wtype == "MAP_WEIGHT":
                    thresh = 0.0 if s.weight_thresh is None else s.weight_thresh
                    self.bad = ~(w > thresh)
                    rel_var = 1.0 / w
                elif wtype == "MAP_VAR":
                    thresh = np.inf if s.weight_thresh is None else s.weight_thresh
                    self.bad = ~(w < thresh)
                    rel_var = w.copy()
                else:  # MAP_RMS
                    thresh = np.inf if s.weight_thresh is None else s.weight_thresh
                    self.bad = ~(w < thresh)
                    rel_var = w * w
            finite = np.isfinite(self.raw)
            if not finite.any():  # not the weight's fault: say what is wrong
                raise SexConfigError("the science image has no finite pixel (all NaN or inf)")
            self.bad |= ~finite
            if self.bad.all():
                raise SexConfigError("the weight image has no valid pixel")
            # SExtractor estimates the background from the weights as read, before the
            # interpolation of bad pixels.
            back_mask = self.bad.copy() if self.bad.any() else None
            if s.interp_type != "NONE" and self.bad.any():
                # rel_var is this object's own array: filled in place.
                self.raw, rel_var, self.bad = interpolate_bad(
                    self.raw, rel_var, self.bad, s.interp_maxxlag, s.interp_maxylag,
                    s.interp_type == "ALL", copy_var=False, copy_data=not own_raw)
                own_raw = own_raw or s.interp_type == "ALL"  # then a filled copy
            if self.bad.any():
                rel_var[self.bad] = 0.0
            else:
                self.bad = None
        elif not np.all(np.isfinite(self.raw)):
            self.bad = ~np.isfinite(self.raw)
            if self.bad.all():
                raise SexConfigError("the science image has no finite pixel (all NaN or inf)")
            back_mask = self.bad
        if self.bad is not None:
            if own_raw:
                self.raw[self.bad] = 0.0
            else:
                self.raw = np.where(self.bad, np.float32(0), self.raw)

        # Background: sep's mesh/median-filter estimate is SExtractor's algorithm.
        bw, bh = s.back_size
        fw, fh = s.back_filtersize
        self.bkg = sep.Background(self.raw, mask=back_mask, bw=bw, bh=bh, fw=fw, fh=fh,
                                  fthresh=s.back_filtthresh)
        self.backsig = float(self.bkg.globalrms)
        if s.back_type == "MANUAL":
            self.back = np.full(self.shape, s.back_value, dtype=np.float32)
            self.back_level = float(s.back_value)
        else:
            self.back = self.bkg.back(dtype=np.float32)
            self.back_level = float(self.bkg.globalback)
        self.sub = self.raw - self.back
        if self.bad is not None:
            self.sub[self.bad] = 0.0

        # Per-pixel variance in image units (SExtractor rescales relative weights so that
        # they match the background noise measured on the image).
        if rel_var is not None:
            if wtype in ("MAP_WEIGHT", "MAP_VAR") and s.rescale_weights:
                good = rel_var[::7, ::7]
                good = good[good > 0]
                if good.size == 0:
                    raise SexConfigError("the weight image has no valid pixel")
                scale = self.backsig**2 / float(np.median(good))
                rel_var *= np.float32(scale)
            self.var = rel_var.astype(np.float32, copy=False)
            self.var_is_map = True
        elif wtype == "BACKGROUND":
            self.var = self.bkg.rms(dtype=np.float32) ** 2
            self.var_is_map = True
        else:
            self.var = np.float32(self.backsig**2)
            self.var_is_map = False
        if self.var_is_map:
            vals = self.var[::7, ::7]
            vals = vals[vals > 0]
            self.backsig = float(np.sqrt(np.median(vals))) if vals.size else self.backsig

        self.gain = float(s.gain)
        if self.gain <= 0 and header is not None and s.gain_key in header:
            self.gain = float(header[s.gain_key])
        self.satur = float(s.satur_level)
        if header is not None and s.satur_key in header:
            self.satur = float(header[s.satur_key])

    def rms(self):
        """Per-pixel noise standard deviation (array or scalar)."""
        return np.sqrt(self.var)


def interpolate_bad(data, var, bad, xlag, ylag, data_too=True, copy_var=True,
                    copy_data=True):
    """SExtractor's crude interpolation of bad (zero-weight) pixels (INTERP_TYPE).

    Along each row, a bad pixel takes the value of the last good pixel on its left if that
    one is at most ``xlag`` pixels away; otherwise the value of the pixel above (itself
    possibly filled) if the last usable pixel above is at most ``ylag`` rows away. The
    variance is always filled; the data only with INTERP_TYPE ALL. Filled pixels are no
    longer bad, as in SExtractor.

    ``copy_var=False`` / ``copy_data=False`` fill ``var`` / ``data`` in place (no copy of a
    full-image array).

    Returns
    -------
    data, var : numpy.ndarray
        Filled copies (the arrays themselves when not copied).
    bad : numpy.ndarray of bool
        Pixels still bad.
    """
    ny, nx = bad.shape
    data = data.copy() if data_too and copy_data else data
    if copy_var:
        var = var.copy()
    # Runs of consecutive bad pixels along rows, from the flat indices (O(number of bad)).
    idx = np.flatnonzero(bad)
    col = idx % nx
    new_run = np.ones(idx.size, dtype=bool)
    new_run[1:] = (idx[1:] != idx[:-1] + 1) | (col[1:] == 0)
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(idx.size), 0))
    lag = np.arange(idx.size) - run_start + 1
    src = idx[run_start] - 1  # the good pixel left of the run
    xfill = (col[run_start] > 0) & (lag <= xlag)
    fill_idx = idx[xfill]
    var.ravel()[fill_idx] = var.ravel()[src[xfill]]
    if data_too:
        data.ravel()[fill_idx] = data.ravel()[src[xfill]]
    still = bad.copy()
    still.ravel()[fill_idx] = False
    if still.any():
        # Vertical fill from the nearest usable pixel above (within ylag rows).
        cols_b = np.flatnonzero(still.any(axis=0))
        sb = still[:, cols_b]
        ridx = np.arange(ny, dtype=np.int32)[:, None]
        above = np.maximum.accumulate(np.where(sb, np.int32(-1), ridx), axis=0)
        yfill = sb & (above >= 0) & (ridx - above <= ylag)
        r_idx, c_idx = np.nonzero(yfill)
        cc = cols_b[c_idx]
        var[r_idx, cc] = var[above[r_idx, c_idx], cc]
        if data_too:
            data[r_idx, cc] = data[above[r_idx, c_idx], cc]
        still[r_idx, cc] = False
    return data, var, still


class MeasuredSources:
    """Detections of one image and their lazily computed measurements."""

    def __init__(self, meas, det, settings, kernel, flag=None, header=None, wcs=None):
        self.meas = meas
        self.det = det
        self.s = settings
        self.flag_image = flag
        self.header = header
        self.wcs = wcs
        self._cache = {}
        s = settings
        if s.thresh_type == "RELATIVE":
            thresh = s.detect_thresh
            noise = det.var if det.var_is_map else None
            err = None if det.var_is_map else np.sqrt(float(det.var))
        else:
            thresh, noise, err = s.detect_thresh, None, None
        kern = kernel if (s.filter and kernel is not None) else None
        self._kernel = kern
        # The detection threshold for the blanking mask of the measurements: per pixel,
        # thresh * sqrt(var) (computed in the mask's loop), or a scalar.
        if s.thresh_type == "RELATIVE" and det.var_is_map:
            self._thresh = (float(thresh), True)
        else:
            self._thresh = (float(np.float32(thresh * err if s.thresh_type == "RELATIVE"
                                             else thresh)), False)
        sep.set_extract_pixstack(max(300000, det.raw.size // 4))
        sep.set_sub_object_limit(4096)
        objs, seg = sep.extract(
            det.sub, thresh, err=err, var=noise, mask=det.bad, minarea=s.detect_minarea,
            filter_kernel=kern, filter_type="conv", deblend_nthresh=s.deblend_nthresh,
            deblend_cont=s.deblend_mincont, clean=s.clean, clean_param=s.clean_param,
            segmentation_map=True,
        )
        keep = np.ones(len(objs), dtype=bool)
        if s.detect_maxarea > 0:
            keep &= objs["npix"] <= s.detect_maxarea
        # Objects with a degenerate second-moment ellipse cannot be measured by aperture.
        keep &= np.isfinite(objs["a"]) & np.isfinite(objs["b"]) & (objs["b"] > 0)
        # SExtractor numbers objects in order of completion (top of the image last);
        # sort by the lowest row touched, then x, to be close to that order. The
        # segmentation map keeps sep's ids (renumbering it costs a full-image pass):
        # ``seg_ids`` maps our order to them and ``rank`` back.
        kept = np.flatnonzero(keep)
        order = kept[np.lexsort((objs["x"][kept], objs["ymax"][kept]))]
        self.seg_ids = (order + 1).astype(np.int32)
        self.rank = np.full(len(objs) + 1, -1, dtype=np.int64)
        self.rank[self.seg_ids] = np.arange(len(order))
        objs = objs[order]
        self.objs = objs
        self.seg = seg
        self.n = len(objs)
        self.ids = np.arange(1, self.n + 1, dtype=np.int32)
        self.x = objs["x"].astype(np.float64)
        self.y = objs["y"].astype(np.float64)
        self.a = objs["a"].astype(np.float64)
        self.b = objs["b"].astype(np.float64)
        # float32 pi/2 is above float64 pi/2: sep's aperture checks want [-pi/2, pi/2].
        self.theta = np.clip(objs["theta"].astype(np.float64), -np.pi / 2, np.pi / 2)
        self.flags = np.zeros(self.n, dtype=np.int16)
        sflag = objs["flag"]
        self.flags[(sflag & sep.OBJ_MERGED) != 0] |= F_MERGED
        self.flags[(sflag & sep.OBJ_TRUNC) != 0] |= F_TRUNC
        self.flags[(sflag & sep.OBJ_DOVERFLOW) != 0] |= F_DOVERFLOW

    def numbered_segmentation(self):
        """Segmentation map with the catalogue's NUMBER values (0: background)."""
        lut = np.zeros(len(self.rank), dtype=np.int32)
        good = self.rank >= 0
        lut[good] = self.rank[good] + 1
        lut[0] = 0
        return lut[self.seg]

    # ---------------------------------------------------------------- helpers
    def _cached(self, name, func):
        if name not in self._cache:
            self._cache[name] = func()
        return self._cache[name]

    # ----------------------------------------------------------- pixel lists
    def pixels(self):
        """Footprint pixels sorted by object: (starts, object index per pixel, flat index)."""

        def compute():
            from shapepipe.modules.sextractor import _kernels as K

            return K.footprint_pixels(self.seg, self.rank, self.n)

        return self._cached("pixels", compute)

    def iso(self):
        """Isophotal quantities on the measurement image (SExtractor's examineiso)."""

        def compute():
            starts, oid, idx = self.pixels()
            img = self.meas
            pix = img.sub.ravel()[idx].astype(np.float64)
            raw = img.raw.ravel()[idx]
            if img.var_is_map:
                var = img.var.ravel()[idx].astype(np.float64)
            else:
                var = np.full(idx.size, float(img.var))
            n = self.n
            if self.s.thresh_type == "RELATIVE":
                thr = self.s.analysis_thresh * np.sqrt(var)
            else:
                thr = np.full(idx.size, self.s.analysis_thresh)
            area = np.bincount(oid, weights=(pix > thr), minlength=n).astype(np.int32)
            flux = np.bincount(oid, weights=pix, minlength=n)
            sig2 = np.bincount(oid, weights=var, minlength=n)
            if img.gain > 0:
                sig2 = sig2 + np.where(flux > 0, flux / img.gain, 0.0)
            empty = starts >= idx.size
            safe = np.minimum(starts, max(idx.size - 1, 0))
            peak = np.maximum.reduceat(pix, safe) if idx.size else np.zeros(n)
            peak[empty] = 0.0
            minthr = np.minimum.reduceat(thr, safe) if idx.size else np.zeros(n)
            # THRESHOLD is the detection threshold: same scaling with DETECT_THRESH.
            detthr = minthr * (self.s.detect_thresh / self.s.analysis_thresh)
            rawmax = np.maximum.reduceat(raw, safe) if idx.size else np.zeros(n)
            satur = (rawmax >= img.satur) & ~empty
            self.flags[satur] |= F_SATUR
            return {"area": area, "flux": flux, "fluxerr": np.sqrt(sig2), "peak": peak,
                    "thresh": minthr, "detect_thresh": detthr, "pix": pix, "oid": oid, "idx": idx}

        return self._cached("iso", compute)

    def fwhm(self):
        """FWHM from a Gaussian fit of log(pixel) vs r^2 (SExtractor's examineiso)."""

        def compute():
            it = self.iso()
            pix, oid, idx = it["pix"], it["oid"], it["idx"]
            nx = self.meas.shape[1]
            py, px = np.divmod(idx, nx)
            thresh0 = np.maximum(it["peak"] / 5.0, it["thresh"])
            back_at = self.background()
            sat = self.meas.satur - back_at
            use = (pix > thresh0[oid]) & (pix < sat[oid]) & (thresh0[oid] > 0)
            o = oid[use]
            p = pix[use]
            d2 = (px[use] - self.x[o]) ** 2 + (py[use] - self.y[o]) ** 2
            lp = np.log(p)
            w = p * p
            n = self.n
            s = np.bincount(o, w, n)
            sx = np.bincount(o, d2 * w, n)
            sxx = np.bincount(o, d2 * d2 * w, n)
            sy = np.bincount(o, lp * w, n)
            sxy = np.bincount(o, lp * d2 * w, n)
            d = s * sxx - sx * sx
            ok = (np.abs(d) > 0) & (thresh0 > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                b = -(s * sxy - sx * sy) / d
                bmax = 1.0 / (13.0 * self.a * self.b)
                b = np.where(b < bmax, bmax, b)
                fwhm = 1.6651 / np.sqrt(b)
                fwhm = np.where(fwhm > 0, fwhm - 1.0 / (4.0 * fwhm), fwhm)
            return np.where(ok, fwhm, 0.0)

        return self._cached("fwhm", compute)

    # ------------------------------------------------------------ photometry
    def background(self):
        def compute():
            ny, nx = self.meas.shape
            ix = np.clip((self.x + 0.5).astype(int), 0, nx - 1)
            iy = np.clip((self.y + 0.5).astype(int), 0, ny - 1)
            return self.meas.back[iy, ix].astype(np.float64)

        return self._cached("background", compute)

    def _kernel_args(self):
        """Arrays shared by the compiled measurement loops (see ``_kernels``)."""

        def compute():
            img = self.meas
            # One mask read per pixel in the loops: bit 1 blanked, bit 2 bad.
            mask = self.blank()
            var = img.var if img.var_is_map else np.zeros((1, 1), dtype=np.float32)
            return {"sub": img.sub, "var": var, "has_var": bool(img.var_is_map),
                    "mask": mask, "seg": self.seg,
                    "own": self.seg_ids, "corr": self.s.mask_type == "CORRECT",
                    "gain": float(img.gain), "backvar": float(img.backsig) ** 2}

        return self._cached("kernel_args", compute)

    def blank(self):
        """The measurement mask: bit 1 blanked as by SExtractor, bit 2 bad pixels.

        Bit 1: the pixels SExtractor blanks before measuring (MASK_TYPE BLANK or CORRECT);
        bit 2: the image's unusable pixels (zero weight, non-finite).

        SExtractor replaces every pixel detected above the threshold in the filtered
        detection image by -BIG while it scans, then pastes an object's own pixels back
        while it measures that object: neighbours, and detections too small to be objects,
        are masked. The pixels of objects removed by CLEAN are pasted back, except those
        on their top row: SExtractor blanks each row one row late (the filter still needs
        it), after the paste-back. (When the CLEANed object completed before the one that
        absorbed it, that row is pasted back too; which object absorbed which is not known
        here, and blanking it always agrees best with SExtractor on M13 and comp.fits.)
        A pixel of this mask is unusable for an object unless it belongs to that object's
        footprint in the segmentation map.
        """

        def compute():
            from shapepipe.modules.sextractor import _kernels as K

            det = self.det
            kernel = (np.ones((1, 1)) if self._kernel is None
                      else np.asarray(self._kernel, dtype=np.float64))
            thr, has_map = self._thresh
            bad = self.meas.bad
            mask, orphan, idx = K.detection_mask(
                det.sub, kernel, thr, det.var if has_map else np.zeros((1, 1), np.float32),
                has_map, self.seg,
                bad.view(np.uint8) if bad is not None else np.zeros((1, 1), np.uint8),
                bad is not None, self.s.mask_type != "NONE")
            if idx.size:
                ys, xs = np.divmod(idx, det.shape[1])
                seg_ymax = np.zeros(len(self.rank), dtype=np.int64)
                seg_ymax[self.seg_ids] = self.objs["ymax"]
                K.blank_orphans(mask, orphan, self.seg, seg_ymax, ys, xs,
                                int(self.s.detect_minarea))
            return mask

        return self._cached("blank", compute)

    def auto(self):
        """Kron factor and FLUX_AUTO (SExtractor's computeautoflux, compiled)."""

        def compute():
            from shapepipe.modules.sextractor import _kernels as K

            k = self._kernel_args()
            o = self.objs
            kron_fact, kron_min = self.s.phot_autoparams
            kron, flux, fluxerr, flags = K.auto_flux(
                k["sub"], k["var"], k["has_var"], k["mask"], k["seg"], k["own"],
                self.x, self.y, self.a, self.b, o["cxx"].astype(np.float64),
                o["cyy"].astype(np.float64), o["cxy"].astype(np.float64), float(kron_fact),
                float(kron_min), k["corr"], k["gain"], k["backvar"])
            self.flags |= flags
            return {"flux": flux, "fluxerr": fluxerr, "kron": kron}

        return self._cached("auto", compute)

    def aper(self):
        """Fixed circular apertures (diameters PHOT_APERTURES), 5x5 sub-sampled edges."""

        def compute():
            from shapepipe.modules.sextractor import _kernels as K

            k = self._kernel_args()
            fluxes, errs = [], []
            for d in self.s.phot_apertures:
                f, e, flags = K.aper_flux(
                    k["sub"], k["var"], k["has_var"], k["mask"], k["seg"],
                    k["own"], self.x, self.y, float(d) / 2.0, k["corr"], k["gain"],
                    k["backvar"])
                self.flags |= flags
                fluxes.append(f)
                errs.append(e)
            return np.stack(fluxes, axis=1), np.stack(errs, axis=1)

        return self._cached("aper", compute)

    def _growth(self):
        def compute():
            from shapepipe.modules.sextractor import _kernels as K

            k = self._kernel_args()
            fracs = np.asarray(self.s.phot_fluxfrac, dtype=np.float64)
            radii, hl, flags = K.growth_radii(
                k["sub"], k["mask"], k["seg"], k["own"], self.x, self.y, self.a,
                self.auto()["flux"], fracs, 0.0, k["corr"])
            self.flags |= flags
            return radii, hl

        return self._cached("growth", compute)

    def flux_radius(self):
        """Fraction-of-light radii from the growth curve normalised to FLUX_AUTO."""
        return self._growth()[0]

    def hl_radius(self):
        """Half-light radius as SExtractor uses it for the windowed measurements."""
        return self._growth()[1]

    def win(self):
        """Windowed positions, fluxes and moments (SExtractor's compute_winpos, compiled).

        The Gaussian window has sigma = 2 * half-light radius / 2.35 and is cut at 4 sigma
        (11x11 sub-sampled edge); the centroid moves by twice the weighted offset for up
        to 16 iterations, stopping when the step is below 1e-4 px or the windowed flux is
        not positive. An estimate that jumps out of the object's 1-sigma footprint
        ellipse, or has a non-positive flux or moments, is replaced by the isophotal
        position, as SExtractor does.
        """

        def compute():
            from shapepipe.modules.sextractor import _kernels as K

            k = self._kernel_args()
            o = self.objs
            sig = self.hl_radius() * 2.0 / 2.35
            out, niter, wflag, flags = K.win_pos(
                k["sub"], k["var"], k["has_var"], k["mask"], k["seg"], k["own"],
                self.x, self.y, sig, o["cxx"].astype(np.float64), o["cyy"].astype(np.float64),
                o["cxy"].astype(np.float64), k["corr"], k["gain"], k["backvar"])
            self.flags |= flags
            esum = out[:, 3]
            with np.errstate(divide="ignore", invalid="ignore"):
                snr = np.where(esum > 1.0 / BIG, out[:, 2] / np.sqrt(esum), BIG)
            return {"x": out[:, 0], "y": out[:, 1], "flux": out[:, 2],
                    "fluxerr": np.sqrt(esum), "snr": snr, "x2": out[:, 4], "y2": out[:, 5],
                    "xy": out[:, 6], "niter": niter, "flag": wflag}

        return self._cached("win", compute)

    def pixel_scale(self, what):
        """Arcsec per pixel: PIXEL_SCALE, or from the WCS when it is 0 (as SExtractor)."""
        scale = self.s.pixel_scale
        if scale <= 0:
            if self.wcs is None:
                raise SexConfigError(f"{what} with PIXEL_SCALE 0 needs a WCS in the image "
                                     "header")
            from astropy.wcs.utils import proj_plane_pixel_scales

            scale = float(np.sqrt(np.prod(proj_plane_pixel_scales(self.wcs.celestial)))) \
                * 3600.0
        return scale

    def class_star(self):
        """CLASS_STAR from SExtractor's neural network (STARNNW_NAME, SEEING_FWHM)."""
        from shapepipe.modules.sextractor import classify

        s = self.s
        if not s.starnnw_name:
            raise SexConfigError("CLASS_STAR needs STARNNW_NAME (e.g. "
                                 "/usr/share/source-extractor/default.nnw)")
        if s.seeing_fwhm <= 0:
            raise SexConfigError(f"CLASS_STAR needs SEEING_FWHM > 0 (arcsec), got "
                                 f"{s.seeing_fwhm:g} (a PSF model is not supported)")
        try:
            brain = classify.read_nnw(s.starnnw_name)
        except classify.NNWError as exc:
            raise SexConfigError(str(exc)) from None
        it = self.iso()
        areas = classify.iso_areas(it["pix"], it["oid"], it["peak"], it["thresh"], self.n)
        if s.thresh_type == "RELATIVE":
            field_thresh = s.analysis_thresh * self.meas.backsig
        else:
            field_thresh = s.analysis_thresh
        return classify.class_star(brain, areas, it["peak"], field_thresh, s.seeing_fwhm,
                                   self.pixel_scale("CLASS_STAR"))

    def imaflags(self):
        """OR of the flag-image values over each footprint, and the count of flagged pixels."""

        def compute():
            n = self.n
            if self.flag_image is None:
                return np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32)
            starts, oid, idx = self.pixels()
            fv = np.asarray(self.flag_image).ravel()[idx].astype(np.int64)
            out = np.zeros(n, dtype=np.int64)
            nz = fv != 0
            fvn, on = fv[nz], oid[nz]
            count = np.bincount(on, minlength=n).astype(np.int32)
            bits = np.bitwise_or.reduce(fvn) if fvn.size else 0
            b = 1
            while bits and b <= bits:
                if bits & b:
                    hit = np.unique(on[(fvn & b) != 0])
                    out[hit] |= b
                b <<= 1
            return out.astype(np.int32), count

        return self._cached("imaflags", compute)

    def vignet(self, shape):
        """Stamps of the background-subtracted image around each object (masked: -1e30)."""
        h, w = shape
        img = self.meas
        # SExtractor centres vignets on the pixel nearest to the isophotal barycenter.
        ix = (self.x + 0.49999).astype(int)
        iy = (self.y + 0.49999).astype(int)
        ny, nx = img.shape
        out = np.empty((self.n, h, w), dtype=np.float32)
        y0 = iy - h // 2
        x0 = ix - w // 2
        full = (x0 >= 0) & (x0 + w <= nx) & (y0 >= 0) & (y0 + h <= ny)
        src = img.sub
        if img.bad is not None:
            src = np.where(img.bad, np.float32(-BIG), img.sub)
        if h <= ny and w <= nx and full.any():
            windows = np.lib.stride_tricks.sliding_window_view(src, (h, w))
            out[full] = windows[y0[full], x0[full]]
        edge = np.flatnonzero(~full)
        if edge.size:
            rows = y0[edge, None] + np.arange(h)[None, :]
            cols = x0[edge, None] + np.arange(w)[None, :]
            valid = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[
                :, None, :]
            part = src[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
            out[edge] = np.where(valid, part, np.float32(-BIG))
        return out

    # ------------------------------------------------------------- world coords
    def world(self, x, y):
        """Pixel (0-based) -> world coordinates with the image WCS."""
        if self.wcs is None:
            raise SexConfigError("world coordinates requested but the image has no WCS")
        ra, dec = self.wcs.all_pix2world(x, y, 0)
        return np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64)


def _mag(flux, err, zp):
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, zp - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), 99.0)
        magerr = np.where(flux > 0, 1.086 * err / np.where(flux > 0, flux, 1.0), 99.0)
    return mag, magerr


def compute_columns(cat, params):
    """Compute the requested parameters.

    Parameters
    ----------
    cat : MeasuredSources
    params : list of (str, tuple)

    Returns
    -------
    list of (name, numpy.ndarray, shape)
        One entry per parameter, in ``params`` order. FLAGS is computed last so that every
        measurement has had the chance to set its bits.
    """
    s = cat.s
    zp = s.mag_zeropoint
    values = {}
    names = [name for name, _ in params]

    def get(name, shape):
        o = cat.objs
        if name == "NUMBER":
            return cat.ids
        if name in ("X_IMAGE", "Y_IMAGE"):
            return numpy_to_fits(cat.x if name[0] == "X" else cat.y)
        if name in ("XWIN_IMAGE", "YWIN_IMAGE"):
            w = cat.win()
            return numpy_to_fits(w["x"] if name[0] == "X" else w["y"])
        if name in ("X_WORLD", "Y_WORLD", "ALPHA_J2000", "DELTA_J2000"):
            ra, dec = cat._cached("world", lambda: cat.world(cat.x, cat.y))
            return ra if name in ("X_WORLD", "ALPHA_J2000") else dec
        if name in ("XWIN_WORLD", "YWIN_WORLD", "ALPHAWIN_J2000", "DELTAWIN_J2000"):
            w = cat.win()
            ra, dec = cat._cached("worldwin", lambda: cat.world(w["x"], w["y"]))
            return ra if name in ("XWIN_WORLD", "ALPHAWIN_J2000") else dec
        simple = {"X2_IMAGE": "x2", "Y2_IMAGE": "y2", "XY_IMAGE": "xy", "CXX_IMAGE": "cxx",
                  "CYY_IMAGE": "cyy", "CXY_IMAGE": "cxy", "A_IMAGE": "a", "B_IMAGE": "b",
                  "ERRX2_IMAGE": "errx2", "ERRY2_IMAGE": "erry2", "ERRXY_IMAGE": "errxy"}
        if name in simple:
            return o[simple[name]]
        if name == "THETA_IMAGE":
            return np.degrees(cat.theta)
        if name in ("ERRA_IMAGE", "ERRB_IMAGE", "ERRTHETA_IMAGE"):
            ex2, ey2, exy = o["errx2"], o["erry2"], o["errxy"]
            t = np.sqrt(0.25 * (ex2 - ey2) ** 2 + exy**2)
            if name == "ERRA_IMAGE":
                return np.sqrt(np.maximum(0.5 * (ex2 + ey2) + t, 0))
            if name == "ERRB_IMAGE":
                return np.sqrt(np.maximum(0.5 * (ex2 + ey2) - t, 0))
            return np.degrees(np.where(ex2 != ey2, np.arctan2(2 * exy, ex2 - ey2) / 2,
                                       np.pi / 4))
        if name == "ELONGATION":
            return cat.a / cat.b
        if name == "ELLIPTICITY":
            return 1.0 - cat.b / cat.a
        if name in ("FLUX_AUTO", "FLUXERR_AUTO", "MAG_AUTO", "MAGERR_AUTO"):
            au = cat.auto()
            if name == "FLUX_AUTO":
                return au["flux"]
            if name == "FLUXERR_AUTO":
                return au["fluxerr"]
            mag, magerr = _mag(au["flux"], au["fluxerr"], zp)
            return mag if name == "MAG_AUTO" else magerr
        if name == "KRON_RADIUS":
            return cat.auto()["kron"]
        if name in ("FLUX_APER", "FLUXERR_APER", "MAG_APER", "MAGERR_APER"):
            f, e = cat.aper()
            n = shape[0] if shape else 1
            f, e = f[:, :n], e[:, :n]
            if name == "FLUX_APER":
                return f
            if name == "FLUXERR_APER":
                return e
            mag, magerr = _mag(f, e, zp)
            return mag if name == "MAG_APER" else magerr
        if name in ("FLUX_ISO", "FLUXERR_ISO", "MAG_ISO", "MAGERR_ISO"):
            it = cat.iso()
            if name == "FLUX_ISO":
                return it["flux"]
            if name == "FLUXERR_ISO":
                return it["fluxerr"]
            mag, magerr = _mag(it["flux"], it["fluxerr"], zp)
            return mag if name == "MAG_ISO" else magerr
        if name in ("FLUX_WIN", "FLUXERR_WIN", "MAG_WIN", "MAGERR_WIN", "SNR_WIN"):
            w = cat.win()
            if name == "FLUX_WIN":
                return w["flux"]
            if name == "FLUXERR_WIN":
                return w["fluxerr"]
            if name == "SNR_WIN":
                return w["snr"]
            mag, magerr = _mag(w["flux"], w["fluxerr"], zp)
            return mag if name == "MAG_WIN" else magerr
        if name == "FLUX_MAX":
            return cat.iso()["peak"]
        if name in ("XPEAK_IMAGE", "YPEAK_IMAGE"):
            return (o["xcpeak"] if name[0] == "X" else o["ycpeak"]).astype(np.int32) + 1
        if name == "FLUX_RADIUS":
            r = cat.flux_radius()
            n = shape[0] if shape else 1
            return r[:, :n] if shape else r[:, 0]
        if name == "FWHM_IMAGE":
            return cat.fwhm()
        if name == "FWHM_WORLD":
            return cat.fwhm() * cat.pixel_scale(name) / 3600.0
        if name == "CLASS_STAR":
            return cat.class_star()
        if name in ("IMAFLAGS_ISO", "NIMAFLAGS_ISO"):
            f, c = cat.imaflags()
            return f if name == "IMAFLAGS_ISO" else c
        if name == "BACKGROUND":
            return cat.background()
        if name == "THRESHOLD":
            return cat.iso()["detect_thresh"]
        if name == "ISOAREA_IMAGE":
            return cat.iso()["area"]
        if name == "ISOAREAF_IMAGE":
            return o["npix"]
        if name == "VIGNET":
            return cat.vignet(shape)
        raise SexConfigError(f"unsupported output parameter {name}")  # pragma: no cover

    for name, shape in params:
        if name != "FLAGS":
            values[name] = get(name, shape)
    if "FLAGS" in names:
        # Measurements that set bits must have run: AUTO (crowding), iso (saturation).
        cat.auto()
        cat.iso()
        values["FLAGS"] = cat.flags
    return [(name, values[name], shape) for name, shape in params]
