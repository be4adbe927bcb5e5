"""What makes RADMM learn: the variants table of docs/radmm_findings.md, through the real CLI.

Each row trains the default network (wine, 64 × 34 FCResNet, the main job's seeded split) on one
rank and one thread for the same number of iterations and reads its summary and last metrics
line: forward-pass train and test R² of the exported network, the relative movement
‖W_l − W_l⁰‖/‖W_l⁰‖ averaged over the lower and the upper half of the hidden layers and for the
output layer, accepted/rejected steps (anchored variant) and the wall-clock.

    OMP_NUM_THREADS=1 python -m bench.studies.radmm_anchored [--iters 60] [--rows NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from tests.support.launch import ROOT, run_summary

PAPER = ["--config", os.path.join(ROOT, "configs", "radmm-proximal.toml"), "--set", "radmm.schedule=serial"]

ROWS = {
    "paper-proximal": PAPER,
    "paper-linearized": PAPER + ["--set", "radmm.variant=linearized"],
    "anchored": [],
    "anchored-fixed-penalty": ["--set", "radmm.grow=1", "--set", "radmm.relax=1"],
    "anchored-train-choice": ["--set", "radmm.val_fraction=0"],
    "anchored-no-trust": ["--set", "radmm.trust=0"],
    "anchored-gamma1": ["--set", "radmm.gamma=1", "--set", "radmm.beta=1"],
    "anchored-gamma100": ["--set", "radmm.gamma=100", "--set", "radmm.beta=100"],
    "anchored-relax0.8": ["--set", "radmm.relax=0.8"],
    "anchored-relax0.95": ["--set", "radmm.relax=0.95"],
    "anchored-lam1e-3": ["--set", "radmm.lam=1e-3"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="for every row")
    args = ap.parse_args()
    common = ["--iters", str(args.iters), "--set", "train.compare=false", "--set", "train.log_every=5",
              "--set", "radmm.schedule=serial", *[x for kv in args.set for x in ("--set", kv)]]
    print(f"# wine, 64 x 34 FCResNet, one rank, one thread, {args.iters} iterations; "
          f"extra: {' '.join(args.set) or '-'}")
    print(f"{'row':<24}{'train_r2':>9}{'test_r2':>9}{'mv_lower':>9}{'mv_upper':>9}{'mv_out':>8}"
          f"{'acc/rej':>9}{'wall_s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows:
            run = os.path.join(tmp, name)
            s = run_summary([*common, *ROWS[name]], 1, run)
            with open(os.path.join(run, "metrics.jsonl")) as fh:
                last = json.loads(fh.readlines()[-1])
            steps = f"{last['accepted']:.0f}/{last['rejected']:.0f}" if "accepted" in last else "-"
            print(f"{name:<24}{s['train_r2']:>9.4f}{s['test_r2']:>9.4f}{last['movement_lower_half']:>9.3f}"
                  f"{last['movement_upper_half']:>9.3f}{last['movement_output']:>8.2f}{steps:>9}"
                  f"{s['wall_s']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
