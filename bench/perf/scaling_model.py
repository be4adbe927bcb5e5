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


# ---- RADMM, the anchored variant (pipeline schedule) -----------------------------------------------
@dataclass
class AnchoredShape:
    depth: int          # hidden layers; with the output layer L = depth + 1
    width: int
    n_fit: int          # columns of the anchor and multiplier passes
    n_val: int          # validation columns (forward only)
    d_in: int
    d_out: int
    itemsize: int = 4
    lam: float = 0.0


@dataclass
class AnchoredCosts:
    """CPU seconds of one layer's share of an iteration (scaling_inputs.anchored_costs), per
    layer kind (first, hidden, output). Per chunk of c columns, [fixed, per column]: fwd the
    forward with autograd recording, gram its input Gram sum (both in the anchor pass), val the
    validation forward, bwd the multiplier pass; w the W step per iteration; step the rest of
    the step's compute per layer, [per iteration, per chunk]. kept: bytes autograd keeps per
    column and layer from the anchor pass to the multiplier pass."""
    fwd: Dict[str, List[float]]
    gram: Dict[str, List[float]]
    val: Dict[str, List[float]]
    bwd: Dict[str, List[float]]
    w: Dict[str, float]
    step: List[float]
    kept: float = 0.0


def layer_kinds(depth: int, P: int) -> List[List[str]]:
    """The kinds of each rank's layers: hidden layers 1..depth by partition_hidden, layer L on the
    last rank (regions.py)."""
    L = depth + 1
    out = []
    for r, (s, e) in enumerate(partition_hidden(depth, P)):
        ls = list(range(s, e + 1)) + ([L] if r == P - 1 else [])
        out.append(["first" if l == 1 else "output" if l == L else "hidden" for l in ls])
    return out


