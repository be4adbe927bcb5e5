"""Protocol self-test: start/stop cycles of the parameter-server protocol with trivial numerics
(used by tests/test_mpi_async.py and bench/soak/ps_protocol.py)."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace

import numpy as np

from radmm_hpc.algos.ps import protocol as ps


class EchoServer:
    """Hands each worker its rank, checks the answer (10 × rank), applies nothing."""

    def __init__(self):
        self.pushes = {}

    def open(self, w, msg):
        return ps.PARAMS

    def params(self, w, msg):
        msg.payload[:] = w
        return ps.PARAMS

    def push(self, w, msg, scale):
        if msg.payload[0] != 10 * w:
            raise RuntimeError(f"self-test: rank {w} answered {msg.payload[0]}")
        self.pushes[w] = self.pushes.get(w, 0) + 1


class EchoWorker:
    def __init__(self, rank, jitter_s=0.0, seed=0):
        self.rank, self.n, self.jitter = rank, 0, jitter_s
        self.rng = random.Random(seed * 1000 + rank)

    def work(self, tag, inbox, out):
        if inbox.payload[0] != self.rank:
            raise RuntimeError(f"self-test: rank {self.rank} was sent {inbox.payload[0]}")
        if self.jitter:
            time.sleep(self.rng.random() * self.jitter)   # uneven workers: other arrival orders
        out.payload[:] = 10 * self.rank
        out.hdr[:] = 0
        out.hdr[ps.VREAD], out.hdr[ps.EPOCH] = inbox.hdr[ps.VERSION], inbox.hdr[ps.EPOCH]
        self.n += 1
        return ps.PUSH


def start_stop_cycles(base, cycles: int, deterministic=False, policy="none", jitter_s=0.0,
                      n: int = 4, timeout_s: float = 30.0) -> bool:
    """Each cycle: duplicate the communicator (`base`, a radmm_hpc Comm), run one phase whose
    budget varies with the cycle and ends with STOP, free it. True when every cycle applied
    exactly its budget (pushes = applied + dropped) and every worker got its STOP."""
    pcfg = SimpleNamespace(staleness=policy, bound=1, deterministic=deterministic, timeout_s=timeout_s)
    ok = True
    for c in range(cycles):
        comm = base.dup()
        W = comm.size - 1
        budget = (c % 3) * W + c % 5          # includes 0 and budgets below W
        if comm.rank == 0:
            srv, app = ps.Server(comm, n, np.float32, pcfg), EchoServer()
            srv.run_phase(app, budget=budget, final=True)
            v = srv.stats.v      # every unit of work came back once; drops (policy drop) are counted
            ok = ok and v["pushes"] == budget and v["updates"] + v["dropped"] == budget \
                and sum(app.pushes.values()) == v["updates"]
        else:
            link = ps.WorkerLink(comm, n, np.float32, pcfg)
            ok = ok and link.serve(EchoWorker(comm.rank, jitter_s, c)) == ps.STOP
        comm.free()
    return ok
