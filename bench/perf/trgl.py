"""TRGL benchmarks (docs/trgl.md): prints markdown tables.

    python -m bench.perf.trgl accuracy   [--iters 400] [--subsets 0,300] [--taus 0.1,1,10]
    python -m bench.perf.trgl memory     [--ranks 1,2,4]
    python -m bench.perf.trgl throughput [--ranks 1,2,4]

accuracy: one process; for each training-set size, end-to-end backprop (trgl.mode = e2e), greedy
module-wise training (no penalty), TRGL in parallel mode for each τ, then sequential and multi-lap
(2 laps) at the same iteration budget with the τ that had the best validation accuracy. Every run
exports the parameters of its best validation accuracy (trgl.keep_best); the table shows the
network's final-head accuracy on the full test split for those parameters.
memory / throughput: the real CLI under mpiexec, one rank per module; peak bytes per rank from
summary.json, images/s of the training window.
"""

from __future__ import annotations

import argparse
import tempfile
import time

MODEL = ["--model", "resnet14", "--data", "digits", "--set", "model.base_width=8",
         "--set", "trgl.batch_size=32", "--set", "trgl.crop_pad=1", "--set", "trgl.flip=false",
         "--set", "train.compare=false"]


def _cfg(run_dir, iters, subset, modules=3, **trgl):
    from radmm_hpc.config import Config, validate
    cfg = Config()
    cfg.train.algo, cfg.train.iters, cfg.train.run_dir = "trgl", iters, run_dir
    cfg.train.compare, cfg.train.log_every, cfg.train.progress_seconds = False, max(1, iters // 10), 1e9
    cfg.model.arch, cfg.model.base_width = "resnet14", 8
    cfg.data.name, cfg.data.train_subset = "digits", subset
    cfg.trgl.modules, cfg.trgl.batch_size, cfg.trgl.crop_pad, cfg.trgl.flip = modules, 32, 1, False
    for k, v in trgl.items():
        setattr(cfg.trgl, k, v)
    validate(cfg, 1)
    return cfg


def accuracy(args):
    import torch

    from radmm_hpc.loop import train
    from tests.support import runtime
    torch.set_num_threads(1)
    taus = [float(t) for t in args.taus.split(",")]
    print(f"resnet14 (base width 8, 6 blocks) on digits, K = 3 modules, batch 32, {args.iters} iterations, "
          f"SGD lr 0.05 momentum 0.9, label smoothing 0.1, crop ±1; test accuracy of the final head at "
          f"the best-validation checkpoint (validation = 10% of the training split, every {args.iters // 10} it.)\n")
    print("| train samples | method | τ | best val acc | at iter | test acc | wall s |")
    print("|---|---|---|---|---|---|---|")
    for subset in [int(s) for s in args.subsets.split(",")]:
        runs = [("end-to-end (e2e)", "-", dict(mode="e2e")), ("greedy (no penalty)", "-", dict(penalty="none"))]
        runs += [("TRGL parallel", t, dict(tau=t)) for t in taus]
        results = {}

        def go(name, tau, kw):
            d = tempfile.mkdtemp(prefix="trgl-bench-")
            t0 = time.perf_counter()
            s = train(_cfg(d, args.iters, subset, **kw), runtime())
            n_train = s.get("n_train", subset or "all")
            print(f"| {n_train} | {name} | {tau} | {s['val_accuracy_best']:.4f} | {s['selected_iter']} | "
                  f"{s['test_accuracy']:.4f} | {time.perf_counter() - t0:.0f} |", flush=True)
            return s
        for name, tau, kw in runs:
            results[(name, tau)] = go(name, tau, kw)
        best_tau = max(taus, key=lambda t: results[("TRGL parallel", t)]["val_accuracy_best"])
        go("TRGL sequential", best_tau, dict(tau=best_tau, mode="sequential"))
        go("TRGL multi-lap (2 laps)", best_tau, dict(tau=best_tau, mode="multilap", laps=2))


def _cli(args_list, P, tag):
    from tests.support.launch import run_summary
    d = tempfile.mkdtemp(prefix=f"trgl-{tag}-")
    return run_summary(args_list, P, d)


def memory(args):
    print("| run | ranks | peak MB per rank | max | vs e2e |")
    print("|---|---|---|---|---|")
    base = MODEL + ["--algo", "trgl", "--iters", str(args.iters), "--set", f"train.log_every={args.iters}",
                    "--set", f"trgl.batch_size={args.batch}"]
    e2e = _cli(base + ["--set", "trgl.mode=e2e"], 1, "mem")
    ref = e2e["peak_mem_mb_max_rank"]
    print(f"| end-to-end | 1 | {ref:.2f} | {ref:.2f} | 1.00 |", flush=True)
    for P in [int(p) for p in args.ranks.split(",")]:
        k = max(P, 3) if P == 1 else P
        s = _cli(base + ["--set", f"trgl.modules={k if P == 1 else 0}"], P, "mem")
        per = [b / 2 ** 20 for b in s["peak_mem_bytes_per_rank"]]
        print(f"| TRGL K={k} | {P} | {', '.join(f'{v:.2f}' for v in per)} | {max(per):.2f} | "
              f"{max(per) / ref:.2f} |", flush=True)


def throughput(args):
    print("| run | ranks | modules | images/s | wall s (loop) |")
    print("|---|---|---|---|---|")
    base = MODEL + ["--algo", "trgl", "--iters", str(args.iters), "--set", f"train.log_every={args.iters}",
                    "--set", f"trgl.batch_size={args.batch}"]
    s = _cli(base + ["--set", "trgl.mode=e2e"], 1, "tp")
    print(f"| end-to-end | 1 | 1 | {s['train_images_per_s']:.0f} | {s['wall_s']:.1f} |", flush=True)
    for P in [int(p) for p in args.ranks.split(",")]:
        mods = 4 if P == 1 else P
        s = _cli(base + ["--set", f"trgl.modules={mods if P == 1 else 0}"], P, "tp")
        print(f"| TRGL parallel | {P} | {mods} | {s['train_images_per_s']:.0f} | {s['wall_s']:.1f} |", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("accuracy", "memory", "throughput"))
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--subsets", default="0,300")
    p.add_argument("--taus", default="0.1,1,10")
    p.add_argument("--ranks", default="1,2,4")
    p.add_argument("--batch", type=int, default=32, help="memory/throughput: trgl.batch_size")
    args = p.parse_args()
    {"accuracy": accuracy, "memory": memory, "throughput": throughput}[args.what](args)


if __name__ == "__main__":
    main()