def anchored_chunks(n_fit: int, n_val: int, P: int, m: int = 0):
    """Column counts of the fit and validation chunks: the trainer's rule (anchored.py), m = 0
    for its automatic choice (1 on one rank, else max(P, min(4P, N // 512)))."""
    m = m or (1 if P == 1 else max(P, min(4 * P, n_fit // 512)))
    size = max(1, math.ceil(n_fit / m))
    return ([min(size, n_fit - i) for i in range(0, n_fit, size)],
            [min(size, n_val - i) for i in range(0, n_val, size)])


def anchored_rank_costs(shape: AnchoredShape, c: AnchoredCosts, P: int, m: int = 0):
    """Per rank: the anchor pass's cost of each chunk (fit chunks, then validation chunks), the
    multiplier pass's cost of each fit chunk, and the rest of an iteration (W steps, overhead)."""
    fit, val = anchored_chunks(shape.n_fit, shape.n_val, P, m)
    out = []
    for kinds in layer_kinds(shape.depth, P):
        def per(cols, *tables, ks=kinds):
            return sum(t[k][0] + t[k][1] * cols for t in tables for k in ks)
        over = len(kinds) * c.step[1]           # the rest's part per chunk of the anchor pass
        out.append({"fwd": [per(n, c.fwd, c.gram) + over for n in fit] + [per(n, c.val) + over for n in val],
                    "bwd": [per(n, c.bwd) for n in fit],
                    "rest": sum(c.w[k] for k in kinds) + len(kinds) * c.step[0]})
    return out


def _pass(free: List[float], cost: List[List[float]], hop: List[List[float]]) -> List[float]:
    """One pass of chunks through ranks 0..P−1 (the caller reverses the lists for the multiplier
    pass). Rank r takes chunk j from rank r−1, computes it (cost[r][j]) and hands it on. A
    handoff ends when both sides have reached it (a large message's send completes once the
    receiver has posted its receive) and takes hop[j][r−1] seconds. free[r]: when rank r starts;
    returns when each rank has finished its last chunk (and handed it on)."""
    free = list(free)
    for j in range(len(cost[0])):
        t = free[0] + cost[0][j]
        for r in range(1, len(cost)):
            free[r - 1] = t = max(t, free[r]) + hop[j][r - 1]
            t += cost[r][j]
        free[-1] = t
    return free


def predict_anchored(shape: AnchoredShape, c: AnchoredCosts, P: int, intra: Net, inter: Net,
                     placement=None, m: int = 0, accepted: bool = True, rank_compute=None) -> Dict[str, float]:
    """One iteration of the pipeline schedule (anchored.py, step): the anchor pass over the fit
    and validation chunks; with λ > 0 the running ‖W‖² passed along the ranks; the control message
    (5 float64) from the last rank to rank 0, each rank forwarding it at once; the multiplier pass
    from the last rank down (accepted iterations only); then each rank's W steps; the loop's
    one-number Allreduce ends the iteration. rank_compute: measured compute per rank, to which
    each rank's modelled costs are scaled (the CPU path)."""
    link, net = links(placement, P, intra, inter)
    rc = anchored_rank_costs(shape, c, P, m)
    if rank_compute is not None:
        for k, x in zip(rank_compute, rc):
            f = k / (sum(x["fwd"]) + (sum(x["bwd"]) if accepted else 0.0) + x["rest"])
            x.update(fwd=[f * v for v in x["fwd"]], bwd=[f * v for v in x["bwd"]], rest=f * x["rest"])
    fit, val = anchored_chunks(shape.n_fit, shape.n_val, P, m)
    row = shape.width * shape.itemsize        # bytes per column of a boundary

    def timeline(msg):
        end = _pass([0.0] * P, [x["fwd"] for x in rc], [[msg(r, n * row) for r in range(P - 1)] for n in fit + val])
        t = end[-1]
        if shape.lam > 0:
            t = end[0]
            for r in range(1, P):
                t = max(t + msg(r - 1, 8), end[r])
        got = [0.0] * P               # when each rank has the control message
        got[-1] = t
        for r in range(P - 2, -1, -1):
            got[r] = t = max(t + msg(r, 40), end[r])
        if accepted:
            hop = [[msg(r, n * row) for r in range(P - 1)][::-1] for n in fit]
            got = _pass(got[::-1], [x["bwd"] for x in rc[::-1]], hop)[::-1]
        return max(g + x["rest"] for g, x in zip(got, rc))

    compute = timeline(lambda r, n: 0.0)
    total = timeline(lambda r, n: link(r, r + 1).msg(n)) + net.allreduce(P, 8)
    mem = anchored_memory(shape, c, P)
    sent = [(row * (sum(fit) + sum(val)) + (8 if shape.lam > 0 else 0) if r < P - 1 else 0)
            + (row * sum(fit) * accepted + 40 if r > 0 else 0) for r in range(P)]
    return {"compute": compute, "comm": total - compute, "total": total, "chunks": len(fit),
            "rank_compute": [sum(x["fwd"]) + sum(x["bwd"]) * accepted + x["rest"] for x in rc],
            "memory": max(s + k for s, k in mem), "state": max(s for s, _ in mem),
            "rank_bytes": sent if P > 1 else [0], "bytes_per_boundary": max(sent) if P > 1 else 0}


def anchored_memory(shape: AnchoredShape, c: AnchoredCosts, P: int, keep_best: bool = True):
    """Per rank: (checkpointed state, what the anchor pass keeps for the multiplier pass). State
    per layer with W rows×k: W, the anchor's W and gradient, keep_best's copy (itemsize each) and
    the input Gram sum k×k (float64); kept: bytes per column and layer × N_fit × layers."""
    d = shape.width
    fan = {"first": (d, shape.d_in + 1), "hidden": (d, d), "output": (shape.d_out, d)}
    out = []
    for kinds in layer_kinds(shape.depth, P):
        state = sum((3 + keep_best) * fan[k][0] * fan[k][1] * shape.itemsize + 8 * fan[k][1] ** 2 for k in kinds)
        out.append((state, c.kept * shape.n_fit * len(kinds)))
    return out
