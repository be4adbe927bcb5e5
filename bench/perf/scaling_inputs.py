"""Measured inputs of the scaling model (bench/perf/scaling_model.py), all in one process, one
thread, by CPU time (time.process_time). Other processes on the same cores still inflate a
process's CPU time (caches, memory bandwidth), never deflate it: so every input is the least of
several repeats, like the validation runs' measurements (scaling_validate.py).

  radmm_costs     RADMM's block updates (the paper variant, radmm.variant = proximal, with the
                  settings of configs/radmm-proximal.toml: proximal_args), timed inside a serial
                  sweep of the real trainer
  radmm_fit       the hidden block's cost over a grid of (width, samples), fitted as
                  a·d²N + b·d³ + c·dN: the extrapolation to sizes beyond this machine
  anchored_costs  the anchored variant (the default): each layer's anchor pass (with its Gram
                  sums), validation forward and multiplier pass per chunk of columns, and its W
                  step, timed inside steps of the real trainer; what autograd keeps per column
  anchored_fit    the same over a grid of (width, chunk columns), fitted per phase: the
                  extrapolation beyond this machine
  backprop_costs  the data-parallel step's compute at several local batch sizes: fixed + per sample
  mac_costs       ParMAC's statistics passes (fixed + per point), solves and per-point work
  trgl_costs      each TRGL module's training step with the network split into K modules
  pingpong        α, β of the comm layer between two ranks (shared memory, or across namespaces)
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import torch

from bench.perf.scaling_model import (
    AnchoredCosts,
    AnchoredShape,
    BackpropCosts,
    MacCosts,
    MacShape,
    Net,
    RadmmCosts,
    RadmmShape,
)
from radmm_hpc.cli import parse_args, resolve_config
from radmm_hpc.comm import Comm
from radmm_hpc.data import load_dataset
from radmm_hpc.runtime import Runtime

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROXIMAL_TOML = os.path.join(ROOT, "configs", "radmm-proximal.toml")


def proximal_args():
    """--set arguments for the paper variant with its tuned penalties: [radmm] of
    configs/radmm-proximal.toml without its schedule (each case sets its own)."""
    from radmm_hpc.config import load_toml
    return [a for k, v in load_toml(PROXIMAL_TOML)["radmm"].items() if k != "schedule"
            for a in ("--set", f"radmm.{k}={v}")]


def config(args, world_size=1):
    """The configuration the CLI would run with these arguments."""
    return resolve_config(parse_args(list(args)), world_size)


def _runtime():
    return Runtime(comm=Comm(None))


def _cpu(fn, *a, **k):
    c0 = time.process_time()
    out = fn(*a, **k)
    return time.process_time() - c0, out


# ---- RADMM ----------------------------------------------------------------------------------------
def radmm_costs(cfg, iters: int = 3):
    """Per-update CPU seconds inside a serial sweep of the real trainer (medians over sweeps)."""
    from radmm_hpc.algos.radmm import FcRadmmTrainer
    from radmm_hpc.algos.radmm import blocks as rb
    if cfg.radmm.variant != "proximal" or cfg.radmm.splitting != "three":
        raise SystemExit("the model's RADMM costs cover the default proximal three-splitting")
    cfg = copy.deepcopy(cfg)
    cfg.radmm.schedule = "serial"
    torch.set_num_threads(1)
    ds = load_dataset(cfg.data)
    tr = FcRadmmTrainer(cfg, _runtime(), ds)
    calls = defaultdict(list)
    orig_h, orig_o = rb._hidden_block, rb._output_block

    def hidden(st, p, l, *a, **k):
        t, _ = _cpu(orig_h, st, p, l, *a, **k)
        calls["first" if l == 1 else "hidden"].append(t)

    def output(st, p):
        t, _ = _cpu(orig_o, st, p)
        calls["output"].append(t)
    sweeps = []                       # (step CPU, that sweep's block calls)
    rb._hidden_block, rb._output_block = hidden, output
    try:
        for it in range(iters + 1):
            calls.clear()
            t, _ = _cpu(tr.step, it)
            if it:                    # (the first sweep allocates)
                sweeps.append((t, {k: list(v) for k, v in calls.items()}))
    finally:
        rb._hidden_block, rb._output_block = orig_h, orig_o
    D = cfg.model.depth
    step, best = min(sweeps, key=lambda x: x[0])      # the least disturbed sweep
    per = {k: sum(v) for k, v in best.items()}
    hid = statistics.median(best["hidden"]) if best.get("hidden") else 0.0
    overhead = max(0.0, step - sum(per.values()))
    # a Jacobi boundary: Q_r from the layer s_r block's quantities, then M_r
    st, p, i = tr.st, tr.p, max(1, D // 2)
    W, U, V = st["W"], st["U"], st["V"]
    M = torch.zeros_like(V[i - 1])
    q_times = []
    for _ in range(iters + 1):
        tq, Q = _cpu(rb.update_Q, W[i], U[i], V[i], U[i], M, V[i - 1], V[i - 1].clone(), p.gamma,
                     p.rho, p.beta_b, rb._omb(p))
        tm, _ = _cpu(rb.update_M, M, Q, V[i - 1], p.beta_b)
        q_times.append(tq + tm)
    shape = RadmmShape(depth=D, width=cfg.model.width, n=tr.N, d_in=ds.d_in, d_out=ds.d_out,
                       itemsize=torch.finfo(tr.dtype).bits // 8)
    costs = RadmmCosts(hidden=hid, first=per.get("first", hid), output=per.get("output", 0.0),
                       q=min(q_times), per_tensor=overhead / (2 * D + 2))
    return shape, costs


def radmm_fit(widths=(32, 64, 128), samples=(1000, 4000), dtype="float32"):
    """Hidden-block, boundary and output costs on synthetic data over a grid, fitted as
    a·d²N + b·d³ + c·dN (least squares on relative error, coefficients ≥ 0)."""
    rows = []
    for d in widths:
        for n in samples:
            cfg = config(proximal_args() + ["--data", "synthetic-regression", "--set", f"data.n_samples={int(n / 0.8)}",
                          "--set", "data.n_features=8", "--set", f"model.width={d}",
                          "--set", "model.depth=4", "--dtype", dtype])
            shape, c = radmm_costs(cfg, iters=2)
            rows.append((d, shape.n, c))
    out = {}
    for name in ("hidden", "q", "output", "per_tensor"):
        A = np.array([[d * d * n, d ** 3, d * n] for d, n, _ in rows], dtype=float)
        y = np.array([getattr(c, name) for _, _, c in rows])
        coef = _nnls(A / y[:, None], np.ones(len(y)))
        out[name] = coef.tolist()
    out["points"] = [{"d": d, "n": n, **vars(c)} for d, n, c in rows]
    return out


def _nnls(A, b):
    from scipy.optimize import nnls
    return nnls(A, b)[0]


def radmm_costs_at(fit: dict, d: int, n: int, d_in: int) -> RadmmCosts:
    """Costs from the fitted forms at (d, N); the input layer scales with its fan-in."""
    def f(name, fan=d):
        a, b, c = fit[name]
        return a * d * fan * n + b * d ** 3 + c * d * n
    return RadmmCosts(hidden=f("hidden"), first=f("hidden", d_in + 1), output=f("output"),
                      q=f("q"), per_tensor=f("per_tensor"))


# ---- RADMM, the anchored variant -----------------------------------------------------------------
KINDS = ("first", "hidden", "output")      # layer 1 (fan-in d_in + 1), the residual layers, layer L


def _kind(l: int, L: int) -> str:
    return "first" if l == 1 else ("output" if l == L else "hidden")


def anchored_costs(cfg, microbatches=(1, 3, 9), iters: int = 16):
    """CPU seconds of each layer's share of one anchored iteration, timed inside steps of the real
    trainer on one rank (radmm.microbatches = m for each m given, so chunks of several sizes):
    per chunk of c columns, the anchor pass (the layer's forward with autograd recording, and its
    input Gram sum), the validation forward (no autograd) and the multiplier pass (that layer's
    part of autograd's backward, between tensor hooks on its output and input); per iteration
    the W step. Per layer kind (first, hidden, output) and phase, the least over repeats, the
    median over layers of a kind, fitted as fixed + per_col·c. 'step' is the rest of the step's
    compute (the loops over chunks and layers, copies of W) per layer, per iteration and per chunk.
    Also the bytes autograd keeps per column and layer until the multiplier pass.
    Returns (AnchoredShape, AnchoredCosts, {"points": {phase/layer/cols: s}, ...})."""
    from radmm_hpc.algos.radmm import anchored as am
    if cfg.radmm.variant != "anchored" or cfg.model.arch != "fcresnet":
        raise SystemExit("the model's anchored costs cover the FCResNet with radmm.variant = anchored")
    torch.set_num_threads(1)
    ds = load_dataset(cfg.data)
    t = defaultdict(list)             # (phase, l, cols) -> CPU seconds of each call
    rest = []                         # (chunks, step compute CPU − what the layers account for)
    kept = None
    for m in microbatches:
        c = copy.deepcopy(cfg)
        c.radmm.microbatches = m
        c.radmm.grow = 1.0            # every step accepted: each one has a multiplier pass
        tr = am.AnchoredTrainer(c, _runtime(), ds)
        L = tr.L
        _wrap_anchored(tr, t)
        orig_block, orig_w = am._block_step, tr._w_steps
        blocks, wtot = [], []

        def block(g, *a, **k):
            dt, out = _cpu(orig_block, g, *a, **k)
            blocks.append(dt)
            return out

        def w_steps():
            dt, _ = _cpu(orig_w)
            wtot.append(dt)
        am._block_step, tr._w_steps = block, w_steps
        try:
            for it in range(iters + 1):
                n0 = {k: len(v) for k, v in t.items()}
                blocks.clear()
                c0 = tr.phase_cpu_s["compute"]
                tr.step(it)
                comp = tr.phase_cpu_s["compute"] - c0
                # each layer's W step: its block solve + an equal share of the loop around them
                share = (wtot[-1] - sum(blocks)) / len(blocks)
                if it:                # (the first step allocates)
                    for l, dt in zip(tr.groups, blocks):
                        t[("w", l, 0)].append(dt + share)
                    rest.append((len(tr.fit_slices) + len(tr.val_slices),
                                 comp - wtot[-1] - sum(sum(v[n0.get(k, 0):]) for k, v in t.items()
                                                       if k[0] != "w")))
        finally:
            am._block_step = orig_block
        if kept is None:
            kept = _anchored_kept(tr)

    def fit(phase, kind):             # fixed + per_col·cols over the chunk sizes seen
        pts = [(cols, statistics.median(min(t[(phase, l, cols)]) for l in range(1, L + 1) if _kind(l, L) == kind))
               for cols in sorted({cc for (ph, _, cc) in t if ph == phase})]
        if len(pts) == 1:             # one size (the validation columns): all per column
            return [0.0, pts[0][1] / pts[0][0]]
        coef = _nnls(np.array([[1.0, c_] for c_, _ in pts]) / np.array([y for _, y in pts])[:, None],
                     np.ones(len(pts)))
        return [float(coef[0]), float(coef[1])]
    tables = {ph: {k: fit(ph, k) for k in KINDS} for ph in ("fwd", "gram", "val", "bwd")}
    w = {k: statistics.median(min(t[("w", l, 0)]) for l in range(1, L + 1) if _kind(l, L) == k) for k in KINDS}
    # the rest of a step's compute: a fixed part and a part per chunk (the least at each count)
    by_m = defaultdict(list)
    for chunks, r in rest:
        by_m[chunks].append(r)
    pts = sorted((k, max(0.0, min(v))) for k, v in by_m.items())
    fixed, per_chunk = np.linalg.lstsq(np.array([[1.0, k] for k, _ in pts]), np.array([r for _, r in pts]),
                                       rcond=None)[0]
    shape = AnchoredShape(depth=cfg.model.depth, width=cfg.model.width, n_fit=tr.N, n_val=tr.n_val,
                          d_in=ds.d_in, d_out=ds.d_out, itemsize=torch.finfo(tr.dtype).bits // 8,
                          lam=cfg.radmm.lam)
    costs = AnchoredCosts(**tables, w=w, step=[max(float(fixed), 0.0) / L, max(float(per_chunk), 0.0) / L],
                          kept=kept / (L * tr.N))
    return shape, costs, {"rest": rest, "points": {f"{ph}/{l}/{cc}": min(v) for (ph, l, cc), v in t.items()}}


def anchored_fit(widths=(32, 64, 96, 128), n: int = 4000, dtype="float32"):
    """A hidden layer's costs at several widths (synthetic data, depth 4, chunks of 3600, 1200
    and 400 columns), fitted on all (width, chunk) points at once (non-negative, on relative
    error): per chunk of c columns e + f·d² + (a·d² + b·d)·c for each phase (the products with W
    and the Gram sum are d² per column, the activations d, the float64 Gram sum and the weight
    gradient d² per chunk); the W step e + b·d² + a·d³ (a Cholesky solve); the rest of the step
    per chunk e + b·d and per iteration, and the kept bytes per d as measured (medians)."""
    pts, per = defaultdict(list), []
    for d in widths:
        cfg = config(["--data", "synthetic-regression", "--set", f"data.n_samples={int(n / 0.8)}",
                      "--set", "data.n_features=8", "--set", f"model.width={d}", "--set", "model.depth=4",
                      "--dtype", dtype])
        shape, c, extra = anchored_costs(cfg, iters=2)
        per.append((d, c, shape.itemsize))
        by = defaultdict(list)
        for key, y in extra["points"].items():
            ph, l, cols = key.split("/")
            if ph != "w" and 1 < int(l) <= shape.depth:          # the hidden layers
                by[(ph, int(cols))].append(y)
        for (ph, cols), ys in by.items():
            pts[ph].append((d, cols, statistics.median(ys)))

    def fit(feats, ys):
        A = np.array(feats, dtype=float)
        y = np.array(ys)
        return _nnls(A / y[:, None], np.ones(len(y))).tolist()
    out = {ph: fit([[1.0, d * d, d * d * c, d * c] for d, c, _ in v], [y for _, _, y in v]) for ph, v in pts.items()}
    out["w"] = fit([[1.0, d * d, d ** 3] for d, _, _ in per], [c.w["hidden"] for _, c, _ in per])
    out["step"] = [statistics.median(c.step[0] for _, c, _ in per),
                   _nnls(np.array([[1.0, d] for d, _, _ in per]), np.array([c.step[1] for _, c, _ in per])).tolist()]
    out["kept_per_d"] = statistics.median(c.kept / (d * s) for d, c, s in per)
    out["points"] = {ph: v for ph, v in pts.items()}
    return out


def anchored_costs_at(fit: dict, d: int, d_in: int, d_out: int, itemsize: int = 4) -> AnchoredCosts:
    """Costs from the fitted forms at width d. The first layer's products scale with its fan-in
    (d_in + 1)/d; the output layer's products with W by d_out/d, its Gram sum and W step are a
    hidden layer's (its input is d wide); fixed parts per chunk as a hidden layer's."""
    def hidden(ph):
        e, f, a, b = fit[ph]
        return [e + f * d * d, a * d * d + b * d]
    q, o = (d_in + 1) / d, d_out / d
    tables = {}
    for ph in ("fwd", "gram", "val", "bwd"):
        h = hidden(ph)
        tables[ph] = {"first": [h[0], h[1] * q], "hidden": h, "output": [h[0], h[1] * (1 if ph == "gram" else o)]}
    e, b, a = fit["w"]
    w = e + b * d * d + a * d ** 3
    step = [fit["step"][0], fit["step"][1][0] + fit["step"][1][1] * d]
    return AnchoredCosts(**tables, w={"first": w, "hidden": w, "output": w}, step=step,
                         kept=fit["kept_per_d"] * d * itemsize)


def _anchored_kept(tr) -> int:
    """Bytes that one anchor pass of the trainer keeps for its multiplier pass: the distinct
    storages autograd saves (saved_tensors_hooks) and the chunks' inputs and outputs the trainer
    holds, less those that existed before (the data, the weights)."""
    ws = {l: tr.layers[l - 1].w.detach().clone().requires_grad_() for l in tr.groups}
    before = {w.untyped_storage().data_ptr() for w in ws.values()}
    before |= {x.untyped_storage().data_ptr() for x in (tr.X or ())}
    seen = {}

    def pack(x):
        seen.setdefault(x.untyped_storage().data_ptr(), x.untyped_storage().nbytes())
        return x
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        graphs, _, _ = tr._anchor_pass(ws)
    for x, out, _ in graphs:
        for a in (x, out):
            seen.setdefault(a.untyped_storage().data_ptr(), a.untyped_storage().nbytes())
    return sum(n for p, n in seen.items() if p not in before)


def _wrap_anchored(tr, t):
    """Time each layer's forward (lay.g and, in the anchor pass, its Gram sum) and its part of the
    backward (tensor hooks on every layer's output and on layer 1's weight) in the real trainer."""
    stamps = []           # (layer whose output gradient is ready (0: layer 1's weight), time, cols)

    def stamp(l):
        return lambda grad: stamps.append((l, time.process_time(), grad.shape[0]))
    for l in range(1, tr.L + 1):
        lay, grp = tr.layers[l - 1], tr.groups[l][0]

        def g(x, w=None, _l=l, _orig=lay.g):
            dt, out = _cpu(_orig, x, w)
            t[("fwd" if out.requires_grad else "val", _l, x.shape[0])].append(dt)
            if out.requires_grad:
                out.register_hook(stamp(_l))
                if _l == 1:
                    w.register_hook(stamp(0))
            return out

        def add_input(x, _l=l, _orig=grp.add_input):
            dt, _ = _cpu(_orig, x)
            t[("gram", _l, x.shape[0])].append(dt)
        lay.g, grp.add_input = g, add_input
    orig_dual = tr._dual_pass

    def dual(graphs):
        stamps.clear()
        orig_dual(graphs)
        # per chunk the stamps run L, L−1, ..., 1, 0: layer l's backward is the time from the
        # gradient of its output to the gradient of its input (layer 1: of its weight)
        for (l1, t1, cols), (l0, t0, _) in zip(stamps, stamps[1:]):
            if l0 == l1 - 1:
                t[("bwd", l1, cols)].append(t0 - t1)
    tr._dual_pass = dual


# ---- backprop -------------------------------------------------------------------------------------
def backprop_costs(cfg, shares=(256, 128, 64, 32, 16), steps: int = 12):
    """The step's compute (forward, backward, packing, optimizer) at several local batch sizes."""
    from radmm_hpc.algos.backprop import BackpropTrainer
    torch.set_num_threads(1)
    ds = load_dataset(cfg.data)
    pts, opt = [], []
    for b in shares:
        c = copy.deepcopy(cfg)
        c.backprop.batch_size = b
        tr = BackpropTrainer(c, _runtime(), ds)
        tr.step(0)
        step = tr.opt.step

        def timed_step(*a, **k):
            t, out = _cpu(step, *a, **k)
            opt.append(t)
            return out
        tr.opt.step = timed_step
        per_step = []
        for it in range(1, steps + 1):
            c0 = tr.phase_cpu_s["compute"]
            tr.step(it)
            per_step.append(tr.phase_cpu_s["compute"] - c0)
        pts.append((tr.batch, min(per_step)))
    A = np.array([[1.0, b] for b, _ in pts])
    fixed, per = np.linalg.lstsq(A, np.array([t for _, t in pts]), rcond=None)[0]
    params = sum(p.numel() for p in tr.model.parameters())
    return BackpropCosts(per_sample=max(per, 0.0), fixed=max(fixed, 0.0),
                         optimizer=min(opt)), params, pts


