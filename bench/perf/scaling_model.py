"""A model of time per iteration and memory per rank for RADMM (two-colour, Jacobi), ParMAC,
TRGL's pipeline and data-parallel backprop, from measured inputs (docs/scaling_model.md).

    T(P) = compute on the critical path of the method's schedule + messages on that path

Compute comes from per-unit CPU costs measured on this machine (bench/perf/scaling_inputs.py:
one hidden RADMM block, one ParMAC statistics pass and solve, one TRGL module, one backprop sample, ...).
A message of n bytes costs α + n/β on its link (shared memory inside a node, a network between
nodes); an Allreduce of n bytes on P ranks costs ⌈log2 P⌉(α + n/β) for small n (recursive
doubling) and 2⌈log2 P⌉α + 2(P−1)/P·n/β for large n (reduce-scatter + allgather). Bytes and
message counts per boundary are those the trainers send (radmm.py, mac.py, trgl.py,
backprop.py), checked against the comm layer's counters by scaling_validate.py.

Nothing here runs MPI: `predict_*` are pure functions of the inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from radmm_hpc.algos.radmm.blocks import partition_hidden  # the trainer's own layer partition


# ---- networks -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Net:
    name: str
    alpha: float      # seconds per message
    beta: float       # bytes per second

    def msg(self, nbytes: float) -> float:
        return self.alpha + nbytes / self.beta if nbytes > 0 else 0.0

    def allreduce(self, P: int, nbytes: float) -> float:
        if P <= 1:
            return 0.0
        lg = math.ceil(math.log2(P))
        if nbytes <= 2048:
            return lg * (self.alpha + nbytes / self.beta)
        return 2 * lg * self.alpha + 2 * (P - 1) / P * nbytes / self.beta


def line_rate(name: str, gbit: float, alpha_us: float) -> Net:
    """A network by its line rate (bandwidth at the full line rate) and an assumed latency."""
    return Net(name, alpha_us * 1e-6, gbit * 1e9 / 8)


# Latencies are assumptions typical of each class of network, not measurements: 25 Gb/s Ethernet
# with TCP, 100 and 400 Gb/s RDMA fabrics (InfiniBand HDR/NDR class).
NETWORKS = [line_rate("25 Gb/s", 25, 10.0), line_rate("100 Gb/s", 100, 2.0),
            line_rate("400 Gb/s", 400, 1.5)]


def links(placement: Optional[Sequence[int]], P: int, intra: Net, inter: Net):
    """(link, collective net): link(a, b) is the Net between ranks a and b, given placement[r] =
    node of rank r (None: every rank on a node of its own); collectives run at the speed of the
    slower kind of link they cross."""
    node = list(placement) if placement is not None else list(range(P))

    def link(a: int, b: int) -> Net:
        return intra if node[a] == node[b] else inter
    spans = len(set(node)) > 1
    return link, (inter if spans else intra)


# ---- RADMM (FCResNet, closed-form blocks) ----------------------------------------------------------
@dataclass
class RadmmShape:
    depth: int          # hidden layers (layer 1 = the input layer, 2..depth residual), + output layer
    width: int
    n: int              # training samples (columns of U, V)
    d_in: int
    d_out: int
    itemsize: int = 4


@dataclass
class RadmmCosts:
    """CPU seconds of one update on one rank; each a function of (d, N) fitted by scaling_inputs."""
    hidden: float       # a residual hidden block (W, U, V of one layer)
    first: float        # the input layer's block (rank 0)
    output: float       # the output group W_L, V_L, Λ (last rank)
    q: float            # a Jacobi boundary copy Q_r and its dual M_r (ranks r > 0)
    per_tensor: float   # step overhead per owned d×N tensor (successive differences)


def radmm_rank_compute(shape: RadmmShape, c: RadmmCosts, P: int, schedule: str) -> List[float]:
    out = []
    for r, (s, e) in enumerate(partition_hidden(shape.depth, P)):
        layers = e - s + 1
        t = (layers - (1 if s == 1 else 0)) * c.hidden + (c.first if s == 1 else 0.0)
        t += 2 * layers * c.per_tensor
        if r == P - 1:
            t += c.output + 2 * c.per_tensor
        if schedule == "jacobi" and P > 1 and r > 0:
            t += c.q + 2 * c.per_tensor
        out.append(t)
    return out


def radmm_messages(shape: RadmmShape, P: int, schedule: str) -> Dict[str, float]:
    """Bytes per boundary per iteration, each way, and messages per boundary."""
    dn = shape.width * shape.n * shape.itemsize
    if P == 1:
        return {"fwd": 0, "bwd": 0, "messages": 0}
    if schedule == "jacobi":
        return {"fwd": dn, "bwd": 2 * dn, "messages": 2}          # V_e forward; (Q, M) back
    d2 = shape.width * shape.width * shape.itemsize
    return {"fwd": dn, "bwd": d2 + 2 * dn, "messages": 2}         # V_e forward; (W, U, V)_s back


def predict_radmm(shape: RadmmShape, c: RadmmCosts, P: int, schedule: str, intra: Net, inter: Net,
                  placement=None, rank_compute=None) -> Dict[str, float]:
    comp = rank_compute or radmm_rank_compute(shape, c, P, schedule)
    link, _ = links(placement, P, intra, inter)
    m = radmm_messages(shape, P, schedule)
    if P == 1:
        compute, comm = comp[0], 0.0
    elif schedule == "jacobi":
        # all regions at once; V_e goes forward, then (Q, M) come back: two rounds per iteration
        compute = max(comp)
        comm = max(link(r, r + 1).msg(m["fwd"]) for r in range(P - 1)) + \
            max(link(r, r + 1).msg(m["bwd"]) for r in range(P - 1))
    else:
        # even regions, their messages, odd regions, their messages
        compute = max(comp[0::2]) + max(comp[1::2])
        comm = 2 * max(link(r, r + 1).msg(m["bwd"]) for r in range(P - 1))
    return {"compute": compute, "comm": comm, "total": compute + comm,
            "memory": max(radmm_memory(shape, P, schedule)), "bytes_per_boundary": m["fwd"] + m["bwd"]}


def radmm_memory(shape: RadmmShape, P: int, schedule: str, keep_best: bool = True) -> List[float]:
    """Bytes of each rank's checkpointed state (trainer.state()): W, U, V of its layers, the
    output group on the last rank, the boundary copies of its schedule, keep_best's copy of W."""
    d, N, s = shape.width, shape.n, shape.itemsize
    out = []
    for r, (a, b) in enumerate(partition_hidden(shape.depth, P)):
        w = sum((shape.d_in + 1 if l == 1 else d) * d for l in range(a, b + 1))
        uv = 2 * (b - a + 1) * d * N
        if r == P - 1:
            w += shape.d_out * d
            uv += 2 * shape.d_out * N                       # V_L, Λ
        extra = 0
        if P > 1 and schedule == "jacobi":
            extra = (3 if r > 0 else 0) * d * N + (2 if r < P - 1 else 0) * d * N   # Q, M, Vb; Qn, Mn
        elif P > 1 and schedule == "two-colour":
            extra = (d * N if r > 0 else 0) + ((d * d + 2 * d * N) if r < P - 1 else 0)
        out.append((w * (2 if keep_best else 1) + uv + extra) * s)
    return out


