"""The process's place in the job: MPI world, local rank, device, threads, signal flags."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import torch

from radmm_hpc.comm import MPI, Comm, CommTimeout
from radmm_hpc.errors import CollectiveError, ConfigError, UserError


class SignalFlags:
    """SIGUSR1/SIGTERM only set a flag; the loop acts on it at the next iteration boundary."""

    def __init__(self):
        self.received = 0

    def install(self) -> None:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.received = signum


@dataclass
class Runtime:
    comm: Comm
    local_rank: int = 0
    local_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    threads: int = 1
    signals: SignalFlags = field(default_factory=SignalFlags)

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    @property
    def is_root(self) -> bool:
        return self.comm.rank == 0


def init_world() -> Runtime:
    """Join the MPI world (or run alone when no MPI is there) and find the local rank."""
    if MPI is None:
        if any(v in os.environ for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")):
            raise ConfigError("started by an MPI launcher but mpi4py cannot load an MPI library: "
                              "pip install mpich (or build mpi4py against your cluster's MPI)")
        return Runtime(comm=Comm(None))
    world = MPI.COMM_WORLD
    comm = Comm(world if world.Get_size() > 1 else None)
    if world.Get_size() > 1:
        node = world.Split_type(MPI.COMM_TYPE_SHARED)
        local_rank, local_size = node.Get_rank(), node.Get_size()
        node.Free()
    else:
        local_rank, local_size = 0, 1
    return Runtime(comm=comm, local_rank=local_rank, local_size=local_size)


def expected_world_size(configured: int) -> int:
    """The world size this job should have: the config's, else Slurm's task count, else 0."""
    if configured:
        return configured
    if "SLURM_JOB_ID" in os.environ and os.environ.get("SLURM_NTASKS", "").isdigit():
        return int(os.environ["SLURM_NTASKS"])
    return 0


def check_world_size(rt: Runtime, configured: int) -> None:
    want = expected_world_size(configured)
    if want and want != rt.size:
        how = "train.world_size" if configured else "SLURM_NTASKS"
        hint = (" (is the launcher reaching Slurm's PMI? see docs/slurm.md)" if rt.size == 1 else "")
        raise ConfigError(f"{how} = {want} but this job has {rt.size} ranks{hint}")


def bind_device(rt: Runtime, pref: str) -> None:
    """One device per rank: cuda:(local_rank % count) when asked for or available, else cpu."""
    count = torch.cuda.device_count() if pref in ("auto", "cuda") else 0
    if pref == "cuda" and count == 0:
        raise ConfigError("train.device = cuda but no CUDA device is visible")
    if count:
        rt.device = torch.device("cuda", rt.local_rank % count)
        torch.cuda.set_device(rt.device)
    else:
        rt.device = torch.device("cpu")


def pin_threads(rt: Runtime) -> None:
    """Share the node's cores among its ranks so that ranks do not fight over them."""
    if "OMP_NUM_THREADS" in os.environ and os.environ["OMP_NUM_THREADS"].isdigit():
        rt.threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cores = os.cpu_count() or 1
        rt.threads = max(1, cores // max(1, rt.local_size))
    torch.set_num_threads(rt.threads)


def agree(rt: Runtime, fn, *args, **kwargs):
    """Run fn on every rank; a UserError on any rank becomes a CollectiveError on all of them
    (the lowest failing rank's message), so that no rank is left waiting in a collective."""
    err, result = None, None
    try:
        result = fn(*args, **kwargs)
    except CommTimeout:     # a peer is gone: no agreement is possible, the CLI ends the job
        raise
    except UserError as exc:
        err = (str(exc), exc.exit_code)
    for e in rt.comm.allgather_obj(err):
        if e is not None:
            raise CollectiveError(*e)
    return result


def on_root(rt: Runtime, fn, *args, **kwargs):
    """Run fn on rank 0 only and broadcast its result; a UserError there ends every rank
    together (through agree), so the other ranks never wait for a broadcast that won't come."""
    result = agree(rt, fn, *args, **kwargs) if rt.is_root else agree(rt, lambda: None)
    return rt.comm.bcast_obj(result)
