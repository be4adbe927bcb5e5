"""Depth sweep: RADMM vs Adam- and SGD-backpropagation on the plain FCResNet at equal wall-clock.

For each depth (hidden layers), RADMM (one process, the variant of the current settings: the
anchored one by default) runs a fixed number of iterations; Adam and SGD backpropagation then
train the same network (same initialisation, same data) for the same wall-clock
(baselines.backprop_for_seconds: on the training split less the seeded 10% validation share that
RADMM also holds out). Rows: RADMM's exported network (its validation-chosen iterate), and for
each optimizer its last iterate and its early-stopped one (lowest validation loss), with the
largest gradient norm it met (an exploding gradient shows up as a huge or non-finite norm).

    python -m bench.studies.depth_sweep --depths 8 16 32 64 128 --iters 60
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from radmm_hpc.algos.radmm import make_trainer
from radmm_hpc.baselines import backprop_for_seconds
from radmm_hpc.config import Config
from radmm_hpc.data import load_dataset
from tests.support.mpi import runtime


def run(depth, args):
    cfg = Config()
    cfg.model.depth, cfg.model.width = depth, args.width
    cfg.data.name = args.data
    cfg.radmm.schedule = "serial"
    for item in args.set:
        key, value = item.split("=", 1)
        setattr(cfg.radmm, key, type(getattr(cfg.radmm, key))(value))
    cfg.train.dtype = args.dtype
    if args.init_scale:
        cfg.model.init_scale = args.init_scale
    rt = runtime()
    ds = load_dataset(cfg.data)
    t0 = time.perf_counter()
    tr = make_trainer(cfg, rt, ds)
    for it in range(args.iters):
        tr.step(it)
    budget = time.perf_counter() - t0
    rows = [(f"radmm ({cfg.radmm.variant})", args.iters, budget, tr.final_scores(tr.export_weights()),
             float("nan"))]
    for opt, lr in (("adam", args.adam_lr), ("sgd", args.sgd_lr)):
        cfg.backprop.lr = lr
        got = backprop_for_seconds(cfg, ds, budget, rt.device, optimizer=opt)
        for kind in ("same_wall_clock", "early_stopped"):
            r = got.get(f"backprop_{opt}_{kind}")
            if r is not None:
                name = f"{opt} ({'last' if kind == 'same_wall_clock' else 'early-stopped'})"
                rows.append((name, r["iters"], r["wall_s"], r, r["max_grad_norm"]))
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
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="[radmm] settings")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"{'depth':>5} {'method':<22} {'iters':>7} {'wall_s':>7} {'train_mse':>10} {'test_mse':>10} "
          f"{'test_r2':>8} {'max_grad':>10}")
    out = []
    for depth in args.depths:
        for name, iters, wall, s, gmax in run(depth, args):
            print(f"{depth:>5} {name:<22} {iters:>7} {wall:>7.1f} {s['train_mse']:>10.4g} "
                  f"{s['test_mse']:>10.4g} {s['test_r2']:>8.3f} {gmax:>10.3g}", flush=True)
            out.append(dict(depth=depth, method=name, iters=iters, wall_s=wall, max_grad=gmax,
                            **{k: v for k, v in s.items() if k.startswith(("train_", "test_"))}))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
