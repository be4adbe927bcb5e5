"""Validate the scaling model against real runs, then predict to 1024 ranks and beyond this machine.

    python -m bench.perf.scaling_validate                 # everything (about 30 min on 2 cores)
    python -m bench.perf.scaling_validate --no-netns      # without the namespace nodes (no root)
    python -m bench.perf.scaling_validate --only radmm-jacobi backprop

1. Inputs, measured in one process by CPU time (scaling_inputs.py), and the comm layer's α, β
   by ping-pong between 2 ranks: on this host (shared memory) and between two namespace nodes
   (TCP over a veth pair, tests/multinode/netns.py).
2. Runs through the real CLI at P = 1, 2 (this host's 2 cores), 4 and 8 (oversubscribed), and
   across the namespace nodes (P = 2, 3, 4). Measured: the median wall time per iteration
   (summary.json), each rank's compute CPU time per iteration (metrics phase_cpu_s: the least
   over the logging intervals after the first, as the inputs are the least of repeats) and the
   bytes each rank sends per iteration (comm counters).
3. Errors, per run: `wall` = predicted T vs the measured median wall time per iteration (only
   meaningful without oversubscription: one rank per core); `cpu` = the predicted compute
   critical path vs the same path composed from the ranks' measured CPU times (what an
   oversubscribed run can still measure); bytes predicted vs counted.
4. Predictions to P = 1024 at the measured sizes and at depth 1024, width 1024, N = 10^6, for
   shared memory and 25/100/400 Gb/s networks; memory per rank; the plot docs/scaling_model.png.
Results go to bench/perf/results/scaling.json (the numbers docs/scaling_model.md quotes).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time

from bench.perf import scaling_inputs as si
from bench.perf import scaling_model as sm

ROOT = si.ROOT
RESULTS = os.path.join(ROOT, "bench", "perf", "results", "scaling.json")
PLOT = os.path.join(ROOT, "docs", "scaling_model.png")
P_MAX = 1024
CORES = len(os.sched_getaffinity(0))

# the measured configurations: (method, CLI arguments, local P, namespace placements)
PROXIMAL = si.proximal_args()      # the paper variant's rows: radmm.variant = proximal, its penalties
ANCHORED = ["--iters", "24", "--set", "train.log_every=1"]    # the default variant, pipeline schedule
CASES = {
    "radmm-anchored": ("anchored", ANCHORED, [1, 2, 4], [[1, 1]]),
    "radmm-anchored-m2": ("anchored", [*ANCHORED, "--set", "radmm.microbatches=2"], [1, 2], []),
    "radmm-jacobi": ("radmm", [*PROXIMAL, "--set", "radmm.schedule=jacobi", "--iters", "8",
                               "--set", "train.log_every=1"],
                     [1, 2, 4, 8], [[1, 1], [1, 1, 1], [2, 2]]),
    "radmm-two-colour": ("radmm", [*PROXIMAL, "--set", "radmm.schedule=two-colour", "--iters", "8",
                                   "--set", "train.log_every=1"], [1, 2, 4, 8], [[1, 1], [2, 2]]),
    "backprop": ("backprop", ["--algo", "backprop", "--iters", "40", "--set", "train.log_every=4"],
                 [1, 2, 4, 8], [[1, 1], [2, 2]]),
    "parmac": ("mac", ["--algo", "mac", "--set", "model.depth=8", "--set", "mac.iters_per_mu=100",
                       "--iters", "5", "--set", "train.log_every=1"], [1, 2, 4, 8], [[1, 1]]),
    "trgl": ("trgl", ["--algo", "trgl", "--model", "resnet20", "--data", "digits", "--iters", "40",
                      "--set", "train.log_every=4"], [1, 2, 4], [[1, 1]]),
}
COMMON = ["--set", "train.compare=false", "--set", "checkpoint.every_seconds=0"]


def load() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


# ---- runs ---------------------------------------------------------------------------------------
def run_cli(args, P, run_dir, cluster=None, placement=None):
    argv = [sys.executable, "-m", "radmm_hpc", "--run-dir", run_dir, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    if cluster is not None:
        proc = cluster.run(placement, argv, timeout=1800, cwd=ROOT, env={"PYTHONPATH": ROOT})
    else:
        if P > 1:
            argv = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(P)] + argv
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    if proc.returncode:
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-3000:]}")
    with open(os.path.join(run_dir, "summary.json")) as fh:
        s = json.load(fh)
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        recs = [json.loads(line) for line in fh]
    # each rank's compute CPU per iteration in each logging interval after the first (which
    # allocates and warms up); the least of them: other load only ever inflates CPU time. The
    # anchored variant: only intervals of accepted iterations (a rejected one has no multiplier
    # pass), and the wall time as their median (train.log_every = 1: one iteration each)
    cpu, walls = None, []
    for a, b in zip(recs[1:], recs[2:]):
        n = b["iter"] - a["iter"]
        if "accepted" in b and b["accepted"] - a["accepted"] != n:
            continue
        walls.append(b["time_per_iter_s"])
        per = [(y - x) / n for x, y in zip(a["phase_cpu_s"]["compute"], b["phase_cpu_s"]["compute"])]
        cpu = per if cpu is None else [min(u, v) for u, v in zip(cpu, per)]
    out = {"wall_per_iter": s["time_per_iter_s"], "bytes_per_iter": s["bytes_sent_per_iter"],
           "state_mb": s["state_mb_max_rank"], "compute_cpu": cpu}
    if "accepted" in recs[-1]:
        out["wall_per_iter"] = sorted(walls)[len(walls) // 2]
        out["accepted_share"] = recs[-1]["accepted"] / (recs[-1]["accepted"] + recs[-1]["rejected"])
        out["accepted_iters"] = len(walls)
    return out


# ---- the model for each method ---------------------------------------------------------------------
class Inputs:
    """Everything measured in one process, per method (at the validation sizes); each method's
    inputs are measured just before its runs, so that the machine's load drifts least between."""

    def __init__(self):
        self.data, self.cpu_s = {}, 0.0

    def measure(self, case):
        method, args = CASES[case][0], COMMON + CASES[case][1]
        t0 = time.process_time()
        if method == "radmm":
            shape, costs = si.radmm_costs(si.config(args))
            self.data["radmm"] = {"shape": vars(shape), "costs": vars(costs)}
        elif method == "anchored":
            shape, costs, _ = si.anchored_costs(si.config(args))
            self.data["anchored"] = {"shape": vars(shape), "costs": vars(costs)}
        elif method == "backprop":
            costs, params, pts = si.backprop_costs(si.config(args))
            self.data["backprop"] = {"costs": {k: float(v) for k, v in vars(costs).items()},
                                     "params": params, "points": pts,
                                     "batch": si.config(args).backprop.batch_size, "width_sum": 64 * 34}
        elif method == "mac":
            shape, costs = si.mac_costs(si.config(args))
            self.data["mac"] = {"shape": vars(shape), "costs": {k: float(v) for k, v in vars(costs).items()}}
        elif method == "trgl":
            cfg = si.config(args)
            self.data["trgl"] = {str(K): dict(zip(("compute", "act", "mem"), si.trgl_costs(cfg, K)))
                                 for K in CASES[case][2]}
        self.cpu_s += time.process_time() - t0
        return dict(self.data[method])

    def predict(self, method, P, schedule, intra, inter, placement=None, measured=None, m=0, share=1.0):
        d = self.data
        if method == "anchored":
            shape, costs = sm.AnchoredShape(**d["anchored"]["shape"]), sm.AnchoredCosts(**d["anchored"]["costs"])
            model = functools.partial(sm.predict_anchored, shape, costs, P, intra, inter, placement, m)
            out = model()
            if measured:
                out["cpu_path"] = model(rank_compute=measured)["total"]
            # bytes per iteration of the busiest rank over the run's accepted and rejected iterations
            rej = model(accepted=False)["rank_bytes"]
            out["bytes"] = max(share * a + (1 - share) * b for a, b in zip(out["rank_bytes"], rej))
            return out
        if method == "radmm":
            shape, costs = sm.RadmmShape(**d["radmm"]["shape"]), sm.RadmmCosts(**d["radmm"]["costs"])
            out = sm.predict_radmm(shape, costs, P, schedule, intra, inter, placement)
            if measured:
                out["cpu_path"] = sm.predict_radmm(shape, costs, P, schedule, intra, inter, placement,
                                                   rank_compute=measured)["total"]
            s = shape.itemsize
            dn, d2 = shape.width * shape.n * s, shape.width ** 2 * s
            mid = P > 2
            out["bytes"] = 0 if P == 1 else ((3 * dn if mid else 2 * dn) if schedule == "jacobi"
                                             else (3 * dn + d2 if mid else 2 * dn + d2))
            return out
        if method == "backprop":
            b = d["backprop"]
            out = sm.predict_backprop(b["params"], b["batch"], 4, sm.BackpropCosts(**b["costs"]), P,
                                      intra, inter, placement, b["width_sum"])
            out["bytes"] = b["params"] * 4 if P > 1 else 0
            if measured:
                out["cpu_path"] = max(measured) + out["comm"]
            return out
        if method == "mac":
            m = d["mac"]
            out = sm.predict_parmac(sm.MacShape(**m["shape"]), sm.MacCosts(**m["costs"]), P, intra, inter,
                                    placement)
            if measured:
                out["cpu_path"] = max(measured) + out["comm"]
            return out
        if method == "trgl":
            t = d["trgl"][str(P)]
            out = sm.predict_trgl(t["compute"], t["act"], 0, intra, inter, placement, t["mem"])
            if measured:
                out["cpu_path"] = sm.predict_trgl(measured, t["act"], 0, intra, inter, placement)["total"]
            return out
        raise KeyError(method)


