#!/usr/bin/env bash
# Build .peers/deformetrica: a Python 3.11 virtual environment with Deformetrica 4.3.0, unmodified, on torch 2.13 CPU.
#
# Deformetrica 4.3.0 pins torch==1.6, torchvision==0.7 and pykeops==1.4.1, none of which installs on Python 3.11.
# So: torch==2.13.0 (the CPU build; never an unpinned torch, which pulls a multi-GB CUDA build), Deformetrica
# with --no-deps, and its other requirements (from its METADATA: numpy, scikit-learn, matplotlib, nibabel,
# pillow, psutil, vtk, pykeops, PyQt5, torchvision) at versions that install on 3.11 (the ones tested), except:
#   - torchvision: only deformetrica/launch/estimate_deep_pga.py imports it, never loaded for a registration;
#   - PyQt5: only its GUI imports it; scripts/shape_peers/deformetrica_compat.py stubs the GUI out.
# scipy is not in its METADATA but is imported (its ScipyLBFGS estimator). The runner applies the small shim
# of deformetrica_compat.py at import time (see scripts/shape_peers/README.md).
#
# Usage (from anywhere; about 2 GB on disk, a few minutes):
#     bash scripts/shape_peers/setup_deformetrica.sh           # builds .peers/deformetrica unless it works already
#     bash scripts/shape_peers/setup_deformetrica.sh --force   # rebuilds it
# PYTHON=/path/to/python3.11 picks the interpreter (default: python3.11).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.peers/deformetrica"
PYTHON="${PYTHON:-python3.11}"
CHECK="import sys; sys.path.insert(0, '$ROOT/scripts/shape_peers'); import deformetrica_compat
print('Deformetrica', deformetrica_compat.load().__version__, 'ready in $VENV')"

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$VENV"
elif [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null | grep -q ready; then
    echo "$VENV already holds a working Deformetrica (--force rebuilds it)"
    exit 0
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    echo "setup_deformetrica.sh: needs Python 3.11 (set PYTHON=...), got: $("$PYTHON" --version 2>&1)" >&2
    exit 1
fi

rm -rf "$VENV"
mkdir -p "$ROOT/.peers"
trap 'echo "setup_deformetrica.sh: failed; removing the partial $VENV" >&2; rm -rf "$VENV"' ERR
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" --no-deps deformetrica==4.3.0
"${PIP[@]}" numpy==2.4.6 scipy==1.17.1 scikit-learn==1.9.1 matplotlib==3.11.2 nibabel==5.4.2 pillow==13.0.0 \
    psutil==7.2.2 vtk==9.7.2 pykeops==2.3 keopscore==2.3
"$VENV/bin/python" -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.endswith('+cpu') else
    f'setup_deformetrica.sh: torch {v} is not the CPU build')"
"$VENV/bin/python" -c "$CHECK"
