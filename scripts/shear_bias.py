#!/usr/bin/env python
"""Shear calibration of the whole pipeline: m and c of the catalogues it produces.

Simulates K paired fields (shear +g and -g: same objects, intrinsic shapes and noise; a fresh
seed per field), runs ``example/config_exp.ini`` then ``example/config_tile.ini`` on every
half, reads the final catalogues (``final_cat-<tile>.fits``), applies the standard cuts
(flags, S/N, T/Tpsf, SPREAD_CLASS) and measures the mean shear with the metacal shear
response plus the selection response (cuts redone on the sheared quantities). Detection,
blending, the PSF model, the WCS and the selection are all in the loop.

Per component, the paired estimate of the multiplicative bias is ``R^-1 (<g+> - <g->) / (2 g) - 1``
and of the additive bias ``R^-1 (<g+> + <g->) / 2``, with one response ``R`` (metacal plus
selection) averaged over both halves; the figures combine the fields' sums and take their errors
from a jackknife over skies. By default field 2i+1 is field 2i's sky with every intrinsic shape
turned by 90 degrees (``--rotated-twins``), so the shape noise cancels in c as it does in m;
its noise array is the sky's with the sign flipped (``--twin-noise negated``), so that the
first-order noise terms cancel there too. The simulated shear moves the galaxies too
(``--scene-shear groups``): galaxies closer than 4" are sheared about their group's centre, so
blends respond to the shear as in a lensed scene (as metacal assumes), while an isolated
galaxy stays on the same pixel noise in both halves (a field-wide scene shear, ``field``,
moves every galaxy onto other noise and loses the pairing; E1-E3 sheared the shapes only:
``none``).
Optional leakage fields add a mean PSF shear to every focal plane; the PSF leakage is
``alpha = (c_leak - c) / (psf_leak - psf)`` with the mean PSF shears measured on the selected
galaxies (``NGMIX_ELL_PSFo_NOSHEAR``).

``--method metadetect`` measures with metadetection instead (Sheldon et al. 2020): the tile
chain is mask, SExtractor, PSF interpolation and ``metadetect_runner``, which shears the whole
coadd (noshear, 1p, 1m, 2p, 2m), detects and measures on each image and writes
``metadetect_cat-<tile>.fits``. Each step's rows are cut on their own values (MDET_FLAGS == 0,
MASK_FLAGS == 0, MDET_S2N > ``--snr-min``, MDET_T_RATIO > ``--t-ratio-min``) and the response
is the difference of the steps' means, ``R11 = (<G1>_1p - <G1>_1m) / (2 step)`` (R22 from 2p,
2m): detection, deblending and selection are inside it. Halves and fields combine by their
sums; m, c and alpha then follow as above (PSF shear: PSF_G1, PSF_G2 of the noshear rows).
The per-object response check of metacal does not apply.

Resumable: a field's data and each half's runs are kept in ``--output`` and not redone.

    python scripts/shear_bias.py --output DIR [--seed N] [--fields K] [--leakage-fields L]
        [--processes N] [--model psf_model|psfex] [--method metacal|metadetect]
        [--shear G] [--psf-g-offset G1,G2]
        [--full] [--report [--round-cuts] [--spread-class C] [--compare DIR]]

Writes ``DIR/shear_bias.json`` and ``DIR/shear_bias.png`` (m by S/N and by size, per-field m).
A figure of record fixes ``--seed``, ``--fields`` and ``--leakage-fields`` before it runs
(DESIGN.md section 12).
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
from astropy.io import fits

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import shear_validation as sv  # noqa: E402

from shapepipe.modules.metadetect.shear import STEPS as MDET_STEPS  # noqa: E402
from shapepipe.modules.metadetect.shear import default_cuts, shear_from_sums  # noqa: E402
from shapepipe.utils.atomic import atomic_path, write_text  # noqa: E402

HALVES = ("plus", "minus")
SNR_BINS = (10.0, 15.0, 25.0, 50.0, 1e9)
SIZE_BINS = (0.5, 0.8, 1.2, 2.0, 1e9)  # T / Tpsf
METHODS = ("metacal", "metadetect")
#: The catalogue each method's tile chain ends with (``<prefix>-<tile>.fits``).
CATALOGUE_PREFIX = {"metacal": "final_cat", "metadetect": "metadetect_cat"}
#: metadetect's tile chain: it detects and measures on its own sheared images, so the
#: SExtractor catalogue is needed only for the PSF (psfex_interp_runner) and the masks.
MDET_MODULES = "mask_runner, sextractor_runner, psfex_interp_runner, metadetect_runner"
#: Columns of metadetect_runner's HDU METADETECT read here.
MDET_COLUMNS = ("MDET_STEP", "RA", "DEC", "MDET_FLAGS", "MASK_FLAGS", "MDET_S2N",
                "MDET_T_RATIO", "MDET_T_RATIO_ERR", "MDET_G1", "MDET_G2", "PSF_G1", "PSF_G2")


def _pair(text):
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected two numbers A,B") from exc
    return a, b


def field_seed(seed, index):
    """The survey seed of field ``index``: fresh for every field, fixed by ``seed``."""
    return int(seed) * 1000 + int(index)


def write_configs(out_dir, model, processes, seed_by="position", seed_scene_shear=None,
                  mask_neighbours=True, method="metacal", mdet_step=None):
    """Copies of the example configs with the PSF model, the worker count and the seeding chosen.

    Config files are data: only these keys are replaced, by line. ``seed_by="position"`` sets
    ngmix_runner's ``SEED_BY = POSITION``: an object gets the same metacal noise in both
    halves of a field (common random numbers), whatever its detection number there. With a
    sheared scene the halves' positions differ: ``seed_scene_shear = (g1, g2, ra0, dec0)``,
    the half's own shear and centre, sets ``SEED_SCENE_SHEAR`` so that the cells are taken
    at the unsheared positions. ``mask_neighbours=False`` sets ``MASK_NEIGHBOURS = False``
    (a diagnostic: how much of a bias the neighbour masks make). ``method="metadetect"`` sets
    the tile chain's MODULE line to ``MDET_MODULES`` (the config must have a
    ``[METADETECT_RUNNER]`` section); ``mdet_step`` then replaces its STEP (the shear of
    the sheared images).
    """
    os.makedirs(out_dir, exist_ok=True)
    psf_dir = {"psf_model": "last:psf_model_runner", "psfex": "last:psfex_runner"}[model]
    paths = {}
    # PSFEx runs after the exposure chain, on its star selection (as run_example.sh --psfex).
    names = ("config_exp.ini",) + (("config_exp_psfex.ini",) if model == "psfex" else ()) \
        + ("config_tile.ini",)
    for name in names:
        with open(os.path.join(ROOT, "example", name), encoding="utf-8") as handle:
            text = handle.read()
        text = re.sub(r"(?im)^SMP_BATCH_SIZE\s*=.*$", f"SMP_BATCH_SIZE = {processes}", text)
        if name == "config_tile.ini":
            text = re.sub(r"(?im)^ME_DOT_PSF_DIR\s*=.*$", f"ME_DOT_PSF_DIR = {psf_dir}", text)
            line = f"SEED_BY = {seed_by.upper()}"
            if seed_scene_shear is not None:
                line += "\nSEED_SCENE_SHEAR = " + ", ".join(f"{v:.10g}" for v in seed_scene_shear)
            if not mask_neighbours:
                line += "\nMASK_NEIGHBOURS = False"
            text, n = re.subn(r"(?im)^SEED_BY\s*=.*$", line, text)
            if n != 1:
                raise SystemExit(f"{name}: expected one SEED_BY line in [NGMIX_RUNNER], "
                                 f"found {n}")
            if method == "metadetect":
                text = _metadetect_chain(text, name)
                if mdet_step is not None:
                    text, n = re.subn(r"(?im)^STEP\s*=.*$", f"STEP = {mdet_step:g}", text)
                    if n != 1:
                        raise SystemExit(f"{name}: expected one STEP line in "
                                         f"[METADETECT_RUNNER], found {n}")
        path = os.path.join(out_dir, name)
        write_text(text, path)
        paths[name] = path
    return paths


def _metadetect_chain(text, name):
    """The tile config ``text`` with its MODULE line (and continuation lines) set to
    ``MDET_MODULES``; SystemExit naming ``name`` without exactly one such line or without a
    ``[METADETECT_RUNNER]`` section."""
    if not re.search(r"(?im)^\[METADETECT_RUNNER\][ \t]*$", text):
        raise SystemExit(f"{name}: no [METADETECT_RUNNER] section (--method metadetect runs "
                         "metadetect_runner with that section's keys)")
    # A configparser value continues on the following indented lines.
    text, n = re.subn(r"(?im)^MODULE[ \t]*=.*(?:\n[ \t]+\S.*)*$", "MODULE = " + MDET_MODULES,
                      text)
    if n != 1:
        raise SystemExit(f"{name}: expected one MODULE line in [EXECUTION], found {n}")
    return text


def find_catalogues(path, method="metacal"):
    """The final catalogues of ``method`` under a run directory (any depth), sorted; the
    runner's optional PREFIX (``<prefix>_metadetect_cat-<tile>.fits``) is allowed."""
    if method == "metacal":
        return sv.find_final_catalogues(path)
    return sorted(glob.glob(os.path.join(path, "**", f"*{CATALOGUE_PREFIX[method]}-*.fits"),
                            recursive=True))


