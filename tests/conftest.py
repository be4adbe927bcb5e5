"""Fixtures: the CLI launcher, the communicator a test body runs on (COMM_SELF in the serial
suite, COMM_WORLD under mpiexec), its Runtime, and a run directory every rank shares."""

import shutil
import tempfile

import pytest

from tests.support import run_cli, runtime, world


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(params=["self", pytest.param("world", marks=pytest.mark.mpi(min_size=2))])
def comm(request):
    """None (one process, no MPI) in the serial suite, MPI.COMM_WORLD in the MPI suite: one test
    body for both where serial and MPI tests would repeat each other."""
    return world() if request.param == "world" else None


@pytest.fixture
def rt(comm):
    """A fresh Runtime on the test's communicator per call (each run counts its own bytes)."""
    return lambda: runtime(comm)


def _shared_tmp(c):
    """One temporary directory for all ranks of c: rank 0 makes it and removes it after every
    rank is done."""
    path = c.bcast(tempfile.mkdtemp(prefix="radmm-mpi-") if c.Get_rank() == 0 else None)
    yield path
    c.Barrier()
    if c.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_dir():
    """A temporary directory every rank of the world shares."""
    yield from _shared_tmp(world())


@pytest.fixture
def run_root(comm, tmp_path):
    """A directory for a test's runs: tmp_path on one process, a shared one under MPI."""
    if comm is None:
        yield str(tmp_path)
    else:
        yield from _shared_tmp(comm)
