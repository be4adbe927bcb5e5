"""Run as the ranks of a job across the test nodes; rank 0 prints one JSON line.

    probe.py transport   ranks 0, 1 on one node, rank 2 on another: rank 0 sends SIZE bytes to
                         rank 1, then to rank 2; each node's interface byte counters are read by
                         its ranks around each transfer
    probe.py local       what every rank's runtime decides about its node: hostname, local
                         rank and size, threads per rank, and the device index it would take
                         with two GPUs per node (torch.cuda is stubbed to two devices)
"""

import json
import os
import socket
import sys

import numpy as np
from mpi4py import MPI

SIZE = 32 * 2**20


def iface_bytes() -> dict:
    """{interface: [rx, tx]} of this process's network namespace (its node)."""
    out = {}
    with open("/proc/net/dev") as fh:
        for line in fh.readlines()[2:]:
            name, rest = line.split(":", 1)
            f = rest.split()
            out[name.strip()] = [int(f[0]), int(f[8])]
    return out


def transport(comm) -> dict:
    rank = comm.Get_rank()
    buf = np.ones(SIZE // 8)
    phases = {}
    for phase, peer in (("same_node", 1), ("other_node", 2)):
        comm.Barrier()
        before = iface_bytes()
        comm.Barrier()
        if rank == 0:
            comm.Send(buf, dest=peer)
        elif rank == peer:
            comm.Recv(buf, source=0)
        comm.Barrier()
        after = iface_bytes()
        delta = {k: [after[k][i] - before[k][i] for i in (0, 1)] for k in after}
        phases[phase] = comm.gather({"host": socket.gethostname(), "bytes": delta})
    return {"size": SIZE, "phases": phases}


def local(comm) -> dict:
    import torch

    from radmm_hpc.runtime import bind_device, init_world, pin_threads
    rt = init_world()
    pin_threads(rt)
    torch.cuda.device_count = lambda: 2          # two GPUs per node, without GPUs
    torch.cuda.set_device = lambda dev: None
    bind_device(rt, "cuda")
    me = {"rank": rt.rank, "host": socket.gethostname(), "processor": MPI.Get_processor_name(),
          "local_rank": rt.local_rank, "local_size": rt.local_size, "threads": rt.threads,
          "torch_threads": torch.get_num_threads(), "device": str(rt.device),
          "cores": len(os.sched_getaffinity(0))}
    return {"ranks": comm.gather(me)}


def main():
    comm = MPI.COMM_WORLD
    out = {"transport": transport, "local": local}[sys.argv[1]](comm)
    if comm.Get_rank() == 0:
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
