#!/usr/bin/env bash
# The main job: set up (scripts/bootstrap.sh), generate the simulated survey (once), and run
# the example chain on it: single exposures, the stack (tile) chain to a shear catalogue and
# its validation against truth, DES stamps, blended-galaxy training sets, pixel stores.
# Data go to $SP_DATA (default ./sp_data), runs to $SP_RUN (default ./sp_runs).
#   --psfex   also run the real PSFEx on the same stars (example/config_exp_psfex.ini) and
#             validate it beside the built-in model (adds ~2 minutes)
# Other arguments go to make_example_data.py (e.g. --seed 7).
set -euo pipefail
cd "$(dirname "$0")/.."
psfex=0
args=()
for a in "$@"; do
    if [ "$a" = "--psfex" ]; then psfex=1; else args+=("$a"); fi
done
bash scripts/bootstrap.sh
export SP_DATA=${SP_DATA:-$PWD/sp_data}
export SP_RUN=${SP_RUN:-$PWD/sp_runs}
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
start=$SECONDS

step() { echo; echo "=== [$((SECONDS - start)) s] $*"; }

if [ ! -f "$SP_DATA/truth/survey.json" ]; then
    step "simulated survey -> $SP_DATA"
    $PY scripts/make_example_data.py --output "$SP_DATA" --des --processes 2 "${args[@]}"
else
    step "simulated survey already in $SP_DATA (delete it to regenerate)"
fi

step "framework examples (example/config_example.ini)"
$PY shapepipe_run.py -c example/config_example.ini

step "single exposures: split, headers, mask, sextractor, setools, built-in PSF model"
$PY shapepipe_run.py -c example/config_exp.ini
run=$(ls -td "$SP_RUN"/run_sp_exp_2* | head -n 1)
step "PSF validation of the built-in model (rho statistics, residual maps, vs truth)"
$PY scripts/psf_validation.py "$run/psfex_interp_runner/output" --truth "$SP_DATA/truth" \
    -o "$run/psf_validation"
if [ "$psfex" = 1 ]; then
    step "PSFEx on the same stars, and its validation"
    $PY shapepipe_run.py -c example/config_exp_psfex.ini
    prun=$(ls -td "$SP_RUN"/run_sp_exp_psfex_* | head -n 1)
    $PY scripts/psf_validation.py "$prun/psfex_interp_runner/output" --truth "$SP_DATA/truth" \
        -o "$prun/psf_validation"
fi

step "stack chain: tile mask, detection, PSF, vignets, spread model, shapes, final catalogue"
$PY shapepipe_run.py -c example/config_tile.ini
trun=$(ls -td "$SP_RUN"/run_sp_tile_* | head -n 1)
step "shear validation against truth ($trun/shear_validation)"
$PY scripts/shear_validation.py "$trun" --truth "$SP_DATA/truth" -o "$trun/shear_validation"

step "DES-like multi-band postage stamps"
$PY shapepipe_run.py -c example/config_des.ini

step "blended-galaxy training set (CANDELS-blender's produce, concatenate, convert)"
$PY shapepipe_run.py -c example/config_blend.ini
blend_in=$(ls -d "$SP_RUN"/run_sp_blend_*/blend_runner/output/blend_input-* | tail -n 1)
blends="$SP_RUN/blend_sets"
rm -rf "$blends" && mkdir -p "$blends"  # produce refuses an existing output directory
$PY scripts/blend.py produce -n 200 -d "$blend_in" --use_clean_galaxies --seed 42 -o "$blends"
$PY scripts/blend.py concatenate -d "$blends/output-s_42-n_200" --method ogg_masks --delete
$PY scripts/blend.py convert -d "$blends/output-s_42-n_200" --zeropoint 30
$PY scripts/blend.py plot -d "$blends/output-s_42-n_200" -o "$blends/blends.png"

step "pixel, PSF and meta stores (forcepho's storage model)"
$PY shapepipe_run.py -c example/config_pixel_store.ini
ps_run=$(ls -td "$SP_RUN"/run_sp_pixel_store_* | head -n 1)
$PY scripts/plot_pixel_store.py "$ps_run/pixel_store_merge_runner/output" \
    --psf-dir "$run/psf_model_runner/output"

step "done in $((SECONDS - start)) s: runs in $SP_RUN (manifest $SP_RUN/log_run_sp.jsonl)"