def run_field(field_dir, seed, shear, psf_g_offset, configs, processes, full, log,
              rotated=False, scene_shear="none", negate_noise=False, method="metacal",
              faint_star_density=None):
    """Simulate one paired field and run both chains on each half (skipping what is done).

    ``configs`` is ``{name: path}``, or a callable ``configs(survey_json) -> {name: path}``
    for configs that depend on the half (its shear and shear centre). ``faint_star_density``
    (per arcmin^2, stars fainter than r = 21) replaces the default survey's faint stars.
    """
    import dataclasses

    from shapepipe.sim import full_params, make_survey, small_params

    data = os.path.join(field_dir, "data")
    if not os.path.isfile(os.path.join(data, "minus", "truth", "survey.json")):
        log(f"  simulating {data} (seed {seed}{', shapes rotated' if rotated else ''}"
            f"{', noise negated' if negate_noise else ''})")
        params = full_params() if full else small_params()
        if faint_star_density is not None:
            params = dataclasses.replace(params, faint_star_density=faint_star_density)
        make_survey(data, seed=seed, full=full, shear=shear, paired=True, params=params,
                    n_processes=processes, overwrite=True, psf_g_offset=psf_g_offset,
                    rotated_shapes=rotated, scene_shear=scene_shear,
                    negate_noise=negate_noise)
    half_configs = configs
    cats = {}
    for half in HALVES:
        if callable(half_configs):
            with open(os.path.join(data, half, "truth", "survey.json"), encoding="utf-8") as fh:
                configs = half_configs(json.load(fh))
        done = os.path.join(field_dir, f"{half}.done")
        if os.path.isfile(done):
            with open(done, encoding="utf-8") as handle:
                cats[half] = handle.read().split()
            continue
        env = dict(os.environ, SP_DATA=os.path.join(data, half),
                   SP_RUN=os.path.join(field_dir, "runs", half))
        for name in configs:  # in order: exposures, PSFEx if chosen, tile
            t0 = time.time()
            proc = subprocess.run([sys.executable, os.path.join(ROOT, "shapepipe_run.py"), "-c",
                                   configs[name], "-q"], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            log(f"  {os.path.basename(field_dir)} {half}: {name} exit {proc.returncode} "
                f"({time.time() - t0:.0f} s)")
            if proc.returncode == 2:
                # shapepipe_run.py -q prints its one-line error on stdout or stderr.
                said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
                raise SystemExit(f"{name}: configuration error: {''.join(said)}")
        files = find_catalogues(os.path.join(field_dir, "runs", half), method)
        if not files:
            raise SystemExit(f"{field_dir} {half}: no {CATALOGUE_PREFIX[method]}-*.fits was "
                             "produced "
                             f"(see the run logs under {env['SP_RUN']})")
        # Only the newest tile run's catalogues.
        newest = max(os.path.dirname(f) for f in files)
        cats[half] = [f for f in files if os.path.dirname(f) == newest]
        write_text("\n".join(cats[half]) + "\n", done)
    return cats


def _restricted(select, rows):
    """The cuts of ``select`` and, in addition, only ``rows``."""
    return lambda tab: select(tab) & rows


def half_sums(files, truth_dir, select, true_galaxies=False, star_clearance=None):
    """Per-object quantities of one half after the cuts, for combination across fields.

    Returns
    -------
    dict
        ``g`` (n, 2) ellipticities, ``R`` (n, 2, 2) shear responses of the selected objects,
        ``R_S`` (2, 2) selection response, ``psf`` (n, 2) PSF shears, ``snr``, ``t_ratio``,
        ``truth_idx`` (the matched truth row, -1 for none), ``neighbour_dist`` (arcsec from
        the matched true object to the nearest other true object, detected or not; NaN
        without a match) and ``neighbour_is_star`` (that object is a star).
    """
    cat = sv.load_catalogues(files)
    tables = sv.metacal_tables(cat)
    truth, _ = sv.load_truth(truth_dir)
    idx = sv.match(cat["XWIN_WORLD"], cat["YWIN_WORLD"], truth["RA"], truth["DEC"])
    if true_galaxies:
        is_gal = np.zeros(len(idx), bool)
        is_gal[idx >= 0] = truth["IS_STAR"][idx[idx >= 0]] == 0
        select = _restricted(select, is_gal)
    if star_clearance:
        select = _restricted(select, _star_distance(cat, truth, idx) >= star_clearance)
    sel = select(tables["noshear"])
    from shapepipe.modules.ngmix.measure import selection_response, shear_response

    resp = shear_response(tables, step=sv.STEP)[sel]
    ns = tables["noshear"][sel]
    with np.errstate(invalid="ignore", divide="ignore"):
        t_ratio = ns["T"] / ns["Tpsf"]
    from scipy.spatial import cKDTree

    dec0 = np.radians(np.median(truth["DEC"]))
    txy = np.column_stack([truth["RA"] * np.cos(dec0), truth["DEC"]]) * 3600.0
    matched = idx[sel]
    nearest = np.full(len(matched), np.nan)
    nearest_star = np.zeros(len(matched), bool)
    if len(txy) > 1 and (matched >= 0).any():
        dist, which = cKDTree(txy).query(txy[matched[matched >= 0]], k=2)
        nearest[matched >= 0] = dist[:, 1]
        nearest_star[matched >= 0] = truth["IS_STAR"][which[:, 1]] == 1
    return {"g": np.column_stack([ns["g1"], ns["g2"]]), "R": resp.reshape(-1, 2, 2),
            "neighbour_dist": nearest, "neighbour_is_star": nearest_star,
            "R_S": selection_response(tables, select, step=sv.STEP),
            "psf": np.asarray(cat["NGMIX_ELL_PSFo_NOSHEAR"], float).reshape(-1, 2)[sel],
            "snr": ns["snr"], "t_ratio": t_ratio, "truth_idx": idx[sel]}


def _star_distance(cat, truth, idx):
    """Arcsec from each detection to the nearest true star other than its own match."""
    from scipy.spatial import cKDTree

    star = truth["IS_STAR"] == 1
    if star.sum() < 2:
        return np.full(len(idx), np.inf)
    cosd = np.cos(np.radians(np.median(truth["DEC"])))
    sxy = np.column_stack([truth["RA"][star] * cosd, truth["DEC"][star]]) * 3600.0
    dxy = np.column_stack([cat["XWIN_WORLD"] * cosd, cat["YWIN_WORLD"]]) * 3600.0
    dist, _ = cKDTree(sxy).query(dxy, k=2)
    own = np.zeros(len(idx), bool)
    own[idx >= 0] = star[idx[idx >= 0]]
    return np.where(own, dist[:, 1], dist[:, 0])


def load_metadetect(files):
    """The METADETECT tables of ``files`` (columns ``MDET_COLUMNS``, concatenated) and the
    shear step of their sheared images (header key MDETSTEP, the same in every file)."""
    parts, steps = [], set()
    for path in files:
        with fits.open(path, memmap=True) as hdul:
            if "METADETECT" not in hdul:
                raise SystemExit(f"{path}: no HDU METADETECT (expected metadetect_runner's "
                                 "metadetect_cat-<tile>.fits)")
            hdu = hdul["METADETECT"]
            if "MDETSTEP" not in hdu.header:
                raise SystemExit(f"{path}: HDU METADETECT has no header key MDETSTEP (the "
                                 "shear step of the sheared images)")
            steps.add(float(hdu.header["MDETSTEP"]))
            names = hdu.columns.names
            missing = [c for c in MDET_COLUMNS if c not in names]
            if missing:
                raise SystemExit(f"{path}: missing column(s) {', '.join(missing)} in HDU "
                                 "METADETECT")
            data = hdu.data  # None for a table without rows
            parts.append({c: np.array(data[c]) if data is not None else
                          np.zeros(0, "U7" if c == "MDET_STEP" else float)
                          for c in MDET_COLUMNS})
    if not parts:
        raise SystemExit("no metadetect catalogue to read")
    if len(steps) != 1 or not 0 < min(steps) < 1:
        raise SystemExit(f"{', '.join(files)}: MDETSTEP {sorted(steps)}: expected one step in "
                         "(0, 1) for all catalogues")
    cat = {c: np.concatenate([p[c] for p in parts]) for c in MDET_COLUMNS}
    cat["MDET_STEP"] = np.char.strip(cat["MDET_STEP"].astype(str))
    unknown = sorted(set(np.unique(cat["MDET_STEP"]).tolist()) - set(MDET_STEPS))
    if unknown:
        raise SystemExit(f"{', '.join(files)}: MDET_STEP values {unknown}: expected "
                         f"{', '.join(MDET_STEPS)}")
    return cat, steps.pop()


def mdet_selector(cuts):
    """``select(rows) -> bool array`` on a dict of METADETECT columns (one step's rows).

    ``cuts``: ``flags`` (MDET_FLAGS == 0 and MASK_FLAGS == 0), ``snr_min`` (MDET_S2N >),
    ``t_ratio_min`` (MDET_T_RATIO >) and optionally ``size_sigma`` (MDET_T_RATIO > k
    MDET_T_RATIO_ERR); ``None`` disables a number. The selection is metadetect_runner's
    ``default_cuts``. Each step's rows are cut on their own values, so the selection's
    response to the shear is inside the difference of the steps' means.
    """
    def select(tab):
        return default_cuts(tab, cuts["snr_min"], cuts["t_ratio_min"], mask_flags=cuts["flags"],
                            size_sigma=cuts.get("size_sigma"))
    return select


def mdet_half_sums(files, truth_dir, select, true_galaxies=False, star_clearance=None):
    """The selected rows of each metadetect step of one half (the counterpart of half_sums).

    Returns
    -------
    dict
        ``method`` ("metadetect"), ``step`` (MDETSTEP) and ``steps``: per step name, ``g``
        (n, 2) (MDET_G1, MDET_G2), ``psf`` (n, 2) (PSF_G1, PSF_G2), ``snr`` (MDET_S2N),
        ``t_ratio`` (MDET_T_RATIO) and ``truth_idx`` (the matched truth row, -1 for none) of
        the rows that pass ``select`` (and, with ``true_galaxies``, are matched to a true
        galaxy; with ``star_clearance``, have no true star other than their match within that
        many arcsec). ``mdet_sums`` reduces it to sums.
    """
    cat, step = load_metadetect(files)
    truth, _ = sv.load_truth(truth_dir)
    out = {"method": "metadetect", "step": step, "steps": {}}
    for name in MDET_STEPS:
        mine = cat["MDET_STEP"] == name
        tab = {c: cat[c][mine] for c in MDET_COLUMNS}
        # Every step's positions are in the unsheared frame: all match the same truth.
        idx = (sv.match(tab["RA"], tab["DEC"], truth["RA"], truth["DEC"]) if mine.any()
               else np.zeros(0, int))
        keep = select(tab)
        if true_galaxies:
            is_gal = np.zeros(len(idx), bool)
            is_gal[idx >= 0] = truth["IS_STAR"][idx[idx >= 0]] == 0
            keep &= is_gal
        if star_clearance:
            keep &= _star_distance({"XWIN_WORLD": tab["RA"], "YWIN_WORLD": tab["DEC"]}, truth,
                                   idx) >= star_clearance
        out["steps"][name] = {
            "g": np.column_stack([tab["MDET_G1"], tab["MDET_G2"]])[keep].astype(float),
            "psf": np.column_stack([tab["PSF_G1"], tab["PSF_G2"]])[keep].astype(float),
            "snr": tab["MDET_S2N"][keep].astype(float),
            "t_ratio": tab["MDET_T_RATIO"][keep].astype(float), "truth_idx": idx[keep]}
    return out


def _is_mdet(half):
    return "steps" in half


def _noshear(half):
    """The per-object entries (g, psf, truth_idx, ...) of a half's unsheared measurements."""
    return half["steps"]["noshear"] if _is_mdet(half) else half


def mdet_sums(half, rows=None):
    """``n`` (5,), ``sum_g`` (5, 2) per step (``MDET_STEPS`` order) and ``sum_psf`` (2,) of
    the noshear rows: what a metadetect half contributes, so halves and fields combine by
    adding. ``rows``: optional ``{step: bool array}`` restricting each step's rows."""
    n, sum_g = np.zeros(len(MDET_STEPS)), np.zeros((len(MDET_STEPS), 2))
    for k, name in enumerate(MDET_STEPS):
        g = half["steps"][name]["g"]
        if rows is not None:
            g = g[rows[name]]
        n[k], sum_g[k] = len(g), g.sum(axis=0)
    psf = half["steps"]["noshear"]["psf"]
    if rows is not None:
        psf = psf[rows["noshear"]]
    return {"n": n, "sum_g": sum_g, "sum_psf": psf.sum(axis=0)}


def mdet_response(sums, step):
    """``diag(R11, R22)`` from summed steps: ``R11 = (<G1>_1p - <G1>_1m) / (2 step)``, ``R22``
    likewise from 2p/2m. The means are over each step's own selection, so the selection
    response is inside. NaN where a step has no rows. The diagonal of metadetect_runner's
    ``shear_from_sums`` response (the estimator registered for E7-E9 has no off-diagonal)."""
    _, resp, _ = shear_from_sums(np.column_stack([sums["n"], sums["sum_g"]]), step)
    return np.diag(np.diag(resp))


def _half_response(half):
    """The 2x2 response of one half: metadetect's from its steps' sums, metacal's ``<R> +
    R_S`` of its selected objects."""
    if _is_mdet(half):
        return mdet_response(mdet_sums(half), half["step"])
    return _means([half])[1]


def _mdet_means(parts, rows=None):
    """``<G>_noshear``, the metadetect response and the noshear row count of a list of
    metadetect halves, pooled by sums (object-weighted, as ``_means``)."""
    steps = {p["step"] for p in parts}
    if len(steps) > 1:
        raise ValueError(f"metadetect halves with different shear steps {sorted(steps)}")
    total = {"n": np.zeros(len(MDET_STEPS)), "sum_g": np.zeros((len(MDET_STEPS), 2)),
             "sum_psf": np.zeros(2)}
    for k, p in enumerate(parts):
        for key, v in mdet_sums(p, None if rows is None else rows[k]).items():
            total[key] = total[key] + v
    n = int(total["n"][0])
    if total["n"].min() < 2:
        return np.full(2, np.nan), np.full((2, 2), np.nan), n
    return total["sum_g"][0] / n, mdet_response(total, steps.pop()), n


def _means(parts, rows=None):
    """``<g>``, ``<R> + <R_S>`` (object-weighted) and the object count of a list of halves.

    Metadetect halves: ``<G>_noshear`` and the response of the steps' means (``_mdet_means``).
    """
    if parts and _is_mdet(parts[0]):
        return _mdet_means(parts, rows)
    g, r, n_tot, rs = [], [], 0, np.zeros((2, 2))
    for k, p in enumerate(parts):
        keep = slice(None) if rows is None else rows[k]
        g.append(p["g"][keep])
        r.append(p["R"][keep])
        n = len(p["g"][keep])
        rs += n * p["R_S"]
        n_tot += n
    if n_tot < 2:
        return np.full(2, np.nan), np.full((2, 2), np.nan), 0
    g, r = np.concatenate(g), np.concatenate(r)
    return g.mean(axis=0), r.mean(axis=0) + rs / n_tot, n_tot


def _paired_estimate(plus, minus, rows_plus=None, rows_minus=None):
    """``(e+ - e-) / 2`` and ``(e+ + e-) / 2`` with one response for both halves.

    ``e = R^-1 <g>`` with ``R`` the mean of the two halves' ``<R> + <R_S>``: the same matrix
    divides both means, so their intrinsic shapes (the same objects) cancel in the difference.
    With a response per half, a few objects whose sheared fits switch between likelihood
    minima (R ~ +-50 for one object in a few hundred) make the halves' responses differ by
    ~30%, which multiplies the uncancelled shape noise of each half's mean.
    """
    gp, rp, n_p = _means(plus, rows_plus)
    gm, rm, n_m = _means(minus, rows_minus)
    if n_p < 2 or n_m < 2:
        return np.full(2, np.nan), np.full(2, np.nan), n_p + n_m
    resp = (rp + rm) / 2
    return (np.linalg.solve(resp, (gp - gm) / 2), np.linalg.solve(resp, (gp + gm) / 2),
            n_p + n_m)


def _jackknife_var(estimates):
    """Jackknife variance of leave-one-out ``estimates`` (k, ...): (k-1)/k sum (x - mean)^2."""
    jack = np.asarray(estimates)
    k = len(jack)
    return (k - 1) / k * np.sum((jack - jack.mean(axis=0)) ** 2, axis=0)


def _group_jackknife_err(stat, groups, shape):
    """Jackknife error of ``stat(indices)`` leaving out one group of indices at a time.

    NaN (of ``shape``) with fewer than two groups.
    """
    if len(groups) < 2:
        return np.full(shape, np.nan)
    return np.sqrt(_jackknife_var([stat([k for other in groups if other is not group
                                         for k in other]) for group in groups]))


def _bin_rows(half, key, lo, hi):
    """Rows of a half with ``lo <= key < hi``; of a metadetect half, ``{step: rows}`` with
    each step binned on its own rows' values."""
    if _is_mdet(half):
        return {name: (v[key] >= lo) & (v[key] < hi) for name, v in half["steps"].items()}
    return (half[key] >= lo) & (half[key] < hi)


def _bias_vector(fields, shear, subset, bins=None):
    """``[m1, m2, m, c1, c2]`` and the object count of the fields ``subset``."""
    sel = [fields[k] for k in subset]
    rows = {}
    for h in HALVES:
        if bins is None:
            rows[h] = None
        else:
            rows[h] = [_bin_rows(f[h], *bins) for f in sel]
    half_diff, mean, n = _paired_estimate([f["plus"] for f in sel], [f["minus"] for f in sel],
                                          rows["plus"], rows["minus"])
    gvec = np.asarray(shear)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(gvec != 0, half_diff / gvec - 1, np.nan)
    # m along the applied shear: both components weighed by the shear.
    m_along = float(np.dot(half_diff, gvec) / np.dot(gvec, gvec) - 1)
    return np.concatenate([m, [m_along], mean]), n


def biases(fields, shear, bins=None, groups=None):
    """m_i and c_i of paired fields; jackknife over fields (or groups of fields) for the errors.

    Parameters
    ----------
    fields : list of dict
        ``{"plus": half_sums, "minus": half_sums}`` per field.
    shear : (float, float)
        The +g field's applied shear.
    bins : (str, lo, hi), optional
        Restrict to objects with ``lo <= key < hi`` (``key`` a half_sums entry).
    groups : list of list of int, optional
        Fields left out together by the jackknife: a field and its rotated twin, whose shape
        noise cancels only when both are in (default: every field on its own).
    """
    full, n = _bias_vector(fields, shear, range(len(fields)), bins)
    groups = [[k] for k in range(len(fields))] if groups is None else groups
    err = _group_jackknife_err(lambda keep: _bias_vector(fields, shear, keep, bins)[0],
                               groups, full.shape)
    names = ("m1", "m2", "m", "c1", "c2")
    out = {name: float(v) for name, v in zip(names, full)}
    out.update({f"{name}_err": float(e) for name, e in zip(names, err)})
    out["n_objects"] = int(n)
    return out


def _c_and_psf(fields):
    _, c, _ = _paired_estimate([f["plus"] for f in fields], [f["minus"] for f in fields])
    psf = np.concatenate([_noshear(f[h])["psf"] for f in fields for h in HALVES]).mean(axis=0)
    return c, psf


def _alpha(normal, leaky):
    """``(c_leak - c) / (psf_leak - psf)`` per component."""
    c0, p0 = _c_and_psf(normal)
    c1, p1 = _c_and_psf(leaky)
    return (c1 - c0) / (p1 - p0)


def compare(run_a, run_b, shear, groups):
    """Paired differences ``b - a`` of two runs on the same skies (e.g. two PSF models).

    Parameters
    ----------
    run_a, run_b : dict
        ``{"normal": [fields], "leaky": [fields]}``, field k of one the same sky as field k
        of the other; leakage field j repeats normal field j.
    shear : (float, float)
    groups : list of list of int
        Skies (normal-field indices) left out together by the jackknife, with the leakage
        fields that repeat them.

    Returns
    -------
    dict
        ``d_m1, d_m2, d_m, d_c1, d_c2`` (and ``d_alpha1, d_alpha2`` with leakage fields), each
        with ``_err``: the jackknife error of the difference, in which what the two runs share
        (objects, shapes, noise) cancels.
    """
    n_leak = min(len(run_a["leaky"]), len(run_b["leaky"]))

    def diff(keep):
        out = []
        for run in (run_a, run_b):
            vec, _ = _bias_vector(run["normal"], shear, keep)
            leak = [j for j in keep if j < n_leak]
            if n_leak:
                al = (_alpha([run["normal"][j] for j in leak], [run["leaky"][j] for j in leak])
                      if leak else np.full(2, np.nan))
                vec = np.concatenate([vec, al])
            out.append(vec)
        return out[1] - out[0]

    value = diff([k for g in groups for k in g])
    err = _group_jackknife_err(diff, groups, value.shape)
    names = ("m1", "m2", "m", "c1", "c2") + (("alpha1", "alpha2") if n_leak else ())
    out = {f"d_{n}": float(v) for n, v in zip(names, value)}
    out.update({f"d_{n}_err": float(e) for n, e in zip(names, err)})
    return out


def common_fields(run_a, run_b):
    """The two runs cut to the normal fields both have (the first ``n``: field k is sky
    ``k // 2`` in every run of one seed) and the leakage fields that repeat those.

    Raises
    ------
    ValueError
        When they share no field, or their first fields are not the same skies.
    """
    n = min(len(run_a["normal"]), len(run_b["normal"]))
    if n == 0 or run_a["skies"][:n] != run_b["skies"][:n]:
        raise ValueError(f"no common fields (skies {run_a['skies']} and {run_b['skies']})")
    out = []
    for run in (run_a, run_b):
        out.append(dict(run, normal=run["normal"][:n], skies=run["skies"][:n],
                        leaky=run["leaky"][:n]))
    return out


def leakage(normal, leaky, paired=True):
    """alpha_i = (c_leak - c) / (psf_leak - psf), with jackknife errors.

    Parameters
    ----------
    normal, leaky : list of dict
        Fields without and with the PSF offset (``{"plus": ..., "minus": ...}`` each).
    paired : bool
        ``leaky[j]`` is ``normal[j]``'s sky with the PSF offset (same objects, shapes and
        noise): the jackknife leaves out one pair at a time, so the shape noise common to a
        pair cancels in the error as in the estimate. Otherwise the two sets are independent
        and each is jackknifed separately.
    """
    def result(value, err):
        return {"alpha1": float(value[0]), "alpha2": float(value[1]),
                "alpha1_err": float(err[0]), "alpha2_err": float(err[1])}

    if paired:
        if len(normal) < len(leaky):
            raise ValueError("paired leakage needs a normal field for every leakage field")
        # Only the normal fields whose sky the leakage fields repeat: with all of them the
        # shape noise of the others would not cancel.
        normal = normal[:len(leaky)]
    value = _alpha(normal, leaky)
    if paired:
        return result(value, _group_jackknife_err(
            lambda keep: _alpha([normal[j] for j in keep], [leaky[j] for j in keep]),
            [[j] for j in range(len(leaky))], 2))
    var = np.zeros(2)
    for fields, other, first in ((normal, leaky, True), (leaky, normal, False)):
        k = len(fields)
        if k < 2:
            return result(value, np.full(2, np.nan))
        var += _jackknife_var([_alpha([f for j, f in enumerate(fields) if j != i], other)
                               if first else
                               _alpha(other, [f for j, f in enumerate(fields) if j != i])
                               for i in range(k)])
    return result(value, np.sqrt(var))


NEIGHBOUR_BINS = (0.0, 1.0, 2.0, 3.0, np.inf)  # arcsec to the nearest other true object


def _matched_rows(a, b):
    """Rows of the objects of half-sums ``a`` and ``b`` matched to the same true object."""
    common, ia, ib = np.intersect1d(a["truth_idx"], b["truth_idx"], return_indices=True)
    keep = common >= 0
    return ia[keep], ib[keep]


def _boot_ratio(num, den, n_boot=200, seed=0):
    """``sum(num) / sum(den)`` and its bootstrap error over objects (fixed seed)."""
    if len(num) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(num), (n_boot, len(num)))
    boot = num[draws].sum(axis=1) / den[draws].sum(axis=1)
    return float(num.sum() / den.sum()), float(boot.std())


