"""How high can this network family's forward-pass test R² go on Wine Quality at all?

Trains the FCResNet by mini-batch Adam for many epochs and reports the best test R² seen along the
way — selected ON THE TEST SET, so an optimistic ceiling for any trainer of the same network, not a
fair score. Used in docs/radmm.md to judge the main job's R² target.

    OMP_NUM_THREADS=1 python -m bench.studies.wine_ceiling [--epochs 300] [--configs 64x34,256x4]
        [--lrs 1e-3] [--wds 0] [--dedup] [--every 10]

--wds gives AdamW's decoupled weight decay (0 = plain Adam); every (config, lr, wd) is one run.
"""

import argparse
import time

import torch

from radmm_hpc.config import Config
from radmm_hpc.data import load_dataset
from radmm_hpc.models import build_model
from radmm_hpc.scoring import loss_fn, score_weights, tensors_for


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--configs", default="64x34,256x4", help="WIDTHxDEPTH,...")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lrs", default="1e-3", help="learning rates, comma-separated")
    ap.add_argument("--wds", default="0", help="AdamW weight decays, comma-separated (0: Adam)")
    ap.add_argument("--dedup", action="store_true", help="the split of data.dedup = true")
    ap.add_argument("--every", type=int, default=10, help="epochs between test evaluations")
    args = ap.parse_args()
    cfg = Config()
    cfg.data.dedup = args.dedup
    ds = load_dataset(cfg.data)
    X, y = tensors_for(ds, "train", torch.float32, "cpu")
    print(f"{'width':>6}{'depth':>6}{'lr':>8}{'wd':>7}{'best test R2':>14}{'at epoch':>10}{'train R2 then':>15}"
          f"{'final test R2':>15}{'seconds':>9}")
    runs = [(spec, float(lr), float(wd)) for spec in args.configs.split(",")
            for lr in args.lrs.split(",") for wd in args.wds.split(",")]
    for spec, lr, wd in runs:
        torch.manual_seed(0)   # the same batch order for every run
        cfg.model.width, cfg.model.depth = map(int, spec.split("x"))
        model = build_model(cfg, ds, torch.Generator().manual_seed(0))
        opt = (torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd) if wd > 0
               else torch.optim.Adam(model.parameters(), lr=lr))
        best, t0 = (-float("inf"), 0, 0.0), time.time()
        for ep in range(args.epochs):
            perm = torch.randperm(len(X))
            for k in range(0, len(X), args.batch):
                idx = perm[k:k + args.batch]
                opt.zero_grad()
                loss_fn(model(X[idx]), y[idx], ds.task).backward()
                opt.step()
            if ep % args.every == args.every - 1:
                s = score_weights([p.detach() for p in model.parameters()], ds, "relu", True)
                if s["test_r2"] > best[0]:
                    best = (s["test_r2"], ep + 1, s["train_r2"])
        print(f"{cfg.model.width:>6}{cfg.model.depth:>6}{lr:>8g}{wd:>7g}{best[0]:>14.4f}{best[1]:>10}{best[2]:>15.3f}"
              f"{s['test_r2']:>15.4f}{time.time() - t0:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
