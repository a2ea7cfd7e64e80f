#!/usr/bin/env bash
# Set up everything ShapePipe-py needs on a fresh Debian-like machine:
#   - the reference programs (SExtractor, PSFEx) and OpenMPI, through apt-get when run as root;
#   - a virtual environment .venv with the package (editable), its test tools and mpi4py.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v source-extractor >/dev/null 2>&1 || need+=(source-extractor)
command -v psfex >/dev/null 2>&1 || need+=(psfex)
command -v mpiexec >/dev/null 2>&1 || need+=(openmpi-bin)
command -v mpicc >/dev/null 2>&1 || need+=(libopenmpi-dev)
if ((${#need[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: apt-get install ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "bootstrap: warning: missing ${need[*]} (install them with your package manager;" \
             "tests that compare with SExtractor/PSFEx or use MPI will be skipped)" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv"
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
extras="test"
if command -v mpicc >/dev/null 2>&1; then
    extras="test,mpi"
fi
echo "bootstrap: pip install -e .[$extras]"
.venv/bin/python -m pip install -q -e ".[$extras]"
.venv/bin/python -c "import shapepipe, numpy, astropy, sep, galsim, h5py, sqlitedict, joblib, numba" \
    || { echo "bootstrap: the Python environment is incomplete" >&2; exit 1; }
echo "bootstrap: ready (.venv)"