def response_check(fields, shear):
    """The real response of the objects selected in both halves against metacal's.

    The finite difference ``(g+ - g-) / 2g`` (along the shear) of the same true object is its
    response to the shear the simulation applied; metacal's ``R`` (mean of the halves) is
    what the estimator divides by. Their ratio minus one is the part of m that is not
    selection, by distance to the nearest other true object (detected or not), and by
    whether that object is a star or a galaxy: blends the detection cannot split respond
    differently, and a star, which a lens does not shear, adds light that metacal shears.

    Returns
    -------
    list of dict
        ``bin`` (arcsec, "all" first), ``neighbour`` ("any", "star" or "galaxy"), ``n``,
        ``ratio_minus_1``, ``err`` (bootstrap over objects).
    """
    gvec = np.asarray(shear, float)
    unit = gvec / np.hypot(*gvec)
    fd, resp, near, star = [], [], [], []
    for f in fields:
        ip, im = _matched_rows(f["plus"], f["minus"])
        fd.append((f["plus"]["g"][ip] - f["minus"]["g"][im]) @ unit / (2 * np.hypot(*gvec)))
        r = (f["plus"]["R"][ip] + f["minus"]["R"][im]) / 2
        resp.append(np.einsum("i,nij,j->n", unit, r, unit))
        near.append(f["plus"]["neighbour_dist"][ip])
        star.append(f["plus"].get("neighbour_is_star", np.zeros(len(ip), bool))[ip])
    fd, resp, near, star = (np.concatenate(a) for a in (fd, resp, near, star))
    out = []
    for lo, hi in [(None, None)] + list(zip(NEIGHBOUR_BINS[:-1], NEIGHBOUR_BINS[1:])):
        in_bin = np.ones(len(fd), bool) if lo is None else (near >= lo) & (near < hi)
        for kind, rows in (("any", in_bin), ("star", in_bin & star),
                           ("galaxy", in_bin & ~star)):
            if kind != "any" and lo is None:
                continue
            ratio, err = _boot_ratio(fd[rows], resp[rows])
            out.append({"bin": "all" if lo is None else _label(lo, hi), "neighbour": kind,
                        "n": int(rows.sum()), "ratio_minus_1": ratio - 1, "err": err})
    return out