def validate(inputs, only, nets, cluster, runs=True):
    rows = []
    for name in only:
        method, args, local, placements = CASES[name]
        schedule = "two-colour" if "two-colour" in name else "jacobi"
        inputs.measured = getattr(inputs, "measured", {})
        inputs.measured[name] = inputs.measure(name)
        if not runs:
            continue
        runs = [(P, None) for P in local] + ([(sum(p), p) for p in placements] if cluster else [])
        for P, placement in runs:
            with tempfile.TemporaryDirectory() as tmp:
                before = load()
                meas = run_cli(COMMON + args, P, tmp, cluster if placement else None, placement)
            where = "netns" if placement else "host"
            inter = nets["veth"] if placement else nets["shm"]
            node_of = [i for i, k in enumerate(placement) for _ in range(k)] if placement else None
            m = si.config(COMMON + args, P).radmm.microbatches if method == "anchored" else 0
            pred = inputs.predict(method, P, schedule, nets["shm"], inter, node_of, meas["compute_cpu"], m,
                                  meas.get("accepted_share", 1.0))
            row = {"case": name, "P": P, "where": where, "placement": placement,
                   # (the namespace nodes share this host's cores)
                   "oversubscribed": P > CORES, "load_before": before, "load_after": load(),
                   "measured_wall": meas["wall_per_iter"], "predicted": pred["total"],
                   "predicted_compute": pred["compute"], "predicted_comm": pred["comm"],
                   "measured_cpu_path": pred.get("cpu_path"),
                   "measured_compute_cpu_max": max(meas["compute_cpu"]),
                   "measured_bytes": meas["bytes_per_iter"], "predicted_bytes": pred.get("bytes"),
                   "measured_state_mb": meas["state_mb"], "predicted_memory_mb": pred["memory"] / 2**20}
            if method == "anchored":        # the compute model itself: the busiest rank's CPU per iteration
                row.update(chunks=pred["chunks"], predicted_state_mb=pred["state"] / 2**20,
                           accepted_iters=meas["accepted_iters"], accepted_share=meas["accepted_share"],
                           predicted_compute_cpu_max=max(pred["rank_compute"]),
                           err_rank_cpu=max(pred["rank_compute"]) / max(meas["compute_cpu"]) - 1,
                           link=vars(inter))
            row["err_wall"] = pred["total"] / meas["wall_per_iter"] - 1
            row["err_cpu"] = pred["total"] / pred["cpu_path"] - 1 if pred.get("cpu_path") else None
            one = next((r for r in rows if r["case"] == name and r["P"] == 1), None)
            # the predicted speed-up T(1)/T(P) against the measured one (CPU paths): free of the
            # drift of the machine's speed between the inputs and the runs
            row["err_speedup"] = ((one["predicted"] / pred["total"]) / (one["measured_cpu_path"] / pred["cpu_path"]) - 1
                                  if one and P > 1 else None)
            rows.append(row)
            sp = f"{row['err_speedup']:+.0%}" if row["err_speedup"] is not None else "-"
            print(f"{name:<17} P={P:<2} {where:<5} wall {meas['wall_per_iter']:.4f} s  predicted "
                  f"{pred['total']:.4f} s ({row['err_wall']:+.0%})  cpu path {row['measured_cpu_path']:.4f} s "
                  f"({row['err_cpu']:+.0%}; speed-up {sp})  bytes {meas['bytes_per_iter']:.0f}/"
                  f"{row['predicted_bytes']}  load {before}", flush=True)
    return rows


