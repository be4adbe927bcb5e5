"""RADMM penalty settings on Wine Quality through the real CLI: how the defaults were chosen.

Each row is one `mpiexec -n P python -m radmm_hpc` run (Jacobi PRU, the default network) with
the listed settings; forward-pass scores of the exported network (keep_best: the iterate with the
lowest forward-pass training loss), and the same run's last-iterate training loss.

    python -m bench.studies.radmm_settings --ranks 8 --iters 80
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from tests.support.launch import run_summary

GRID = [  # (gamma, rho, beta, omega, lam)
    (1, 1, 2, 1e-3, 1e-4),
    (10, 10, 10, 1, 1e-4),
    (1000, 1000, 10, 1, 1e-4),
    (100, 100, 10, 1, 1e-2),
    (100, 100, 10, 1, 0.1),      # the defaults
    (100, 100, 10, 1, 1.0),
    (100, 100, 100, 1, 0.1),
]


def main():
    ap = argparse.ArgumentParser(description="RADMM settings sweep")
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--iters", type=int, default=80)
    ap.add_argument("--data", default="wine")
    args = ap.parse_args()
    print(f"{'gamma':>6} {'rho':>6} {'beta':>5} {'omega':>6} {'lam':>7} {'train_r2':>9} {'test_r2':>8} "
          f"{'test_mse':>9} {'last_train_loss':>16} {'s/iter':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for n, (g, r, b, o, lam) in enumerate(GRID):
            run = os.path.join(tmp, str(n))
            s = run_summary(["--data", args.data, "--iters", str(args.iters), "--set", "train.compare=false",
                             "--set", "radmm.variant=proximal", "--set", "radmm.schedule=auto",
                         "--set", f"radmm.gamma={g}", "--set", f"radmm.rho={r}", "--set", f"radmm.beta={b}",
                         "--set", f"radmm.omega={o}", "--set", f"radmm.lam={lam}"], args.ranks, run)
            with open(os.path.join(run, "metrics.jsonl")) as fh:
                last = json.loads(fh.readlines()[-1])
            print(f"{g:>6g} {r:>6g} {b:>5g} {o:>6g} {lam:>7g} {s['train_r2']:>9.3f} {s['test_r2']:>8.3f} "
                  f"{s['test_mse']:>9.4f} {last['train_loss']:>16.4f} {s['time_per_iter_s']:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