# ---- data-parallel backprop -----------------------------------------------------------------------
@dataclass
class BackpropCosts:
    per_sample: float   # forward + backward CPU seconds per sample of a rank's share
    fixed: float        # per step, whatever the share: optimizer step, packing, Python
    optimizer: float = 0.0   # the part of `fixed` that is the optimizer step (scales with parameters)


def predict_backprop(params: int, batch: int, itemsize: int, c: BackpropCosts, P: int,
                     intra: Net, inter: Net, placement=None, widths: int = 0) -> Dict[str, float]:
    _, net = links(placement, P, intra, inter)
    local = math.ceil(batch / P)
    compute = c.fixed + c.per_sample * local
    comm = net.allreduce(P, params * itemsize)
    # parameters, gradients, Adam's two moments, the packed gradient buffer; activations of the share
    memory = (5 * params + 2 * local * widths) * itemsize
    return {"compute": compute, "comm": comm, "total": compute + comm, "memory": memory,
            "bytes_per_boundary": params * itemsize}


# ---- ParMAC ---------------------------------------------------------------------------------------
@dataclass
class MacShape:
    layer_params: List[int]     # rows·cols of each layer
    submodels: List[int]        # parameters of each submodel trained in the W-step
    stats: List[int]            # numbers in each such submodel's Gauss–Newton statistics (≈ g·d²)
    cubes: List[int]            # g·d³ of each: the cost unit of its damped solves
    n: int
    width_sum: int              # Σ hidden widths (auxiliary coordinates per point)
    epochs: int = 1
    itemsize: int = 4