def leakage_check(normal, leaky):
    """Where the leakage comes from: the same objects, or which objects are selected.

    ``matched``: alpha of the objects selected in both a normal field and its leakage twin
    (same true object, same half), ``sum(g_leak - g) / sum(psf_leak - psf) / <R>`` per
    component; ``flips``: objects selected in one of the two only (the rest of the field
    estimate of alpha comes from them: a selection that depends on the PSF's orientation).
    Metadetect halves: their noshear rows, divided by the two halves' response (there is no
    per-object response).
    """
    dg, dp, resp, flips, both = [], [], [], 0, 0
    for norm, leak in zip(normal, leaky):
        for h in HALVES:
            a, b = _noshear(norm[h]), _noshear(leak[h])
            ia, ib = _matched_rows(a, b)
            dg.append(b["g"][ib] - a["g"][ia])
            dp.append(b["psf"][ib] - a["psf"][ia])
            if _is_mdet(norm[h]):
                r = (_half_response(norm[h]) + _half_response(leak[h])) / 2
                resp.append(np.tile(r.diagonal(), (len(ia), 1)))
            else:
                resp.append((a["R"][ia] + b["R"][ib]).diagonal(axis1=1, axis2=2) / 2)
            both += len(ia)
            flips += len(a["g"]) + len(b["g"]) - 2 * len(ia)
    dg, dp, resp = np.concatenate(dg), np.concatenate(dp), np.concatenate(resp)
    out = {"both": int(both), "flips": int(flips)}
    for k in range(2):
        ratio, err = _boot_ratio(dg[:, k], dp[:, k])
        mean_r = resp[:, k].mean()
        out[f"matched_alpha{k + 1}"] = ratio / mean_r
        out[f"matched_alpha{k + 1}_err"] = err / mean_r
    return out