# ---- beyond this machine ----------------------------------------------------------------------------
BIG = {"depth": 1024, "width": 1024, "n": 10 ** 6, "d_in": 1024, "d_out": 10, "itemsize": 4,
       "backprop_batch": 4096, "trgl_arch": "resnet1022", "trgl_batch": 64}


def powers(limit):
    out, P = [], 1
    while P <= limit:
        out.append(P)
        P *= 2
    return out


def curves(inputs, fit, nets, big: bool):
    """{method: {net: [(P, T, efficiency, memory)]}}, one rank per node (every message crosses
    the network) except for 'shared memory'."""
    d = inputs.data
    out = {}
    networks = [("shared memory", nets["shm"])] + [(n.name, n) for n in sm.NETWORKS]   # shm: as measured here
    for method in ("radmm-anchored", "radmm-jacobi", "radmm-two-colour", "backprop", "parmac", "trgl"):
        kind = CASES[method][0]
        if kind not in d:
            continue
        res = {}
        for label, net in networks:
            pts = []
            for P in powers(P_MAX):
                pr = big_predict(kind, method, P, net, d, fit) if big else small_predict(inputs, kind, method, P, net)
                if pr is None:
                    continue
                pts.append((P, pr["total"], pr["memory"]))
            if pts:
                t1 = pts[0][1]
                res[label] = [(P, T, sm.efficiency(t1, T, P), mem) for P, T, mem in pts]
        out[method] = res
    return out


