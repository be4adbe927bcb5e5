#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) with everything the main job and
# the tests need: CPU PyTorch (pinned first, so that no CUDA stack is pulled in), MPICH and
# mpi4py from PyPI, h5py, pytest/pytest-mpi, matplotlib, scikit-learn, tensorboard, safetensors.
# Idempotent: a second run with an unchanged setup.py does nothing.
# GPU users: TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>" bash scripts/setup-env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp="$VENV/.radmm_hpc-installed"
want="$(cat setup.py scripts/setup-env.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q $TORCH_SPEC
"$VENV/bin/python" -m pip install -q -e ".[mpich,test,plots,digits,tensorboard,export]"
"$VENV/bin/python" -c "import torch, mpi4py.MPI, h5py" >/dev/null
echo "$want" > "$stamp"
echo "environment ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
