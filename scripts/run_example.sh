#!/usr/bin/env bash
# The main job: set up (scripts/bootstrap.sh), generate the simulated survey (once), and run
# the example chain on it. Data go to $SP_DATA (default ./sp_data), runs to $SP_RUN
# (default ./sp_runs). Extra arguments go to make_example_data.py (e.g. --seed 7).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export SP_DATA=${SP_DATA:-$PWD/sp_data}
export SP_RUN=${SP_RUN:-$PWD/sp_runs}
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

step() { echo; echo "=== $*"; }

if [ ! -f "$SP_DATA/truth/survey.json" ]; then
    step "simulated survey -> $SP_DATA"
    $PY scripts/make_example_data.py --output "$SP_DATA" --des --processes 2 "$@"
else
    step "simulated survey already in $SP_DATA (delete it to regenerate)"
fi

step "framework examples (example/config_example.ini)"
$PY shapepipe_run.py -c example/config_example.ini

step "single exposures: split, headers, mask, sextractor, setools, PSFEx, validation"
$PY shapepipe_run.py -c example/config_exp.ini

run=$(ls -td "$SP_RUN"/run_sp_exp_* | head -n 1)
for model in psfex_interp_runner_run_1 psfex_interp_runner_run_2; do
    step "PSF validation of $model (rho statistics, residual maps, comparison with truth)"
    $PY scripts/psf_validation.py "$run/$model/output" --truth "$SP_DATA/truth" \
        -o "$run/psf_validation_$model"
done

step "DES-like multi-band postage stamps"
$PY shapepipe_run.py -c example/config_des.ini

step "done: runs in $SP_RUN (manifest $SP_RUN/log_run_sp.jsonl)"