def small_predict(inputs, kind, method, P, net):
    d = inputs.data
    if kind in ("radmm", "anchored") and P > d[kind]["shape"]["depth"]:
        return None
    if kind == "trgl":
        if str(P) not in d["trgl"]:
            return None
    if kind == "mac" and P > len(d["mac"]["shape"]["submodels"]):
        return None
    if kind == "backprop" and P > d["backprop"]["batch"]:
        return None
    schedule = "two-colour" if "two-colour" in method else "jacobi"
    return inputs.predict(kind, P, schedule, net, net)


def big_predict(kind, method, P, net, d, fit):
    B = BIG
    if kind == "anchored":           # radmm.val_fraction = 0.1 of the training points validate
        n_val = round(0.1 * B["n"])
        shape = sm.AnchoredShape(B["depth"], B["width"], B["n"] - n_val, n_val, B["d_in"], B["d_out"], B["itemsize"])
        costs = si.anchored_costs_at(fit["anchored"], B["width"], B["d_in"], B["d_out"], B["itemsize"])
        return sm.predict_anchored(shape, costs, P, net, net) if P <= B["depth"] else None
    if kind == "radmm":
        shape = sm.RadmmShape(B["depth"], B["width"], B["n"], B["d_in"], B["d_out"], B["itemsize"])
        costs = si.radmm_costs_at(fit["radmm"], B["width"], B["n"], B["d_in"])
        if P > B["depth"]:
            return None
        return sm.predict_radmm(shape, costs, P, "two-colour" if "two-colour" in method else "jacobi", net, net)
    if kind == "backprop":
        b = d["backprop"]
        params = B["depth"] * B["width"] ** 2
        # per-sample compute and the optimizer step grow with the parameters; the rest of the
        # fixed cost (Python, packing of small tensors) does not
        scale, c = params / b["params"], b["costs"]
        opt = c["optimizer"] * scale
        c = sm.BackpropCosts(per_sample=c["per_sample"] * scale, fixed=c["fixed"] - c["optimizer"] + opt,
                             optimizer=opt)
        if P > B["backprop_batch"]:
            return None
        return sm.predict_backprop(params, B["backprop_batch"], 4, c, P, net, net, None, B["depth"] * B["width"])
    if kind == "mac":
        m = d["mac"]
        small = sm.MacShape(**m["shape"])
        W = B["width"]
        # one row group per hidden layer (depth ≥ ranks); the output layer is refitted at μ stage
        # ends only (mac.output = refit), so it is not in the W-step
        shape = sm.MacShape(layer_params=[W * W] * B["depth"] + [W * B["d_out"]],
                            submodels=[W * W] * B["depth"], stats=[W * W * W + W * W] * B["depth"],
                            cubes=[W ** 4] * B["depth"], n=B["n"], width_sum=W * B["depth"],
                            epochs=small.epochs, itemsize=4)
        c = m["costs"]
        costs = sm.MacCosts(visit=c["visit"], stat=c["stat"], solve=c["solve"],
                            per_point=c["per_point"] * sum(shape.layer_params) / sum(small.layer_params))
        if P > len(shape.submodels):
            return None
        return sm.predict_parmac(shape, costs, P, net, net)
    if kind == "trgl":
        return trgl_big(P, net, d)
    return None


