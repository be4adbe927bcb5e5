"""The parameter-server protocol of the async modes (docs/async.md; rank 0 serves, ranks 1..W work).

Deadlock-free by construction:
- the traffic runs on a duplicated communicator; every message is one fixed-size byte buffer
  (a float64 header + the payload), the message kind is the tag;
- strict request/reply: a worker has at most one outstanding request and blocks for its reply;
  the server answers every request exactly once; the first message of a phase goes server → worker;
- the server keeps one posted receive per worker and re-posts it only after sending that worker a
  message that expects an answer, so a parked (PARK) or stopped (STOP) worker never has a pending
  receive on either side; a reply buffer is never refilled while its Isend is in flight;
- every wait has a deadline (ps.timeout_s): a dead peer becomes an error, and the CLI aborts the job.

A *phase* is the unit the shared loop's step(it) runs: the server opens it (PARAMS, or SNAPSHOT for
the DAP modes, whose workers answer with PARTIAL full gradients, summed in rank order before any
FULLGRAD goes out), hands out exactly `budget` units of work (one PUSH each), and parks every worker
when the budget is spent. Between phases no message is in flight, so the loop's collectives
(metrics, checkpoints, signals) run on the world communicator undisturbed.

Staleness of a push = server version when it arrives − version the worker read. Policies: none,
drop (discard when > bound), scale (step × min(1, (1+bound)/(1+staleness))), ssp (stale-synchronous
gating: a worker more than `bound` pushes ahead of the slowest active one waits for its reply).
Deterministic mode serves workers round-robin (waits for the next worker in cyclic order only), so
the order of updates, and with seeded samplers the iterates, are a function of the seed alone.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List

import numpy as np

from radmm_hpc.comm import TAG

# message kinds (the tags, comm.TAG): server -> worker, then worker -> server
PARAMS, SNAPSHOT, FULLGRAD, PARK, STOP = (TAG.PS_PARAMS, TAG.PS_SNAPSHOT, TAG.PS_FULLGRAD, TAG.PS_PARK,
                                          TAG.PS_STOP)
PUSH, PARTIAL = TAG.PS_PUSH, TAG.PS_PARTIAL
KINDS = {PARAMS: "params", SNAPSHOT: "snapshot", FULLGRAD: "full gradient", PARK: "park",
         STOP: "stop", PUSH: "push", PARTIAL: "partial full gradient"}

# header slots (float64: integers are exact up to 2^53)
HDR = 8
EPOCH, VREAD, WSTEP, NSAMP, LOSS, IDSUM, VERSION, AUX = range(HDR)
HIST_BINS = 64            # staleness histogram: 0..62, and 63 = "63 or more"
TRACE_COLS = 6            # version applied (-1: dropped), worker, version read, worker step, id sum, staleness
POLICIES = ("none", "drop", "scale", "ssp")


class Msg:
    """One fixed-size message: a byte image holding a float64 header and a typed payload."""

    def __init__(self, n: int, dtype):
        self.dtype = np.dtype(dtype)
        self.raw = np.zeros(HDR * 8 + n * self.dtype.itemsize, dtype=np.uint8)
        self.hdr = self.raw[:HDR * 8].view(np.float64)
        self.payload = self.raw[HDR * 8:].view(self.dtype)


class Stats:
    """Server-side counters (checkpointed as one array plus the histogram)."""

    FIELDS = ("updates", "dropped", "dropped_epoch", "pushes", "busy_s", "wall_s", "bytes", "phases")

    def __init__(self):
        self.v = dict.fromkeys(self.FIELDS, 0.0)
        self.hist = np.zeros(HIST_BINS, dtype=np.int64)

    def array(self) -> np.ndarray:
        return np.array([self.v[k] for k in self.FIELDS], dtype=np.float64)

    def load(self, a: np.ndarray, hist: np.ndarray) -> None:
        self.v = {k: float(x) for k, x in zip(self.FIELDS, a)}
        self.hist = np.asarray(hist, dtype=np.int64).copy()

    def summary(self) -> Dict[str, float]:
        v, h = self.v, self.hist
        n = max(1, int(h.sum()))
        bins = np.arange(HIST_BINS)
        return {"updates": v["updates"], "dropped": v["dropped"] + v["dropped_epoch"],
                "updates_per_s": v["updates"] / v["wall_s"] if v["wall_s"] > 0 else 0.0,
                "server_busy_fraction": v["busy_s"] / v["wall_s"] if v["wall_s"] > 0 else 0.0,
                "bytes_per_update": v["bytes"] / max(1.0, v["pushes"]),
                "staleness_mean": float((h * bins).sum() / n),
                "staleness_max": float(bins[h > 0].max()) if h.any() else 0.0}


class Server:
    """Rank 0's side. `app` supplies the numerics (see DapServer / AsgdServer):
    open(w, msg) -> tag, params(w, msg) -> tag, partial(w, msg), full_gradient(),
    push(w, msg, scale) -> None."""

    def __init__(self, comm, n: int, dtype, pcfg, trace: bool = False):
        self.comm = comm
        self.workers = list(range(1, comm.size))
        self.inbox = [Msg(n, dtype) for _ in self.workers]
        self.out = [Msg(n, dtype) for _ in self.workers]
        self.policy, self.bound = pcfg.staleness, pcfg.bound
        self.deterministic, self.timeout = pcfg.deterministic, pcfg.timeout_s
        self.version = 0          # updates applied so far (the parameters' version)
        self.epoch = 0
        self.stats = Stats()
        self.trace_on = trace or self.deterministic
        self.trace: List[tuple] = []

    def run_phase(self, app, budget: int, final: bool = False) -> None:
        W, comm = len(self.workers), self.comm
        recv: list = [None] * W
        sends: list = [None] * W
        parked, held, partial_from = set(), [], []
        clocks = np.zeros(W, dtype=np.int64)
        issued = 0
        busy = 0.0
        sent0, recv0 = comm.p2p_sent, comm.p2p_recv
        t_phase = time.perf_counter()

        def send(j: int, tag: int) -> None:
            if sends[j] is not None:   # never touch a buffer while its Isend is in flight
                comm.wait_msgs([sends[j]], self.timeout, f"a send to rank {j + 1}", some=False)
                sends[j] = None
            sends[j] = comm.isend_msg(self.out[j].raw, self.workers[j], tag)
            if tag in (PARK, STOP):
                parked.add(j)
            else:
                recv[j] = comm.irecv_msg(self.inbox[j].raw, self.workers[j])

        def grant(j: int) -> None:
            nonlocal issued
            if issued < budget:
                issued += 1
                tag = app.params(self.workers[j], self.out[j])
            else:
                tag = STOP if final else PARK
            self.out[j].hdr[VERSION] = self.version
            self.out[j].hdr[EPOCH] = self.epoch
            send(j, tag)

        def release_gated() -> None:
            while held:
                active = [k for k in range(W) if k not in parked]
                low = clocks[active].min() if active else 0
                ready = [k for k in held if clocks[k] - low <= self.bound]
                if not ready:
                    return
                for k in ready:
                    held.remove(k)
                    grant(k)

        for j, w in enumerate(self.workers):
            tag = app.open(w, self.out[j])
            if tag == PARAMS:
                grant(j)
            else:
                self.out[j].hdr[VERSION] = self.version
                self.out[j].hdr[EPOCH] = self.epoch
                send(j, tag)
        nxt = 0
        while len(parked) < W:
            if self.deterministic:   # round-robin: the next worker (cyclically) with a request out
                while recv[nxt] is None:
                    nxt = (nxt + 1) % W
                one = [recv[nxt]]
                done = [(nxt, t) for _, t in comm.wait_msgs(one, self.timeout, f"rank {nxt + 1}")]
                recv[nxt] = None
                nxt = (nxt + 1) % W
            else:
                pending = [f"{self.workers[k]}" for k in range(W) if recv[k] is not None]
                done = comm.wait_msgs(recv, self.timeout, f"rank(s) {','.join(pending)}")
            tb = time.perf_counter()
            for j, tag in done:
                w, msg = self.workers[j], self.inbox[j]
                if tag == PARTIAL:
                    app.partial(w, msg)
                    partial_from.append(j)
                    if len(partial_from) == W:
                        app.full_gradient()           # sums the partials in rank order
                        for k in sorted(partial_from):
                            grant(k)
                elif tag == PUSH:
                    self._push(app, j, msg)
                    if self.policy == "ssp":
                        clocks[j] += 1
                        held.append(j)
                        release_gated()
                    else:
                        grant(j)
                else:
                    raise RuntimeError(f"parameter server: unexpected message kind {tag} from rank {w}")
            busy += time.perf_counter() - tb
        comm.wait_msgs(sends, self.timeout, "the last replies", some=False)
        s = self.stats.v
        s["busy_s"] += busy
        s["wall_s"] += time.perf_counter() - t_phase
        s["bytes"] += (comm.p2p_sent - sent0) + (comm.p2p_recv - recv0)
        s["phases"] += 1

    def _push(self, app, j: int, msg: Msg) -> None:
        h, s = msg.hdr, self.stats.v
        s["pushes"] += 1
        staleness = int(self.version - h[VREAD])
        self.stats.hist[min(staleness, HIST_BINS - 1)] += 1
        applied = True
        if int(h[EPOCH]) != self.epoch:   # computed against another epoch's snapshot
            s["dropped_epoch"] += 1
            applied = False
        elif self.policy == "drop" and staleness > self.bound:
            s["dropped"] += 1
            applied = False
        if applied:
            scale = min(1.0, (1 + self.bound) / (1 + staleness)) if self.policy == "scale" else 1.0
            app.push(self.workers[j], msg, scale)
            self.version += 1
            s["updates"] += 1
        if self.trace_on:
            self.trace.append((self.version if applied else -1, self.workers[j], int(h[VREAD]),
                               int(h[WSTEP]), float(h[IDSUM]), staleness))

    def trace_array(self) -> np.ndarray:
        return np.array(self.trace, dtype=np.float64).reshape(-1, TRACE_COLS)


class WorkerLink:
    """A worker's side: answer server messages with app.work(tag, inbox, out) -> reply tag until
    a PARK or STOP arrives (returned)."""

    def __init__(self, comm, n: int, dtype, pcfg):
        self.comm, self.timeout = comm, pcfg.timeout_s
        self.inbox, self.out = Msg(n, dtype), Msg(n, dtype)

    def serve(self, app) -> int:
        comm = self.comm
        while True:
            req = [comm.irecv_msg(self.inbox.raw, 0)]
            (_, tag), = comm.wait_msgs(req, self.timeout, "a message from the parameter server (rank 0)")
            if tag in (PARK, STOP):
                return tag
            if os.environ.get("RADMM_HPC_FAIL_WORKER") == str(comm.rank):   # test hook: a failing worker
                raise RuntimeError(f"injected worker fault on rank {comm.rank} (RADMM_HPC_FAIL_WORKER)")
            reply = app.work(tag, self.inbox, self.out)
            req = [comm.isend_msg(self.out.raw, 0, reply)]
            comm.wait_msgs(req, self.timeout, "the parameter server to take a request", some=False)


class _NoComm:
    def __init__(self, size):
        self.size = size


def replay(app, workers: Dict[int, object], trace: np.ndarray, budgets: List[int], pcfg, n: int,
           dtype, begin=None) -> Server:
    """Single-process replay of a deterministic run (policies none, drop, scale): drive the same
    server and worker numerics with the messages the MPI server sent, in the trace's order.
    Checks every push's header against the trace; returns the replay's server (its trace and
    the app's state can be compared with the MPI run's)."""
    if pcfg.staleness == "ssp":
        raise ValueError("replay supports the staleness policies none, drop and scale")
    srv = Server(_NoComm(len(workers) + 1), n, dtype, pcfg, trace=True)
    W, rows = len(workers), iter(np.asarray(trace))
    for phase, budget in enumerate(budgets):
        srv.epoch = phase
        if begin is not None:
            begin(phase)
        pending, issued = {}, 0

        def grant(j):
            nonlocal issued
            if issued < budget:
                issued += 1
                pending[j] = app.params(srv.workers[j], srv.out[j])
            else:
                pending[j] = PARK
            srv.out[j].hdr[VERSION], srv.out[j].hdr[EPOCH] = srv.version, srv.epoch

        opened = {}
        for j, w in enumerate(srv.workers):
            opened[j] = app.open(w, srv.out[j])
            if opened[j] == PARAMS:
                grant(j)
            else:
                srv.out[j].hdr[VERSION], srv.out[j].hdr[EPOCH] = srv.version, srv.epoch
        partial = [j for j in range(W) if opened[j] == SNAPSHOT]
        for j in partial:
            if workers[srv.workers[j]].work(SNAPSHOT, srv.out[j], srv.inbox[j]) != PARTIAL:
                raise AssertionError("replay: a snapshot was not answered by a partial")
            app.partial(srv.workers[j], srv.inbox[j])
        if partial:
            app.full_gradient()
            for j in sorted(partial):
                grant(j)
        for _ in range(budget):
            row = next(rows)
            j = int(row[1]) - 1
            if pending.get(j, PARK) == PARK:
                raise AssertionError(f"replay: trace row {row} for a worker with no work")
            if workers[srv.workers[j]].work(pending[j], srv.out[j], srv.inbox[j]) != PUSH:
                raise AssertionError("replay: work was not answered by a push")
            h = srv.inbox[j].hdr
            if (h[VREAD], h[WSTEP], h[IDSUM]) != (row[2], row[3], row[4]):
                raise AssertionError(f"replay: push {(h[VREAD], h[WSTEP], h[IDSUM])} != trace {tuple(row[2:5])}")
            srv._push(app, j, srv.inbox[j])
            grant(j)
    return srv
