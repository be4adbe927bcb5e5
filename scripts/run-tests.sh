#!/usr/bin/env bash
# Set up (idempotent) and run every check: the static checks (ruff: pyflakes, import order, line
# length, ruff.toml; the architecture contracts of .importlinter: layers, no import cycles, the
# checkpoint module independent of the methods, the methods of each other), the serial suite, then
# the MPI suite at 2, 3, 4 and 8 ranks, then the Slurm job scripts. Every mpiexec runs under
# `timeout` and `python -m mpi4py` (an uncaught error on one rank aborts the job), so no hang can
# outlive its limit.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh || exit 1
export PATH="$PWD/.venv/bin:$PATH"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
status=0
echo "== static checks (ruff, import-linter)"
ruff check radmm_hpc tests bench || status=1
PYTHONPATH="$PWD" lint-imports --no-cache || status=1
timeout 2700 python -m pytest tests -q -p no:cacheprovider --ignore=tests/slurm --ignore=tests/multinode || status=1
for n in 2 3 4 8; do
    echo "== MPI suite on $n ranks"
    # only rank 0 reports (assertions are reduced over ranks, so rank 0 fails when any would)
    timeout 900 mpiexec -n "$n" sh -c '[ "${PMI_RANK:-0}" = 0 ] || exec >/dev/null;
        exec python -m mpi4py -m pytest tests -q -p no:cacheprovider --with-mpi -m mpi --ignore=tests/multinode' || status=1
done
# --- Slurm job scripts (jobs/, tests/slurm, docs/slurm.md) -----------------------------------
# Brings up a real single-node Slurm (munged, slurmctld, slurmd) inside the test run and submits
# jobs/radmm_cpu.sbatch, preempts it with SIGUSR1 and checks the requeue and a bit-identical resume.
# Needs root; installs slurm-wlm and munge with apt on first use; otherwise skips with the reason.
echo "== Slurm job scripts (tests/slurm)"
timeout 900 python -m pytest tests/slurm -q -p no:cacheprovider -rs || status=1
# --- end of the Slurm block ---------------------------------------------------------------------
# --- Multi-node runs across network namespaces (tests/multinode, docs/multinode.md) ------------
# Three "nodes" built from Linux namespaces on this machine, one MPI job across them (TCP between
# nodes, shared memory within): the methods' results, node loss, a network partition. Needs root;
# otherwise skips with the reason.
echo "== Multi-node (tests/multinode)"
timeout 1800 python -m pytest tests/multinode -q -p no:cacheprovider -rs || status=1
# --- end of the multi-node block ----------------------------------------------------------------
[ "$status" = 0 ] && echo "all test runs passed" || echo "SOME TEST RUNS FAILED"
exit "$status"
