#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite, MPI and slow tests included.
# Extra arguments go to pytest, e.g.  scripts/run_tests.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
.venv/bin/python -m pytest -q "$@"
