"""Depth sweep: RADMM vs Adam- and SGD-backpropagation on the plain FCResNet at equal wall-clock.

For each depth (hidden layers), RADMM (serial Gauss-Seidel, one process) runs a fixed number of
iterations; Adam and SGD backpropagation then train the same network (same initialisation, same
data) for the same wall-clock. Prints a table of forward-pass train/test MSE and R², and the
largest gradient norm backprop met (an exploding gradient shows up as a huge or non-finite norm).

    python -m bench.studies.depth_sweep --depths 8 16 32 64 128 --iters 60
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from radmm_hpc.algos.backprop import BackpropTrainer
from radmm_hpc.algos.radmm import make_trainer
from radmm_hpc.config import Config
from radmm_hpc.data import load_dataset
from radmm_hpc.scoring import score_weights
from tests.support import runtime


def run(depth, args):
    cfg = Config()
    cfg.model.depth, cfg.model.width = depth, args.width
    cfg.data.name = args.data
    cfg.radmm.schedule = "serial"
    cfg.train.dtype = args.dtype
    if args.init_scale:
        cfg.model.init_scale = args.init_scale
    rt = runtime()
    ds = load_dataset(cfg.data)
    rows = []
    t0 = time.perf_counter()
    tr = make_trainer(cfg, rt, ds)
    for it in range(args.iters):
        tr.step(it)
    budget = time.perf_counter() - t0
    rows.append(("radmm", args.iters, budget,
                 score_weights(tr.export_weights(), ds, "relu", True), float("nan")))
    for opt, lr in (("adam", args.adam_lr), ("sgd", args.sgd_lr)):
        cfg.backprop.optimizer, cfg.backprop.lr = opt, lr
        t0 = time.perf_counter()
        bp = BackpropTrainer(cfg, rt, ds)
        it, gmax = 0, 0.0
        while time.perf_counter() - t0 < budget:
            bp.step(it)
            g = bp.grad_norm
            gmax = g if not math.isfinite(g) else max(gmax, g)
            it += 1
        rows.append((f"backprop-{opt}", it, time.perf_counter() - t0,
                     score_weights(bp.weights(), ds, "relu", True), gmax))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--depths", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--iters", type=int, default=60, help="RADMM iterations per depth")
    ap.add_argument("--width", type=int, default=Config().model.width)
    ap.add_argument("--data", default="wine")
    ap.add_argument("--init-scale", type=float, default=0.0, help="0: the default model.init_scale")
    ap.add_argument("--adam-lr", type=float, default=1e-3)
    ap.add_argument("--sgd-lr", type=float, default=1e-2)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"{'depth':>5} {'method':<15} {'iters':>7} {'wall_s':>7} {'train_mse':>10} {'test_mse':>10} "
          f"{'test_r2':>8} {'max_grad':>10}")
    out = []
    for depth in args.depths:
        for name, iters, wall, s, gmax in run(depth, args):
            print(f"{depth:>5} {name:<15} {iters:>7} {wall:>7.1f} {s['train_mse']:>10.4g} "
                  f"{s['test_mse']:>10.4g} {s['test_r2']:>8.3f} {gmax:>10.3g}", flush=True)
            out.append(dict(depth=depth, method=name, iters=iters, wall_s=wall, max_grad=gmax, **s))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