def trgl_fit(d):
    """Per-module training step = o·blocks + c·MACs (per sample, times the batch), fitted on the
    measured modules of resnet20 on digits."""
    import numpy as np
    cfg = si.config(CASES["trgl"][1])
    rows = []
    import torch

    from radmm_hpc.data import load_dataset
    from radmm_hpc.models import build_model
    from radmm_hpc.models.resnet import block_costs, split_modules
    ds = load_dataset(cfg.data)
    model = build_model(cfg, ds, torch.Generator().manual_seed(0))
    macs = block_costs(model)
    B = min(cfg.trgl.batch_size, len(ds.X_train))
    for K, t in d["trgl"].items():
        for k, part in enumerate(split_modules(model, int(K))):
            blocks = [i - 1 for i in part if 1 <= i <= len(macs)]
            rows.append((len(blocks), B * sum(macs[b] for b in blocks), t["compute"][k]))
    A = np.array([[n, m] for n, m, _ in rows], dtype=float)
    y = np.array([t for _, _, t in rows])
    return si._nnls(A / y[:, None], np.ones(len(y)))


def trgl_big(P, net, d, _cache={}):
    from types import SimpleNamespace

    import torch

    from radmm_hpc.models.resnet import ResNet, block_costs, parse_arch
    B = BIG
    if "model" not in _cache:
        kind, n = parse_arch(B["trgl_arch"])
        model = ResNet((3, 32, 32), 10, kind, n, "post", "A", "batch", 16)
        _cache["macs"] = block_costs(model)
        _cache["fit"] = trgl_fit(d)
        shapes, x = [], torch.zeros(1, 3 * 32 * 32)
        with torch.no_grad():
            model.eval()
            for layer in model.layers()[:-1]:
                x = layer(x)
                shapes.append(x[0].numel())
        _cache["act"], _cache["params"] = shapes[1:], [sum(p.numel() for p in b.parameters()) for b in model.blocks]
        _cache["model"] = SimpleNamespace()
    macs, (o, c) = _cache["macs"], _cache["fit"]
    n = len(macs)
    if P > n:
        return None
    per = math.ceil(n / P)
    parts = [range(s, min(n, s + per)) for s in range(0, n, per)]
    comp = [o * len(p) + c * B["trgl_batch"] * sum(macs[i] for i in p) for p in parts]
    act = [B["trgl_batch"] * (_cache["act"][p[-1]] + 1) * 4 for p in parts]
    mem = [4 * 4 * sum(_cache["params"][i] for i in p) + 2 * 4 * B["trgl_batch"] * sum(_cache["act"][i] for i in p)
           for p in parts]
    comp += [0.0] * (P - len(parts))
    act += [0.0] * (P - len(parts))
    return sm.predict_trgl(comp, act, 0, net, net, None, mem)