def pairing(field, outlier=5.0, shear=None):
    """How alike the two halves of a field are: selected objects matched through the truth.

    Returns
    -------
    dict
        ``selected`` (plus, minus), ``both`` (truth objects selected in both halves),
        ``flips`` (selected in one half only), ``diff_std`` (std of g_plus - g_minus over
        ``both``, per component): with common random numbers the difference is the shear's
        doing, about 2 g R, plus little noise. ``response_outliers`` (plus, minus): objects
        with a diagonal response beyond +-``outlier`` (sheared fits that switched likelihood
        minima), and ``outlier_share``: their part of the half's summed R11 + R22. Of
        metadetect halves (their noshear rows), ``response`` (plus, minus): each half's
        ``[R11, R22]`` instead of the outliers. With ``shear`` (the +g half's), the split of
        the numerator of m, ``<g+> - <g->`` along the shear, into ``numerator_both`` (the
        objects selected in both halves) and ``numerator_flips`` (the rest: selected in one
        half only, or matched to no true object), both over the mean count of the halves,
        and ``response_along`` (plus, minus): each half's response along the shear.
    """
    p, m = _noshear(field["plus"]), _noshear(field["minus"])
    rows_p, rows_m = _matched_rows(p, m)
    diff = p["g"][rows_p] - m["g"][rows_m]
    out = {"selected": [int(len(p["g"])), int(len(m["g"]))], "both": int(len(rows_p)),
           "flips": int(len(p["g"]) + len(m["g"]) - 2 * len(rows_p)),
           "diff_std": [float(v) for v in (diff.std(axis=0) if len(diff) > 1
                                           else np.full(2, np.nan))]}
    resp = [_half_response(field[h]) for h in HALVES]
    if shear is not None and len(p["g"]) and len(m["g"]):
        unit = np.asarray(shear, float) / np.hypot(*shear)
        n_mean = (len(p["g"]) + len(m["g"])) / 2
        both = float(diff.sum(axis=0) @ unit / n_mean)
        total = float((p["g"].sum(axis=0) - m["g"].sum(axis=0)) @ unit / n_mean)
        out.update(numerator_both=both, numerator_flips=total - both,
                   response_along=[float(unit @ r @ unit) for r in resp])
    if _is_mdet(field["plus"]):
        out["response"] = [[float(v) for v in r.diagonal()] for r in resp]
        return out
    n_out, share = [], []
    for h in (p, m):
        diag = h["R"].diagonal(axis1=1, axis2=2)
        far = np.any(np.abs(diag) > outlier, axis=1)
        n_out.append(int(far.sum()))
        total = diag.sum()
        share.append(float(diag[far].sum() / total) if total else float("nan"))
    return dict(out, response_outliers=n_out, outlier_share=share)


def noise_budget(pairings):
    """Where the error of m comes from, from the per-field ``pairing`` entries.

    m is ``<g+> - <g->`` (along the shear) over ``2 |g| R``. The numerator splits into the
    objects selected in both halves, whose intrinsic shapes and noise cancel, and the flips
    (selected in one half only), which carry their whole shape; R is each half's response.
    Each part's scatter over the fields, turned into the error of m it would give alone if
    the fields were independent (a field and its rotated twin are not: this is a guide to
    which part dominates, not a second error of m), says what a larger sample or a variance
    reduction has to beat.

    Returns
    -------
    dict
        ``signal`` (mean numerator), ``n_fields``, and for ``both``, ``flips`` and
        ``response``: ``mean``, ``std`` over fields (the response: over halves),
        ``sigma_m`` (that std relative to the mean signal, or to the mean response, over
        the square root of the number of values, as if they were independent) and ``per``
        ("field" or "half"); ``flips_per_field`` (mean count).
    """
    rows = [p for p in pairings if "numerator_both" in p]
    if len(rows) < 2:
        return {}
    both = np.array([p["numerator_both"] for p in rows])
    flips = np.array([p["numerator_flips"] for p in rows])
    resp = np.array([r for p in rows for r in p["response_along"]])
    signal = float((both + flips).mean())

    def part(values, scale, per):
        std = float(values.std(ddof=1))
        return {"mean": float(values.mean()), "std": std,
                "sigma_m": std / abs(scale) / np.sqrt(len(values)) if scale else float("nan"),
                "per": per}

    return {"signal": signal, "n_fields": len(rows),
            "flips_per_field": float(np.mean([p["flips"] for p in rows])),
            "both": part(both, signal, "field"), "flips": part(flips, signal, "field"),
            "response": part(resp, resp.mean(), "half")}