@dataclass
class MacCosts:
    visit: float        # per statistics pass of one submodel over one shard, fixed part
    stat: float         # the same per point and per number of statistics (g·d² per point)
    solve: float        # per unit g·d³ of a damped solve (one per submodel and epoch)
    per_point: float    # Z-step, guard and nested-model work per point and iteration
    per_shard: float = 0.0   # the same work's fixed part per shard and iteration


def predict_parmac(shape: MacShape, c: MacCosts, P: int, intra: Net, inter: Net,
                   placement=None) -> Dict[str, float]:
    """One MAC iteration without a μ stage end (no output refit), the Gauss–Newton W-step: every
    trained submodel's statistics pass over every shard once per epoch (each rank computes all
    M on its shard), the last holder solves (M/S solves per rank), S − 1 ring hops each carry the
    statistics of the ⌈M/S⌉ largest submodels, and a copy round of P − 1 hops their solved rows."""
    S, M = P, len(shape.submodels)
    link, _ = links(placement, P, intra, inter)
    n_loc = math.ceil(shape.n / S)
    stats = shape.epochs * sum(c.visit + c.stat * n_loc * k for k in shape.stats)
    solves = shape.epochs * c.solve * sum(shape.cubes) / S
    compute = stats + solves + c.per_shard + n_loc * c.per_point
    comm = 0.0
    held = math.ceil(M / S)
    if P > 1:
        slow = max((link(r, (r + 1) % P) for r in range(P)), key=lambda n: n.msg(1e6))   # ring
        hop = slow.msg(sum(sorted(shape.stats, reverse=True)[:held]) * shape.itemsize)
        copy = slow.msg(sum(sorted(shape.submodels, reverse=True)[:held]) * shape.itemsize)
        comm = shape.epochs * ((S - 1) * hop + (P - 1) * copy)
    total_params = sum(shape.layer_params)
    # weights, their initial and best copies; the statistics a rank holds; Z and Λ of its shard
    memory = (3 * total_params + sum(sorted(shape.stats, reverse=True)[:held])
              + n_loc * shape.width_sum * 2) * shape.itemsize
    return {"compute": compute, "comm": comm, "total": compute + comm, "memory": memory,
            "bytes_per_boundary": 0.0}


# ---- TRGL pipeline --------------------------------------------------------------------------------
def predict_trgl(module_compute: List[float], act_bytes: List[float], drain_every: int,
                 intra: Net, inter: Net, placement=None, module_bytes: Optional[List[float]] = None):
    """One loop step: every rank trains one batch on its module; rank k receives batch t − k from
    rank k − 1 (activation and labels, one message). The slowest module sets the pace; the
    pipeline fills again after each drain (metrics, checkpoints): P − 1 extra steps per drain
    (drain_every iterations; 0: steady state, what the median step time measures)."""
    P = len(module_compute)
    link, _ = links(placement, P, intra, inter)
    if P == 1:
        return {"compute": module_compute[0], "comm": 0.0, "total": module_compute[0],
                "memory": (module_bytes or [0])[0], "bytes_per_boundary": 0.0}
    msg = [link(k - 1, k).msg(act_bytes[k - 1]) for k in range(1, P)]
    step = max(module_compute[k] + (msg[k - 1] if k > 0 else 0.0) for k in range(P))
    fill = (P - 1) / drain_every if drain_every else 0.0
    compute = max(module_compute) * (1 + fill)
    total = step * (1 + fill)
    return {"compute": compute, "comm": total - compute, "total": total,
            "memory": max(module_bytes or [0]), "bytes_per_boundary": max(act_bytes[:P - 1])}


def efficiency(t1: float, tP: float, P: int) -> float:
    return t1 / (P * tP) if tP > 0 else float("nan")