# ---- plot ---------------------------------------------------------------------------------------------
def plot(rows, small, big, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = [m for m in CASES if m in small]
    fig, axes = plt.subplots(3, len(methods), figsize=(4.2 * len(methods), 11.5), squeeze=False)
    colours = {"shared memory": "C0", "25 Gb/s": "C1", "100 Gb/s": "C2", "400 Gb/s": "C3"}
    for j, m in enumerate(methods):
        ax = axes[0][j]
        for label, pts in small[m].items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=colours[label], lw=1.2, label=label)
        for r in (r for r in rows if r["case"] == m):
            mk = "s" if r["where"] == "netns" else "o"
            if not r["oversubscribed"]:
                ax.plot(r["P"], r["measured_wall"], mk, color="k", ms=6, label="_")
            ax.plot(r["P"], r["measured_cpu_path"], mk, mfc="none", color="k", ms=9, label="_")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{m}: measured size")
        ax.set_xlabel("ranks P")
        ax.set_ylabel("s / iteration")
        ax.grid(alpha=0.3, which="both")
        ax = axes[1][j]
        for label, pts in big.get(m, {}).items():
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "-", color=colours[label], lw=1.2, label=label)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{m}: efficiency, beyond", fontsize=10)
        ax.set_xlabel("ranks P")
        ax.set_ylabel("parallel efficiency T(1)/(P·T(P))")
        ax.grid(alpha=0.3, which="both")
        ax = axes[2][j]
        pts = big.get(m, {}).get("100 Gb/s", [])
        ax.plot([p[0] for p in pts], [p[3] / 2**30 for p in pts], "-", color="k", lw=1.2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{m}: memory, beyond", fontsize=10)
        ax.set_xlabel("ranks P")
        ax.set_ylabel("GiB per rank (state" + (" + anchor graph)" if m == "radmm-anchored" else ")"))
        ax.grid(alpha=0.3, which="both")
    loads = [float(r["load_before"].split()[0]) for r in rows]
    span = f" (load {min(loads):.0f}-{max(loads):.0f} on {CORES} cores)" if loads else ""
    axes[0][0].plot([], [], "ko", label=f"measured wall, 1 rank/core{span}")
    axes[0][0].plot([], [], "ko", mfc="none", label="measured CPU path")
    axes[0][0].plot([], [], "ks", mfc="none", label="… across namespace nodes")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Scaling model: predicted time per iteration (lines) and measurements (points); "
                 "bottom: depth 1024, width 1024, N = 1e6 (RADMM, ParMAC, backprop), resnet1022 (TRGL)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--no-netns", action="store_true", help="skip the namespace nodes")
    ap.add_argument("--no-runs", action="store_true", help="inputs and predictions only")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--plot", default=PLOT)
    ap.add_argument("--replot", metavar="JSON", help="only draw the plot (and the summary) of a results file")
    args = ap.parse_args()
    if args.replot:
        with open(args.replot) as fh:
            res = json.load(fh)
        plot(res["validation"], res["predicted_small"], res["predicted_big"], args.plot)
        summarise(res["validation"], res["predicted_big"], res["predicted_small"])
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    t0 = time.time()
    print(f"load {load()}", flush=True)
    nets = {"shm": si.fit_net("shared memory", si.pingpong())}
    cluster = None
    if not args.no_netns:
        sys.path.insert(0, os.path.join(ROOT, "tests", "multinode"))
        import netns
        reason = netns.unavailable_reason()
        if reason:
            print(f"namespace nodes unavailable: {reason}")
        else:
            cluster = netns.Cluster(4).up()
            nets["veth"] = si.fit_net("veth (TCP)", si.pingpong(
                lambda argv: cluster.mpiexec_argv([1, 1], argv), env={"RADMM_NETNS_MAP": cluster.map}))
    try:
        for k, n in nets.items():
            print(f"network {k}: alpha {n.alpha * 1e6:.1f} us, beta {n.beta / 1e9:.2f} GB/s", flush=True)
        inputs = Inputs()
        rows = validate(inputs, args.only, nets, cluster, runs=not args.no_runs)
        kinds = {CASES[c][0] for c in args.only}
        fit = {"radmm": si.radmm_fit() if "radmm" in kinds else None,
               "anchored": si.anchored_fit() if "anchored" in kinds else None}
    finally:
        if cluster is not None:
            cluster.down()
    small = curves(inputs, fit, nets, big=False)
    big = curves(inputs, fit, nets, big=True)
    out = {"load_start_end": [None, load()], "seconds": time.time() - t0,
           "networks": {k: vars(n) for k, n in nets.items()}, "inputs": inputs.measured,
           "inputs_cpu_s": inputs.cpu_s, "radmm_fit": fit["radmm"], "anchored_fit": fit["anchored"],
           "big": BIG, "validation": rows, "predicted_small": small, "predicted_big": big}
    out = merge(args.out, out, args.only)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1, default=float)
    plot(out["validation"], out["predicted_small"], out["predicted_big"], args.plot)
    summarise(out["validation"], out["predicted_big"], out["predicted_small"])


