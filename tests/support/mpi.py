"""MPI for the tests: the world communicator, agreement of an outcome over ranks, and a Runtime
per communicator (the serial suite never loads MPI)."""

from __future__ import annotations

from radmm_hpc.comm import Comm
from radmm_hpc.runtime import Runtime


def world():
    """MPI.COMM_WORLD (imported here, on first use)."""
    from mpi4py import MPI
    return MPI.COMM_WORLD


def mpi_all(flag: bool, comm=None) -> bool:
    """True on every rank only if `flag` is true on every rank of comm (default: the world)."""
    from mpi4py import MPI
    return bool((comm or world()).allreduce(int(bool(flag)), op=MPI.MIN))


def on_root(comm, fn):
    """fn() on rank 0, its result on every rank (fn() itself with no communicator)."""
    if comm is None:
        return fn()
    return comm.bcast(fn() if comm.Get_rank() == 0 else None)


def runtime(mpi_comm=None) -> Runtime:
    """A Runtime on an mpi4py communicator; one rank (or None) runs without MPI."""
    return Runtime(comm=Comm(mpi_comm if mpi_comm is not None and mpi_comm.Get_size() > 1 else None))
