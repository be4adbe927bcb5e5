"""Cost per call of the comm layer's operations on 2 ranks (the deadline's overhead: run it with
the comm.py before and after a change and compare). Rank 0 prints one JSON line:
{operation: [best wall µs per call, CPU µs per call]}.

    mpiexec -n 2 python -m bench.perf.comm_overhead
"""

import json
import time

import torch
from mpi4py import MPI

from radmm_hpc.comm import Comm


def main(reps=400, batches=5):
    comm = Comm(MPI.COMM_WORLD)
    peer = 1 - comm.rank
    small, mid, big = torch.zeros(2), torch.zeros(16384), torch.zeros(262144)   # 8 B, 64 KiB, 1 MiB
    ops = {
        "exchange 8 B": lambda: comm.exchange({peer: [small]}, {peer: [small]}),
        "exchange 64 KiB": lambda: comm.exchange({peer: [mid]}, {peer: [mid]}),
        "exchange 1 MiB": lambda: comm.exchange({peer: [big]}, {peer: [big]}),
        "allreduce 8 B (agree_flag)": lambda: comm.agree_flag(1),
        "allreduce 1 MiB": lambda: comm.allreduce_(big),
        "barrier": comm.barrier,
        "bcast_obj (dict)": lambda: comm.bcast_obj({"a": 1, "b": [1.0, 2.0]}),
        "allgather_obj (dict)": lambda: comm.allgather_obj({"compute": 1.0, "wait": 2.0}),
    }
    out = {}
    for name, fn in ops.items():
        n = reps // 8 if "1 MiB" in name else reps
        best, cpu = float("inf"), float("inf")
        for _ in range(batches):
            comm.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t0) / n)
            cpu = min(cpu, (time.process_time() - c0) / n)
        out[name] = [round(best * 1e6, 1), round(cpu * 1e6, 1)]
    if comm.rank == 0:
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
