"""PSF model degree selection (psf_model ``DEGREE_SELECTION = PRESS``) against fixed degrees.

On synthetic star catalogues (``shapepipe.sim.psf_stars``: Moffat PSF whose size and shear
vary over the CCD, S/N 50-500 log-uniform, VIGNET 25x25) the built-in model is fitted with
the configured degree 2 (``NONE``), with degree 1, and with ``PRESS`` (degree 2 or lower,
chosen per catalogue). Each model is compared with the true PSF at 60 held-out random
positions (HSM e1, e2 and relative sigma; rms over positions, then median over seeds).

Fields: ``quadratic`` = ``MoffatField()`` (size +-3.6%, quadratic in y; the tests' field),
``linear`` = ``MoffatField(fwhm_grad=0.02, g_amp=0.01)`` (weak, nearly linear). Star counts:
30 (the default survey's 1024x1280 CCDs hold 27-46 training stars) and 270 (a --full
MegaCam CCD, as bench_psf.py). Time: median wall time of one fit, PRESS / NONE.

Run: ``python bench/bench_psf_degree.py`` (``--seeds N``, default 3).
"""

import argparse
import os
import sys
import tempfile
import time

import galsim
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shapepipe.modules.psf_model import fit_psf  # noqa: E402
from shapepipe.sim.psf_stars import MoffatField, make_star_catalogue  # noqa: E402
from shapepipe.utils.ldac import read_ldac  # noqa: E402

SIZE = 25
FIELDS = {"quadratic": MoffatField(), "linear": MoffatField(fwhm_grad=0.02, g_amp=0.01)}


def hsm(image):
    res = galsim.hsm.FindAdaptiveMom(galsim.ImageD(image), strict=False)
    return np.array([res.observed_shape.g1, res.observed_shape.g2, res.moments_sigma])


def held_out_rms(model, psf, positions, truth_moments):
    stamps = model.pixel_stamps(positions, size=SIZE)
    got = np.array([hsm(s) for s in stamps])
    diff = got - truth_moments
    diff[:, 2] /= truth_moments[:, 2]
    return np.sqrt((diff**2).mean(axis=0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    work = tempfile.mkdtemp(prefix="bench_psf_degree_")
    print("field      stars  fit        chosen degrees   rms e1 / e2 / size at held-out (1e-3)"
          "   time (s)")
    for name, psf in FIELDS.items():
        ny, nx = psf.ccd_shape
        positions = np.stack([rng.uniform(30, nx - 30, 60), rng.uniform(30, ny - 30, 60)], 1)
        truth = np.array([hsm(psf.draw(x, y, SIZE)) for x, y in positions])
        for n_stars in (30, 270):
            rows = {"NONE": [], "degree 1": [], "PRESS": []}
            times = {"NONE": [], "degree 1": [], "PRESS": []}
            chosen = []
            for seed in range(1, args.seeds + 1):
                path = os.path.join(work, f"{name}_{n_stars}_{seed}.fits")
                make_star_catalogue(path, n_stars=n_stars, size=SIZE, psf=psf, seed=seed)
                data, _ = read_ldac(path)
                pos = np.stack([data["XWIN_IMAGE"], data["YWIN_IMAGE"]], 1)
                for label, kwargs in (("NONE", {"degrees": (2,)}), ("degree 1", {"degrees": (1,)}),
                                      ("PRESS", {"degrees": (2,), "degree_selection": "PRESS"})):
                    start = time.perf_counter()
                    res = fit_psf(data["VIGNET"], pos, pos, flux_guess=data["FLUX_APER"][:, 0],
                                  snr=data["SNR_WIN"], **kwargs)
                    times[label].append(time.perf_counter() - start)
                    rows[label].append(held_out_rms(res.model, psf, positions, truth))
                    if label == "PRESS":
                        chosen.append(res.degrees[0])
            for label in rows:
                med = np.median(rows[label], axis=0) * 1e3
                degs = ",".join(str(d) for d in chosen) if label == "PRESS" else "-"
                print(f"{name:10s} {n_stars:5d}  {label:9s}  {degs:15s}  "
                      f"{med[0]:5.2f} / {med[1]:5.2f} / {med[2]:5.2f}"
                      f"                    {np.median(times[label]):.2f}")
            ratio = np.median(times["PRESS"]) / np.median(times["NONE"])
            print(f"{'':17s}time ratio PRESS/NONE (median of {args.seeds}): {ratio:.2f}")
    print("(machine shared with other runs: times are indicative)")


if __name__ == "__main__":
    main()
