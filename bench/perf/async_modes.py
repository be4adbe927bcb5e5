"""Benchmarks of the async modes (docs/async.md). Prints tables; writes plots into --out.

    python -m bench.perf.async_modes dap   [--workers 1 2] [--epochs 15]
    python -m bench.perf.async_modes asgd  [--ranks 2 3 4] [--iters 60] [--target 0.30]

dap:  DAP-SVRG vs DAP-SGD on Wine Quality (binary: quality >= 6) and a generated sparse problem;
      log suboptimality P(x) − P* (P* by a long serial accelerated proximal-gradient run) against
      data passes and wall time; speed-up T(1)/T(W) to a fixed suboptimality; server busy fraction.
asgd: A-SGD (P−1 workers + the server) vs synchronous data-parallel SGD backprop on the same P
      ranks: time to a target training loss; updates/s, bytes per update, busy fraction,
      staleness histogram.
Every run is the real CLI under mpiexec (tests/support/launch.py); metrics come from metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from statistics import median

from tests.support.launch import run_summary

OUT = os.path.join("runs", "bench", "async_modes")


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(x) for x in fh if x.strip()]


def first_time(rows, key, target):
    for r in rows:
        if r.get(key) is not None and r[key] <= target:
            return r["wall_s"]
    return float("nan")


def bench_dap(a, tmp):
    from radmm_hpc.algos.ps.dap_math import write_sparse_problem
    sparse = os.path.join(tmp, "sparse.h5")
    write_sparse_problem(sparse, n=4000, p=200, density=0.1, support=20, seed=1)
    # the sparse problem has 200 features (L ~ 15x Wine's): a larger lam2 keeps its condition number
    # (L/lam2) near Wine's, so that n/batch updates per epoch contract both at a visible rate
    problems = {"wine (binary)": ["--data", "wine", "--set", f"dap.lam2={a.lam2}"],
                "sparse 4000x200": ["--data", f"hdf5:{sparse}", "--set", f"dap.lam2={10 * a.lam2}"]}
    runs = {}
    print(f"\nDAP: elastic-net logistic regression, lam1={a.lam1}, lam2={a.lam2} (sparse: {10 * a.lam2}), "
          f"batch {a.batch}, eta = {a.eta_scale}/L/W, {a.epochs} epochs (one epoch = one iteration = n/batch updates)")
    print(f"{'problem':<18}{'algo':<9}{'W':>3}{'subopt e1':>11}{'subopt end':>11}{'passes':>8}{'wall s':>8}"
          f"{'upd/s':>8}{'busy':>7}{'B/upd':>8}{'stale':>7}")
    for pname, data in problems.items():
        for algo in ("dapsvrg", "dapsgd"):
            for W in a.workers:
                rd = os.path.join(tmp, f"{algo}-{W}-{pname.split()[0]}")
                run_summary(["--algo", algo, *data, "--iters", str(a.epochs), "--set", "train.log_every=1",
                         "--set", "train.compare=false", "--set", f"dap.lam1={a.lam1}",
                         "--set", f"dap.batch_size={a.batch}",
                         "--set", f"dap.eta_scale={a.eta_scale * W}"], W + 1, rd)
                # eta_scale·W cancels the default 1/W: the same step for every W (staleness is small here)
                rows = metrics(rd)
                runs[(pname, algo, W)] = rows
                e = rows[-1]
                print(f"{pname:<18}{algo:<9}{W:>3}{rows[0]['suboptimality']:>11.2e}{e['suboptimality']:>11.2e}"
                      f"{e['data_passes']:>8.1f}{e['wall_s']:>8.1f}{e['updates_per_s']:>8.0f}"
                      f"{e['server_busy_fraction']:>7.2f}{e['bytes_per_update']:>8.0f}{e['staleness_mean']:>7.2f}")
    print(f"\ntime to suboptimality {a.dap_target:g} (s); speed-up T(1)/T(W):")
    for pname in problems:
        for algo in ("dapsvrg", "dapsgd"):
            ts = {W: first_time(runs[(pname, algo, W)], "suboptimality", a.dap_target) for W in a.workers}
            t1 = ts[a.workers[0]]
            print(f"  {pname:<18}{algo:<9}" + "".join(
                f"  W={W}: {t:7.2f} s (x{t1 / t:4.2f})" if t == t else f"  W={W}: not reached" for W, t in ts.items()))
    plot_dap(runs, problems, a.workers[-1], a.out)


def plot_dap(runs, problems, W, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (pname, algo, w), rows in runs.items():
        if w != W:
            continue
        style = "-" if algo == "dapsvrg" else "--"
        for ax, key in zip(axes, ("data_passes", "wall_s")):
            ax.semilogy([r[key] for r in rows], [max(r["suboptimality"], 1e-16) for r in rows], style,
                        marker="o", ms=3, label=f"{algo} · {pname}")
    for ax, xl in zip(axes, ("data passes (gradient evaluations / n)", "wall time (s)")):
        ax.set_xlabel(xl)
        ax.set_ylabel("P(x) − P*")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"DAP-SVRG vs DAP-SGD, {W} workers + 1 server (2 shared CPU cores)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "async_dap.png"), dpi=110)
    print(f"wrote {os.path.join(out, 'async_dap.png')}")


def bench_asgd(a, tmp):
    common = ["--data", "wine-red", "--set", f"model.width={a.width}", "--set", f"model.depth={a.depth}",
              "--set", "train.compare=false", "--set", f"train.log_every={a.log_every}"]
    print(f"\nA-SGD vs synchronous data-parallel SGD: wine-red, FCResNet width {a.width} depth {a.depth}, "
          f"batch {a.batch} per worker/rank, lr {a.lr}, momentum 0.9, target train loss {a.target}")
    print(f"(t→target: the median of {a.repeat} runs with seeds 0..{a.repeat - 1}; other columns: the last run)")
    print(f"{'method':<30}{'P':>3}{'iters':>7}{'final loss':>12}{'t→target s':>12}{'wall s':>8}"
          f"{'upd/s':>8}{'busy':>7}{'B/upd':>9}{'stale':>7}")
    results, hists = {}, {}
    for P in a.ranks:
        ts = []
        for rep in range(a.repeat):
            rd = os.path.join(tmp, f"asgd-{P}-{rep}")
            s = run_summary(["--algo", "asgd", *common, "--iters", str(a.iters), "--set", f"asgd.lr={a.lr}",
                         "--set", f"asgd.batch_size={a.batch}", "--set", f"asgd.n_sync={a.n_sync}",
                         "--set", f"asgd.updates_per_iter={a.updates}", "--set", f"asgd.warm_start_steps={a.warm}",
                         "--set", f"ps.staleness={a.policy}", "--set", f"ps.bound={a.bound}",
                         "--seed", str(rep)], P, rd)
            rows = metrics(rd)
            ts.append(first_time(rows, "train_loss", a.target))
        t = median(ts)
        results[("asgd", P)] = (rows, t)
        hists[P] = s["staleness_hist"]
        e = rows[-1]
        print(f"{f'A-SGD ({P - 1} worker(s) + server)':<30}{P:>3}{e['iter']:>7}{e['train_loss']:>12.4f}{t:>12.2f}"
              f"{e['wall_s']:>8.1f}{e['updates_per_s']:>8.1f}{e['server_busy_fraction']:>7.3f}"
              f"{e['bytes_per_update']:>9.0f}{e['staleness_mean']:>7.2f}")
        # the same samples per step per rank, the same number of optimizer steps' worth of samples
        steps = a.iters * a.updates * a.n_sync // max(1, P)
        ts = []
        for rep in range(a.repeat):
            rd = os.path.join(tmp, f"sync-{P}-{rep}")
            run_summary(["--algo", "backprop", *common, "--iters", str(steps), "--set", "backprop.optimizer=sgd",
                     "--set", f"backprop.lr={a.lr}", "--set", f"backprop.batch_size={a.batch * P}",
                     "--set", f"train.log_every={a.log_every * a.updates * a.n_sync // max(1, P)}",
                     "--seed", str(rep)], P, rd)
            rows = metrics(rd)
            ts.append(first_time(rows, "train_loss", a.target))
        t = median(ts)
        results[("sync", P)] = (rows, t)
        e = rows[-1]
        print(f"{'sync data-parallel SGD':<30}{P:>3}{e['iter']:>7}{e['train_loss']:>12.4f}{t:>12.2f}"
              f"{e['wall_s']:>8.1f}{'':>8}{'':>7}{'':>9}{'':>7}")
    base = results[("asgd", a.ranks[0])][1]
    print("\nspeed-up of A-SGD to the target: vs its first row, and vs sync SGD on the same ranks")
    for P in a.ranks:
        ta, ts = results[("asgd", P)][1], results[("sync", P)][1]
        print(f"  P={P}: x{base / ta:5.2f} vs {a.ranks[0]} ranks, x{ts / ta:5.2f} vs sync on {P} ranks")
    plot_asgd(results, hists, a)


def plot_asgd(results, hists, a):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (kind, P), (rows, _) in sorted(results.items()):
        label = f"A-SGD {P - 1}w" if kind == "asgd" else f"sync SGD {P} ranks"
        axes[0].plot([r["wall_s"] for r in rows], [r["train_loss"] for r in rows],
                     "-" if kind == "asgd" else "--", label=label)
    axes[0].axhline(a.target, color="grey", lw=0.8)
    axes[0].set_xlabel("wall time (s)")
    axes[0].set_ylabel("training loss")
    axes[0].legend(fontsize=8)
    for P, h in hists.items():
        last = max([i for i, c in enumerate(h) if c] + [0])
        axes[1].bar([i + 0.25 * (P - a.ranks[0]) for i in range(last + 1)], h[:last + 1], width=0.25,
                    label=f"{P - 1} worker(s)")
    axes[1].set_xlabel("staleness (versions)")
    axes[1].set_ylabel("pushes")
    axes[1].legend(fontsize=8)
    fig.suptitle("A-SGD on wine-red (2 shared CPU cores)")
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "async_asgd.png"), dpi=110)
    print(f"wrote {os.path.join(a.out, 'async_asgd.png')}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("dap", "asgd"))
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lam1", type=float, default=1e-3)
    p.add_argument("--lam2", type=float, default=1e-2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--eta-scale", dest="eta_scale", type=float, default=0.5)
    p.add_argument("--dap-target", dest="dap_target", type=float, default=1e-3)
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--target", type=float, default=0.30)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--n-sync", dest="n_sync", type=int, default=4)
    p.add_argument("--updates", type=int, default=8)
    p.add_argument("--warm", type=int, default=20)
    p.add_argument("--policy", default="none")
    p.add_argument("--bound", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3, help="runs per row (median time to target)")
    p.add_argument("--log-every", dest="log_every", type=int, default=2)
    p.add_argument("--out", default=OUT, help="directory for the plots (docs/ keeps the ones it shows)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.what == "dap":
        a.batch = a.batch
    else:
        a.batch = 32 if a.batch == 8 else a.batch
    with tempfile.TemporaryDirectory(prefix="async-bench-") as tmp:
        (bench_dap if a.what == "dap" else bench_asgd)(a, tmp)


if __name__ == "__main__":
    main()