# ---- ParMAC ---------------------------------------------------------------------------------------
def mac_costs(cfg, shards=(1, 4), iters: int = 1):
    """The Gauss–Newton W-step's statistics passes (fixed + per point and statistic) and damped
    solves (per g·d³), timed inside serial runs with S shards (a serial run with mac.shards = S
    does ParMAC's work for S ranks in one process), and the rest per point and per shard."""
    from radmm_hpc.algos.mac import parts as macparts
    from radmm_hpc.algos.mac import trainer as macmod
    torch.set_num_threads(1)
    ds = load_dataset(cfg.data)
    passes, solves, rest = [], [], []
    Nested = macparts.Nested
    orig_stats, orig_step = Nested.gn_stats, Nested.gn_step

    def sizes(nested, sm, n_in):
        return (sum(int(np.prod(sh)) for sh in nested.gn_shapes(sm, n_in)), (sm.r1 - sm.r0) * n_in ** 3)
    for S in shards:
        c = copy.deepcopy(cfg)
        c.mac.shards = S
        tr = macmod.MacTrainer(c, _runtime(), ds)
        mine_p, mine_s = [], []

        def timed_stats(self, sm, W_rows, zin, *a, **k):
            t, out = _cpu(orig_stats, self, sm, W_rows, zin, *a, **k)
            mine_p.append((zin.shape[0] * sizes(self, sm, zin.shape[1])[0], t))
            return out

        def timed_step(self, sm, W_rows, *a, **k):
            t, out = _cpu(orig_step, self, sm, W_rows, *a, **k)
            mine_s.append((sizes(self, sm, W_rows.shape[1])[1], t))
            return out
        Nested.gn_stats, Nested.gn_step = timed_stats, timed_step
        try:
            tr.step(0)
            mine_p.clear()
            mine_s.clear()
            c0 = tr.phase_cpu_s["compute"]
            for it in range(1, iters + 1):
                tr.step(it)
            total = (tr.phase_cpu_s["compute"] - c0) / iters
        finally:
            Nested.gn_stats, Nested.gn_step = orig_stats, orig_step
        passes += mine_p
        solves += mine_s
        rest.append((S, tr.n_fit, total - sum(t for _, t in mine_p + mine_s) / iters))
    A = np.array([[1.0, u] for u, _ in passes])
    fixed, per_stat = np.linalg.lstsq(A, np.array([t for _, t in passes]), rcond=None)[0]
    per_cube = sum(t for _, t in solves) / max(1, sum(u for u, _ in solves))
    # the rest of an iteration: a fixed part per shard and a part per point
    per_shard, per_point = np.linalg.lstsq(np.array([[S, n] for S, n, _ in rest], dtype=float),
                                           np.array([r for _, _, r in rest]), rcond=None)[0]
    m = cfg.model
    shapes = [tuple(w.shape) for w in tr.W]
    sz = [sizes(tr.nested, sm, shapes[sm.layer][1]) for sm in tr.trained]
    shape = MacShape(layer_params=[a * b for a, b in shapes],
                     submodels=[(sm.r1 - sm.r0) * shapes[sm.layer][1] for sm in tr.trained],
                     stats=[k for k, _ in sz], cubes=[k for _, k in sz],
                     n=tr.n_fit, width_sum=m.width * m.depth, epochs=cfg.mac.epochs,
                     itemsize=torch.finfo(tr.dtype).bits // 8)
    return shape, MacCosts(visit=max(fixed, 0.0), stat=max(per_stat, 0.0), solve=per_cube,
                           per_point=max(per_point, 0.0), per_shard=max(per_shard, 0.0))


# ---- TRGL -----------------------------------------------------------------------------------------
def trgl_costs(cfg, K: int, steps: int = 6):
    """Each module's training step (CPU seconds) with the network split into K modules, and the
    bytes of the message module k sends to k + 1 (activation and labels)."""
    from radmm_hpc.algos.trgl import TrglTrainer
    torch.set_num_threads(1)
    c = copy.deepcopy(cfg)
    c.trgl.modules = K
    ds = load_dataset(c.data)
    tr = TrglTrainer(c, _runtime(), ds)
    times = defaultdict(list)
    s = torch.finfo(tr.dtype).bits // 8
    for b in range(steps + 1):
        x, y = tr._batch(b)
        for k in range(K):
            t, x = _cpu(tr._train_module, k, x, y)
            if b:
                times[k].append(t)
    comp = [min(times[k]) for k in range(K)]
    act = [tr.B * (int(np.prod(tr.shapes[k])) + 1) * s for k in range(K)]
    mem = [4 * s * sum(p.numel() for p in tr.mods[k].parameters()) + act[k] * 4 for k in range(K)]
    return comp, act, mem


# ---- network --------------------------------------------------------------------------------------
def fit_net(name: str, points: dict) -> Net:
    """α, β from {bytes: seconds}: least squares on relative error."""
    n = np.array([float(k) for k in points])
    t = np.array(list(points.values()))
    coef = _nnls(np.stack([np.ones_like(n), n], 1) / t[:, None], np.ones(len(t)))
    return Net(name, float(coef[0]), float(1.0 / coef[1]) if coef[1] > 0 else float("inf"))


def pingpong(launch=None, env=None) -> dict:
    """bench.perf.pingpong on 2 ranks: `launch(argv)` gives the command that starts argv as a
    2-rank job (default: mpiexec -n 2 on this host)."""
    argv = [sys.executable, "-m", "bench.perf.pingpong"]
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = launch(argv) if launch else [mpiexec, "-n", "2"] + argv
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **(env or {}))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=e, timeout=600, check=True)
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
