"""Design study for MAC (issue 17): the `--algo mac` trainer run serially on the real data with
any [mac] / [model] settings, printing per μ stage the nested model's forward-pass scores (the
current weights after the stage's refit and validation), the constraint violation, the layer
movement ‖W_l − W_l⁰‖/‖W_l⁰‖ (input layer, mean and max over the residual layers, output layer),
rows kept / undone by the guard, and the process CPU seconds (the machine is shared, so wall
time says little; CPU seconds do not depend on the load).

    OMP_NUM_THREADS=1 python -m bench.studies.mac_study --data wine --set mac.mu0=1 --set mac.mu_steps=8

Each setting's rows in docs/mac.md come from this script (serial; with --set mac.shards=P it
computes exactly what ParMAC on P ranks computes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from radmm_hpc.algos.mac.trainer import MacTrainer, weight_movement
from radmm_hpc.comm import Comm
from radmm_hpc.config import Config, parse_set, set_value, validate
from radmm_hpc.data import load_dataset
from radmm_hpc.runtime import Runtime
from radmm_hpc.scoring import output_layer_only_scores


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="wine")
    ap.add_argument("--set", action="append", default=[], help="section.key=value, as in the CLI")
    ap.add_argument("--iters", type=int, default=1000, help="stop after this many iterations")
    args = ap.parse_args()
    cfg = Config()
    cfg.train.algo, cfg.data.name = "mac", args.data
    for item in args.set:
        set_value(cfg, *parse_set(item), source="--set")
    validate(cfg)
    torch.manual_seed(0)
    ds = load_dataset(cfg.data)
    key = "r2" if ds.task == "regression" else "accuracy"
    ref = output_layer_only_scores(cfg, ds)
    print(f"{args.data}: {' '.join(args.set) or 'defaults'}; output layer only: "
          f"train {ref.get('train_' + key, float('nan')):.4f} test {ref.get('test_' + key, float('nan')):.4f}",
          flush=True)
    t0 = time.process_time()
    tr = MacTrainer(cfg, Runtime(comm=Comm(None)), ds)
    s = tr.scores(tr.W)
    print(f"start (output layer fitted): train {s['train_' + key]:.4f} test {s['test_' + key]:.4f} "
          f"val_loss {tr.val_loss():.4f} | cpu {time.process_time() - t0:.1f}s", flush=True)
    it = 0
    while it < args.iters and not tr.done:
        tr.step(it)
        it += 1
        if it % cfg.mac.iters_per_mu == 0 or tr.done:
            s, mv = tr.scores(tr.W), weight_movement(tr.W, tr.W0)["layer_movement"]
            parts = tr.objective_parts(tr.mu)
            print(f"it {it:3d} mu {tr.mu:8.3g}: viol {parts['violation']:.2e} aux {parts['aux_loss']:.4f} | "
                  f"train {s['train_' + key]:.4f} val_loss {tr.val_loss():.4f} test {s['test_' + key]:.4f} | "
                  f"stage val_loss {tr.stage_val:.4f} best {tr.best_val:.4f} skipped {tr.skipped} | "
                  f"move in {mv[0]:.3f} "
                  f"res mean {np.mean(mv[1:-1]):.3f} max {np.max(mv[1:-1]):.3f} out {mv[-1]:.2f} | "
                  f"undone rows {tr.rejected} | cpu {time.process_time() - t0:.1f}s", flush=True)
    best = tr.scores(tr._export())
    print(f"exported: train {best['train_' + key]:.4f} test {best['test_' + key]:.4f} after {it} iterations, "
          f"cpu {time.process_time() - t0:.1f}s")


if __name__ == "__main__":
    main()