def merge(path, new, only):
    """A run of some cases (--only) replaces their rows, inputs and curves in an existing results
    file and keeps the other cases' (each row records the load and link it was measured at)."""
    if set(only) == set(CASES) or not os.path.exists(path):
        return new
    with open(path) as fh:
        old = json.load(fh)
    out = dict(old, big=new["big"], load_start_end=new["load_start_end"])
    out["validation"] = [r for r in old["validation"] if r["case"] not in only] + new["validation"]
    for k in ("inputs", "predicted_small", "predicted_big"):
        out[k] = {**old.get(k, {}), **new[k]}
    for k in ("radmm_fit", "anchored_fit"):
        out[k] = new[k] if new[k] is not None else old.get(k)
    out.setdefault("runs", []).append({"only": list(only), "seconds": new["seconds"], "networks": new["networks"]})
    return out


def summarise(rows, big, small=None):
    for m, nets in (small or {}).items():
        for net in ("shared memory", "100 Gb/s"):
            eff = {P: E for P, _, E, _ in nets.get(net, [])}
            print(f"{m:<17} measured size, {net}: efficiency "
                  + ", ".join(f"P={P} {eff[P]:.2f}" for P in (2, 4, 8, 16) if P in eff))
    for kind in ("err_wall", "err_cpu", "err_speedup", "err_rank_cpu"):
        sel = [r for r in rows if r.get(kind) is not None and (kind != "err_wall" or not r["oversubscribed"])]
        if sel:
            errs = [abs(r[kind]) for r in sel]
            print(f"{kind}: {len(sel)} runs, median |error| {sorted(errs)[len(errs) // 2]:.0%}, max {max(errs):.0%}")
    for m, nets in big.items():
        pts = nets.get("100 Gb/s")
        if pts:
            P, T, E, mem = pts[-1]
            print(f"{m:<17} at P = {P} over 100 Gb/s: {T:.3g} s/iteration, efficiency {E:.2f}, "
                  f"{mem / 2**30:.3g} GiB per rank")


if __name__ == "__main__":
    main()