def plot(path, summary):
    """m by S/N and by size bin, and per-field m."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    mdet = summary.get("method", "metacal") == "metadetect"
    for ax, key, label in ((axes[0], "by_snr", "S/N (MDET_S2N)" if mdet else "S/N (NGMIX_SNR)"),
                           (axes[1], "by_size", "MDET_T_RATIO" if mdet else "T / Tpsf")):
        rows = summary[key]
        x = np.arange(len(rows))
        ax.errorbar(x, [r["m"] for r in rows], [r["m_err"] for r in rows], fmt="o")
        ax.set_xticks(x, [r["bin"] for r in rows], fontsize=8)
        ax.axhline(0, color="k", lw=0.8)
        ax.axhspan(-2e-3, 2e-3, color="g", alpha=0.2)
        ax.set_xlabel(label)
        ax.set_ylabel("m (along the shear)")
    per = summary["per_field"]
    axes[2].plot(np.arange(len(per)), [p["m"] for p in per], "o")
    axes[2].axhline(summary["all"]["m"], color="C1", label="all fields")
    axes[2].axhline(0, color="k", lw=0.8)
    axes[2].set_xlabel("field")
    axes[2].set_ylabel("m of the field")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"pipeline shear bias{' (metadetect)' if mdet else ''}: {len(per)} paired "
                 f"fields, m = {summary['all']['m']:+.4f} +- {summary['all']['m_err']:.4f}",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _label(lo, hi):
    return f"{lo:g}-{hi:g}" if hi < 1e8 else f">{lo:g}"


def _selector(cuts, method):
    return mdet_selector(cuts) if method == "metadetect" else sv.make_selector(cuts)


def field_sums(field_info, select, true_galaxies=False, star_clearance=None, method="metacal"):
    """``{"normal": [...], "leaky": [...], "skies": [...]}``: half_sums of every field
    (``mdet_half_sums`` with ``method="metadetect"``)."""
    run = {"normal": [], "leaky": [], "skies": []}
    sums = mdet_half_sums if method == "metadetect" else half_sums
    for info in field_info:
        halves = {h: sums(info["cats"][h], info["truth"][h], select, true_galaxies,
                          star_clearance)
                  for h in HALVES}
        run["leaky" if info["leakage"] else "normal"].append(halves)
        if not info["leakage"]:
            run["skies"].append(info.get("sky", len(run["skies"])))
    return run


def sky_groups(skies):
    """Normal-field indices grouped by sky (a field and its rotated twin)."""
    return [[k for k, sky in enumerate(skies) if sky == one] for one in sorted(set(skies))]


def analyse(field_info, shear, cuts, log, paired_leakage=True, star_clearance=None,
            method="metacal"):
    """The summary dict from the catalogues of every field.

    ``star_clearance`` (arcsec): also m and c without the detections that have a true star
    that close (a diagnostic: truth decides, so no survey can apply it). ``method``: the
    catalogues' kind ("metacal": final_cat, "metadetect": metadetect_cat); a metacal
    summary has no ``method`` key (as before the option).
    """
    select = _selector(cuts, method)
    run = field_sums(field_info, select, method=method)
    normal, leaky, skies = run["normal"], run["leaky"], run["skies"]
    normal_truth = field_sums([f for f in field_info if not f["leakage"]], select,
                              true_galaxies=True, method=method)["normal"]
    if not normal:
        raise SystemExit("no field without PSF offset: nothing to measure m and c on")
    summary = {"shear": list(shear), "cuts": cuts, "n_fields": len(normal),
               "n_leakage_fields": len(leaky)}
    mdet = method == "metadetect"
    if mdet:
        summary["method"] = method
    # The jackknife leaves out a sky at a time (a field and its rotated twin together).
    groups = sky_groups(skies)
    summary["jackknife_groups"] = groups
    summary["all"] = biases(normal, shear, groups=groups)
    summary["true_galaxies_only"] = biases(normal_truth, shear, groups=groups)
    if star_clearance:
        clear = field_sums([f for f in field_info if not f["leakage"]], select,
                           star_clearance=star_clearance, method=method)["normal"]
        summary["no_true_star_within"] = dict(biases(clear, shear, groups=groups),
                                              arcsec=float(star_clearance))
    summary["by_snr"] = [dict(biases(normal, shear, ("snr", lo, hi), groups), bin=_label(lo, hi))
                         for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:])]
    summary["by_size"] = [dict(biases(normal, shear, ("t_ratio", lo, hi), groups),
                               bin=_label(lo, hi))
                          for lo, hi in zip(SIZE_BINS[:-1], SIZE_BINS[1:])]
    summary["per_field"] = [dict(biases([f], shear), pairing=pairing(f, shear=shear))
                            for f in normal]
    summary["noise_budget"] = noise_budget([row["pairing"] for row in summary["per_field"]])
    if mdet:
        for row, f in zip(summary["per_field"], normal):
            # The field's sums, from which fields combine (mdet_sums, MDET_STEPS order).
            row["sums"] = {h: {k: np.asarray(v).tolist() for k, v in mdet_sums(f[h]).items()}
                           for h in HALVES}
        total = {}
        for f in normal:
            for h in HALVES:
                for k, v in mdet_sums(f[h]).items():
                    total[k] = total.get(k, 0) + v
        r = mdet_response(total, normal[0]["plus"]["step"]).diagonal()
        summary["response"] = {"R11": float(r[0]), "R22": float(r[1]),
                               "step": float(normal[0]["plus"]["step"])}
        summary["response_check"] = ("not applicable to metadetect: there is no per-object "
                                     "response, only the difference of the steps' means")
    else:
        summary["response_check"] = response_check(normal, shear)
    if leaky:
        summary["leakage"] = leakage(normal, leaky, paired=paired_leakage)
        summary["leakage"]["paired"] = bool(paired_leakage)
        if paired_leakage:
            summary["leakage"].update(leakage_check(normal[:len(leaky)], leaky))
    return summary


def _kind(row):
    """`` star`` / `` galaxy`` for a response-check row split by neighbour kind, else ``""``."""
    kind = row.get("neighbour", "any")
    return "" if kind == "any" else f" {kind}"


def format_summary(s):
    a = s["all"]
    mdet = s.get("method", "metacal") == "metadetect"
    what = "noshear detections" if mdet else "galaxy measurements"
    lines = [f"pipeline shear bias{' (metadetect)' if mdet else ''}: {s['n_fields']} paired "
             f"fields ({a['n_objects']} {what} after cuts), applied shear {s['shear']}",
             f"  m  = {a['m']:+.5f} +- {a['m_err']:.5f} (along the shear)   "
             f"(|m|+3sigma) = {abs(a['m']) + 3 * a['m_err']:.4f}",
             f"  m1 = {a['m1']:+.5f} +- {a['m1_err']:.5f}   m2 = {a['m2']:+.5f} +- "
             f"{a['m2_err']:.5f}",
             f"  c1 = {a['c1']:+.2e} +- {a['c1_err']:.2e}   c2 = {a['c2']:+.2e} +- "
             f"{a['c2_err']:.2e}"]
    if mdet:
        r = s["response"]
        lines.append(f"  metadetect response (all fields, both halves, step {r['step']:g}): "
                     f"R11 = {r['R11']:.4f}, R22 = {r['R22']:.4f}")
    t = s["true_galaxies_only"]
    lines.append(f"  true galaxies only: m = {t['m']:+.5f} +- {t['m_err']:.5f}")
    if "no_true_star_within" in s:
        t = s["no_true_star_within"]
        lines.append(f"  without detections that have a true star within {t['arcsec']:g}\": "
                     f"m = {t['m']:+.5f} +- {t['m_err']:.5f} ({t['n_objects']})")
    for key, name in (("by_snr", "S/N"), ("by_size", "T/Tpsf")):
        lines.append(f"  m by {name}: " + "; ".join(
            f"{r['bin']}: {r['m']:+.4f} +- {r['m_err']:.4f} ({r['n_objects']})" for r in s[key]))
    for k, f in enumerate(s["per_field"]):
        pr = f["pairing"]
        if mdet:
            (p11, p22), (m11, m22) = pr["response"]
            lines.append(f"  field {k}: m = {f['m']:+.4f}; noshear selected {pr['selected'][0]}"
                         f" / {pr['selected'][1]}, in both {pr['both']}, in one only "
                         f"{pr['flips']}; std(g+ - g-) = {pr['diff_std'][0]:.4f}, "
                         f"{pr['diff_std'][1]:.4f}; R11, R22 = {p11:.3f}, {p22:.3f} / "
                         f"{m11:.3f}, {m22:.3f}")
            continue
        lines.append(f"  field {k}: m = {f['m']:+.4f}; selected {pr['selected'][0]} / "
                     f"{pr['selected'][1]}, in both {pr['both']}, in one only {pr['flips']}; "
                     f"std(g+ - g-) = {pr['diff_std'][0]:.4f}, {pr['diff_std'][1]:.4f}; "
                     f"|R_ii| > 5: {pr['response_outliers'][0]} / {pr['response_outliers'][1]} "
                     f"objects, {100 * pr['outlier_share'][0]:+.0f}% / "
                     f"{100 * pr['outlier_share'][1]:+.0f}% of the summed response")
    nb = s.get("noise_budget")
    if nb:
        b, f, r = nb["both"], nb["flips"], nb["response"]
        lines.append(
            f"  noise budget over {nb['n_fields']} fields (sigma_m: that part alone): "
            f"<g+> - <g-> along the shear {nb['signal']:.5f} = selected in both halves "
            f"{b['mean']:.5f} (scatter {b['std']:.5f}, sigma_m {b['sigma_m']:.4f}) + flips "
            f"{f['mean']:+.5f} (scatter {f['std']:.5f}, sigma_m {f['sigma_m']:.4f}; "
            f"{nb['flips_per_field']:.1f} per field); response per half {r['mean']:.4f} "
            f"(scatter {r['std']:.4f}, sigma_m {r['sigma_m']:.4f})")
    if isinstance(s.get("response_check"), str):
        lines.append(f"  per-object response check: {s['response_check']}")
    elif "response_check" in s:
        lines.append("  real response / metacal R - 1 of the objects selected in both halves, "
                     "by distance to the nearest other true object (star / galaxy): " +
                     "; ".join(
                         f"{r['bin']}{_kind(r)}: {r['ratio_minus_1']:+.3f} +- {r['err']:.3f} "
                         f"({r['n']})" for r in s["response_check"]))
    if "leakage" in s:
        lk = s["leakage"]
        lines.append(f"  alpha1 = {lk['alpha1']:+.4f} +- {lk['alpha1_err']:.4f}   "
                     f"alpha2 = {lk['alpha2']:+.4f} +- {lk['alpha2_err']:.4f} "
                     f"({s['n_leakage_fields']} leakage fields)")
        if "matched_alpha1" in lk:
            lines.append(f"    of the objects selected with and without the PSF offset "
                         f"({lk['both']}): alpha1 = {lk['matched_alpha1']:+.4f} +- "
                         f"{lk['matched_alpha1_err']:.4f}, alpha2 = {lk['matched_alpha2']:+.4f}"
                         f" +- {lk['matched_alpha2_err']:.4f}; selected in one only: "
                         f"{lk['flips']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="working directory (resumable)")
    parser.add_argument("--seed", type=int, default=1, help="base seed (field k: seed*1000+k)")
    parser.add_argument("--fields", type=int, default=4, help="paired fields for m and c")
    parser.add_argument("--leakage-fields", type=int, default=0,
                        help="paired fields with a mean PSF shear, for alpha")
    parser.add_argument("--psf-g-offset", type=_pair, default=(0.03, 0.03),
                        help="mean PSF shear of the leakage fields (default 0.03,0.03)")
    parser.add_argument("--shear", type=_pair, default=(0.02, 0.0),
                        help="applied shear of the + half (default 0.02,0.0)")
    parser.add_argument("--processes", type=int, default=2, help="workers of every run")
    parser.add_argument("--model", choices=("psf_model", "psfex"), default="psf_model",
                        help="PSF model used by the tile chain")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="shear measurement: metacal on the SExtractor detections (ngmix, "
                             "final_cat) or metadetect (detection and measurement on each "
                             "sheared coadd, metadetect_cat; cuts MDET_FLAGS == 0, "
                             "MASK_FLAGS == 0, MDET_S2N > --snr-min, MDET_T_RATIO > "
                             "--t-ratio-min) (default: the plan's value for an existing "
                             "--output, else metacal)")
    parser.add_argument("--mdet-step", type=float, default=None, metavar="S",
                        help="with --method metadetect: the shear of the sheared images "
                             "(metadetect_runner STEP; default the example config's)")
    parser.add_argument("--full", action="store_true", help="MegaCam-size fields (slow)")
    parser.add_argument("--faint-star-density", type=float, default=None, metavar="N",
                        help="stars per arcmin^2 fainter than r = 21 (default: the survey's "
                             "power law, ~26; a high-latitude field has ~1)")
    parser.add_argument("--seed-by", choices=("position", "id"), default="position",
                        help="ngmix_runner SEED_BY: position (default) gives an object the "
                             "same metacal noise in both halves; id reproduces runs made "
                             "before this option (E1)")
    parser.add_argument("--rotated-twins", action=argparse.BooleanOptionalAction, default=True,
                        help="field 2i+1 is field 2i's sky with every intrinsic shape turned "
                             "by 90 degrees, so that the shape noise cancels in c (default); "
                             "--no-rotated-twins: a fresh sky per field (runs made before "
                             "the option, E1)")
    parser.add_argument("--scene-shear", choices=("groups", "field", "none"), default=None,
                        help="how galaxy positions shear (make_survey's scene_shear): each "
                             "group of galaxies closer than 4\" about its centre (groups: "
                             "blends respond as in a lensed scene and isolated galaxies keep "
                             "their pixel noise in both halves), about the tile centre "
                             "(field: every galaxy moves onto other noise), or not (none: "
                             "E1-E3) (default: the plan's value for an existing --output, "
                             "else groups)")
    parser.add_argument("--twin-noise", choices=("negated", "same"), default=None,
                        help="noise of a rotated twin: the sky's noise with its sign flipped "
                             "(negated), or the same (E2, E3) (default: the plan's value for "
                             "an existing --output, else negated)")
    parser.add_argument("--neighbour-masks", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="ngmix_runner MASK_NEIGHBOURS (default on, as the example config); "
                             "--no-neighbour-masks: a diagnostic of what the masks do")
    parser.add_argument("--round-cuts", action="store_true",
                        help="cut on the round-model S/N and size (NGMIX_SNR_R, NGMIX_T_R) "
                             "instead of the fitted model's (outputs: shear_bias_round*)")
    parser.add_argument("--spread-class", type=int, default=1,
                        help="SPREAD_CLASS kept (-1: no class cut; the T/Tpsf cut then "
                             "removes the stars)")
    parser.add_argument("--star-clearance", type=float, default=0.0, metavar="ARCSEC",
                        help="also report m without the detections that have a true star "
                             "within ARCSEC (a truth-based diagnostic of star blends)")
    parser.add_argument("--snr-min", type=float, default=10.0,
                        help="S/N cut (NGMIX_SNR, or MDET_S2N with metadetect; default 10)")
    parser.add_argument("--t-ratio-min", type=float, default=0.5,
                        help="size cut (T/Tpsf, or MDET_T_RATIO with metadetect; default 0.5)")
    parser.add_argument("--size-sigma", type=float, default=None, metavar="K",
                        help="metadetect: also MDET_T_RATIO > K MDET_T_RATIO_ERR (a size "
                             "significantly above zero, which stars rarely reach)")
    parser.add_argument("--report", action="store_true",
                        help="analyse the fields already done, run nothing")
    parser.add_argument("--compare", metavar="DIR",
                        help="with --report: paired differences (this run - DIR) on the "
                             "fields both have (same seed), e.g. PSFEx against the built-in "
                             "PSF model, or metadetect against metacal")
    args = parser.parse_args(argv)
    if args.fields < 1 or args.leakage_fields < 0 or args.processes < 1:
        parser.error("--fields >= 1, --leakage-fields >= 0, --processes >= 1")
    if args.rotated_twins and args.fields % 2:
        parser.error(f"--fields {args.fields}: with rotated twins the fields come in pairs "
                     "(an even number), or pass --no-rotated-twins")
    if args.leakage_fields > args.fields:
        parser.error(f"--leakage-fields {args.leakage_fields}: at most --fields "
                     f"({args.fields}), each leakage field repeats a normal field's sky")
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:7.0f}s] {msg}", flush=True)

    plan_path = os.path.join(out, "plan.json")
    old = None
    if os.path.isfile(plan_path):
        with open(plan_path, encoding="utf-8") as handle:
            old = json.load(handle)
    # Options added after a plan was written default to that plan's (absent: off) value.
    if args.scene_shear is None:
        args.scene_shear = old.get("scene_shear", "none") if old else "groups"
    if args.twin_noise is None:
        args.twin_noise = old.get("twin_noise", "same") if old else "negated"
    if args.method is None:
        args.method = old.get("method", "metacal") if old else "metacal"
    if args.method == "metadetect":
        # Options of the ngmix measurement and of the SExtractor catalogue's columns.
        for bad, given in (("--round-cuts", args.round_cuts),
                           ("--spread-class", args.spread_class != 1),
                           ("--no-neighbour-masks", not args.neighbour_masks)):
            if given:
                parser.error(f"{bad}: not applicable with --method metadetect")
    plan = {"seed": args.seed, "fields": args.fields, "leakage_fields": args.leakage_fields,
            "psf_g_offset": list(args.psf_g_offset), "shear": list(args.shear),
            "model": args.model, "full": args.full}
    if args.seed_by != "id":
        # Plans written before the option existed ran with "id" and do not record it.
        plan["seed_by"] = args.seed_by
        plan["leakage_sky"] = "paired"
    if args.rotated_twins:
        plan["rotated_twins"] = True
        if args.twin_noise != "same":
            plan["twin_noise"] = args.twin_noise
    if args.scene_shear != "none":
        plan["scene_shear"] = args.scene_shear
    if not args.neighbour_masks:
        plan["neighbour_masks"] = False
    if args.method != "metacal":
        # Plans written before the option ran metacal and do not record it.
        plan["method"] = args.method
    if args.faint_star_density is not None:
        plan["faint_star_density"] = args.faint_star_density
    if args.mdet_step is not None:
        if args.method != "metadetect":
            parser.error("--mdet-step: only with --method metadetect")
        if not 0 < args.mdet_step < 0.1:
            # metadetect_runner's own bound: beyond it the finite difference is not linear.
            parser.error(f"--mdet-step {args.mdet_step}: expected 0 < S < 0.1 "
                         "(metadetect_runner STEP)")
        plan["mdet_step"] = args.mdet_step
    if old is not None:
        if old != plan:
            parser.error(f"{plan_path} records another plan ({old}); use another --output")
    else:
        write_text(json.dumps(plan, indent=1) + "\n", plan_path)
    if args.scene_shear == "field" and args.seed_by == "position":
        def configs(meta):
            # One config set per half: SEED_SCENE_SHEAR holds the half's own shear (with
            # "groups", an object moves by < 0.5": its cell is kept without it).
            half = meta.get("paired") or "single"
            return write_configs(os.path.join(out, "configs", half), args.model, args.processes,
                                 args.seed_by, (*meta["shear"], *meta["shear_centre"]),
                                 mask_neighbours=args.neighbour_masks, method=args.method,
                                 mdet_step=args.mdet_step)
    else:
        configs = write_configs(os.path.join(out, "configs"), args.model, args.processes,
                                args.seed_by, mask_neighbours=args.neighbour_masks,
                                method=args.method, mdet_step=args.mdet_step)
    field_info = collect_fields(out, args, configs, log, args.report)
    mdet_cuts = {"flags": True, "snr_min": args.snr_min, "t_ratio_min": args.t_ratio_min,
                 "size_sigma": args.size_sigma}
    if args.method == "metadetect":
        cuts = dict(mdet_cuts)
    else:
        cuts = {"flags": True, "snr_min": args.snr_min, "t_ratio_min": args.t_ratio_min,
                "spread_class": None if args.spread_class < 0 else args.spread_class}
    if args.round_cuts:
        cuts["round"] = True
        first = next((f["cats"]["plus"][0] for f in field_info if f["cats"]["plus"]), None)
        if first is not None and "NGMIX_SNR_R_NOSHEAR" not in sv.fits.getdata(
                first, "RESULTS").columns.names:
            raise SystemExit(f"--round-cuts: {first} has no NGMIX_SNR_R_NOSHEAR column (made "
                             "before the round measurements existed)")
    summary = analyse(field_info, args.shear, cuts, log,
                      paired_leakage=plan.get("leakage_sky") == "paired",
                      star_clearance=args.star_clearance or None, method=args.method)
    summary["plan"] = plan
    text = format_summary(summary)
    if args.compare:
        other_plan = os.path.join(os.path.abspath(args.compare), "plan.json")
        if not os.path.isfile(other_plan):
            parser.error(f"--compare {args.compare}: no plan.json (not a shear_bias.py output)")
        with open(other_plan, encoding="utf-8") as handle:
            other_plan = json.load(handle)
        other_method = other_plan.get("method", "metacal")
        if other_plan.get("seed") != args.seed:
            parser.error(f"--compare {args.compare}: seed {other_plan.get('seed')}, this "
                         f"run's is {args.seed}: not the same skies")
        # The other run's own field counts name its directories (leakage fields follow the
        # normal ones); only its finished fields are read.
        other_args = argparse.Namespace(**dict(
            vars(args), fields=other_plan.get("fields", args.fields),
            leakage_fields=other_plan.get("leakage_fields", 0)))
        other = collect_fields(os.path.abspath(args.compare), other_args, configs, log, True)
        # The other run may use the other method (the same skies measured both ways): each
        # run is read with its own method, and the cuts' numbers.
        other_cuts = (dict(mdet_cuts) if other_method == "metadetect" else
                      dict(cuts, spread_class=None if args.spread_class < 0
                           else args.spread_class))
        run_a = field_sums(other, _selector(other_cuts, other_method), method=other_method)
        run_b = field_sums(field_info, _selector(cuts, args.method), method=args.method)
        try:
            run_a, run_b = common_fields(run_a, run_b)
        except ValueError as err:
            parser.error(f"--compare {args.compare}: {err}")
        d = compare(run_a, run_b, args.shear, sky_groups(run_b["skies"]))
        summary["compare"] = dict(d, other=os.path.abspath(args.compare),
                                  n_fields=len(run_b["normal"]),
                                  n_leakage_fields=min(len(run_a["leaky"]),
                                                       len(run_b["leaky"])))
        text += "\n" + (f"  paired difference (this run - {args.compare}, on the "
                        f"{len(run_b['normal'])} fields both have): ") + "; ".join(
            f"{k[2:]} {d[k]:+.4f} +- {d[k + '_err']:.4f}" for k in d if not k.endswith("_err"))
    stem = "shear_bias" + ("_round" if args.round_cuts else "") + (
        "" if args.spread_class == 1 else f"_class{args.spread_class}".replace("-", "m"))
    write_text(json.dumps(summary, indent=1, default=float) + "\n",
               os.path.join(out, stem + ".json"))
    plot(os.path.join(out, stem + ".png"), summary)
    print(text)
    return 0


def collect_fields(out, args, configs, log, report):
    """Run (or, with ``report``, only find) every field of the plan; their catalogues."""
    field_info = []
    for k in range(args.fields + args.leakage_fields):
        leak = k >= args.fields
        # Leakage field j is normal field j's sky (same seed: objects, shapes, noise) with the
        # PSF offset: alpha comes from per-field differences in which shape noise cancels.
        sky = k - args.fields if leak else k
        # Rotated twins: fields 2i and 2i+1 share the seed, the second with turned shapes.
        seed_index, rotated = (sky // 2, bool(sky % 2)) if args.rotated_twins else (sky, False)
        fdir = os.path.join(out, "fields", f"{'leak' if leak else 'field'}_{k:03d}")
        if report:
            done = [os.path.join(fdir, f"{h}.done") for h in HALVES]
            if not all(os.path.isfile(d) for d in done):
                log(f"{os.path.basename(fdir)}: not done, left out of the report")
                continue
        cats = run_field(fdir, field_seed(args.seed, seed_index), args.shear,
                         args.psf_g_offset if leak else None, configs, args.processes,
                         args.full, log, rotated=rotated, scene_shear=args.scene_shear,
                         negate_noise=rotated and args.twin_noise == "negated",
                         method=getattr(args, "method", "metacal"),
                         faint_star_density=getattr(args, "faint_star_density", None))
        field_info.append({"cats": cats, "leakage": leak, "sky": seed_index,
                           "truth": {h: os.path.join(fdir, "data", h, "truth") for h in HALVES}})
    return field_info


if __name__ == "__main__":
    sys.exit(main())
