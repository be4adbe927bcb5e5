"""The process's place in the job: MPI world, local rank, device, threads, signal flags, the
launcher checks, and what run.json records about the job."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import torch

from radmm_hpc.comm import MPI, Comm, CommTimeout
from radmm_hpc.errors import CollectiveError, ConfigError, UserError

# preemption signals: Slurm's --signal (USR1 in jobs/), submitit's USR2, scancel's TERM
PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class SignalFlags:
    """SIGUSR1/SIGUSR2/SIGTERM only set a flag; the loop acts on it at the next iteration boundary."""

    def __init__(self):
        self.received = 0

    def install(self) -> None:
        for sig in PREEMPT_SIGNALS:
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
    run_dir: str = ""             # once known: where run outputs and tracebacks go
    ranks: list = field(default_factory=list)   # rank 0: every rank's host, pid, device, threads
                                                # (gather_ranks)

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


def launcher_problem(rt: Runtime) -> str | None:
    """One line when this process was not started as a rank of one MPI world with its peers:
    torchrun's processes, or srun's tasks when the MPI library cannot use Slurm's PMI, are each a
    world of their own and would train side by side into the same run directory."""
    if rt.size != 1:
        return None
    env = os.environ
    torchrun = env.get("WORLD_SIZE") if ("TORCHELASTIC_RUN_ID" in env or "LOCAL_WORLD_SIZE" in env) else None
    if torchrun and torchrun.isdigit() and int(torchrun) > 1:
        return (f"torchrun started {torchrun} processes and each is a one-rank MPI world of its own: "
                f"radmm_hpc is an MPI program, start it with mpirun -n {torchrun} python -m radmm_hpc ...")
    tasks = env.get("SLURM_STEP_NUM_TASKS", "")
    if "SLURM_STEP_ID" in env and tasks.isdigit() and int(tasks) > 1:
        return (f"srun started {tasks} tasks and each is a one-rank MPI world of its own (this MPI "
                f"library cannot use Slurm's PMI): start the ranks with mpirun -n {tasks} python -m "
                f"radmm_hpc ... inside the allocation (or LAUNCHER=mpirun for jobs/), or use an MPI "
                f"built for Slurm with srun --mpi=pmix (docs/slurm.md)")
    return None


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
        ranks = f"{rt.size} rank{'s' if rt.size != 1 else ''}"
        if configured:
            raise ConfigError(f"train.world_size = {want} but this job has {ranks}: start {want} "
                              f"(mpirun -n {want} ...) or set --set train.world_size={rt.size}")
        raise ConfigError(f"this Slurm allocation has SLURM_NTASKS = {want} tasks but this job has {ranks}: "
                          f"start them all with mpirun -n {want} python -m radmm_hpc ..., or run on "
                          f"{ranks} on purpose with --set train.world_size={rt.size} (docs/slurm.md)")


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
    """Threads per rank: OMP_NUM_THREADS, else Slurm's --cpus-per-task (each task has those
    cores), else this process's cores shared among the node's ranks."""
    env = os.environ
    if env.get("OMP_NUM_THREADS", "").isdigit():
        rt.threads = max(1, int(env["OMP_NUM_THREADS"]))
    elif env.get("SLURM_CPUS_PER_TASK", "").isdigit():
        rt.threads = max(1, int(env["SLURM_CPUS_PER_TASK"]))
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cores = os.cpu_count() or 1
        rt.threads = max(1, cores // max(1, rt.local_size))
    torch.set_num_threads(rt.threads)


def set_determinism(rt: Runtime, deterministic: bool) -> None:
    """train.deterministic: PyTorch's deterministic algorithms; on CUDA cuBLAS also needs a fixed
    workspace (CUBLAS_WORKSPACE_CONFIG, read when its first handle is made, so set it here, before
    any matrix product; a value the user set is kept)."""
    if not deterministic:
        return
    if rt.device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def rank_info(rt: Runtime) -> dict:
    import socket
    return {"rank": rt.rank, "host": socket.gethostname(), "pid": os.getpid(), "device": str(rt.device),
            "threads": rt.threads, "local_rank": rt.local_rank}


def gather_ranks(rt: Runtime) -> list:
    """Collective: every rank's rank_info on rank 0 (kept in rt.ranks there); [] elsewhere."""
    rt.ranks = rt.comm.gather_obj(rank_info(rt)) or []
    return rt.ranks


def startup_lines(rt: Runtime) -> list:
    """Collective: on rank 0 one line per rank (host, device, threads); [] elsewhere."""
    return [f"radmm-hpc: rank {r['rank']}/{rt.size} on {r['host']} (pid {r['pid']}): device {r['device']}, "
            f"{r['threads']} thread{'s' if r['threads'] != 1 else ''}" for r in gather_ranks(rt)]


# the MPI binding and the pip MPI library, whose versions run.json records
MPI_PACKAGES = ("mpi4py", "mpich")


def mpi_library() -> str:
    """The MPI library's own version line (or 'none' without MPI)."""
    if MPI is None:
        return "none"
    return " ".join(MPI.Get_library_version().strip().splitlines()[0].split())


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
