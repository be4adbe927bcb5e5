import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args, ranks=1, timeout=120, cwd=None, env_extra=None):
    """Run `python -m radmm_hpc ARGS` (under mpiexec when ranks > 1). Returns (proc, seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("SLURM_JOB_ID", None)
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "radmm_hpc", *args]
    if ranks > 1:
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        cmd = [mpiexec if os.path.exists(mpiexec) else "mpiexec", "-n", str(ranks)] + cmd
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=env)
    return proc, time.perf_counter() - t0


@pytest.fixture
def cli():
    return run_cli


def mpi_all(flag: bool) -> bool:
    """True on every rank only if `flag` is true on every rank."""
    from mpi4py import MPI
    return bool(MPI.COMM_WORLD.allreduce(int(bool(flag)), op=MPI.MIN))


def world():
    """MPI.COMM_WORLD (imported here so that serial runs never load MPI)."""
    from mpi4py import MPI
    return MPI.COMM_WORLD


@pytest.fixture
def shared_dir():
    """One temporary directory for all ranks of an MPI test: rank 0 makes it and removes it after
    every rank is done."""
    import shutil
    import tempfile
    comm = world()
    path = comm.bcast(tempfile.mkdtemp(prefix="radmm-mpi-") if comm.Get_rank() == 0 else None)
    yield path
    comm.Barrier()
    if comm.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)
