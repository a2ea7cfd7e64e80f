#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite, MPI and slow tests included.
# Extra arguments go to pytest, e.g.  scripts/run_tests.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# Lint first: a ruff error fails the run (and CI, which calls this script).
.venv/bin/ruff check .
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
.venv/bin/python -m pytest -q "$@"
