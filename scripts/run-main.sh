#!/usr/bin/env bash
# Set up (idempotent) and run the main job: 8 MPI ranks on the bundled Wine Quality data.
# Extra arguments go to radmm_hpc, e.g.  bash scripts/run-main.sh --iters 50
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export PATH="$PWD/.venv/bin:$PATH"
exec mpirun -n "${NP:-8}" python -m radmm_hpc "$@"
