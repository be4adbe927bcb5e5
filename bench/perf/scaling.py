"""Strong scaling of RADMM on a fixed deep configuration, through the real CLI.

Runs `mpiexec -n P python -m radmm_hpc` for each P and reads summary.json: median time per
iteration, parallel efficiency T(1)/(P·T(P)) against the one-rank run, bytes sent per iteration
(max over ranks) against the formula, and peak memory per rank (process RSS, and the training
state a rank holds).

--variant anchored (the default; pipeline schedule): the busiest rank sends d·(N_fit + N_val)
forward and d·N_fit back per accepted iteration (plus 40 bytes of control); --variant proximal
(Jacobi PRU, configs/radmm-proximal.toml): 3·d·N per boundary.

    python -m bench.perf.scaling --ranks 1 2 --depth 32 --iters 30
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from tests.support.launch import ROOT, run_summary


def run(P, args, run_dir):
    if args.variant == "anchored":
        scheme = ["--set", f"radmm.schedule={'pipeline' if P > 1 else 'serial'}"]
        if args.microbatches:
            scheme += ["--set", f"radmm.microbatches={args.microbatches}"]
    else:
        scheme = ["--config", os.path.join(ROOT, "configs", "radmm-proximal.toml"),
                  "--set", f"radmm.schedule={'jacobi' if P > 1 else 'serial'}"]
    return run_summary(["--iters", str(args.iters), "--set", f"model.depth={args.depth}",
                        "--set", f"model.width={args.width}", "--set", "train.compare=false",
                        "--set", f"train.log_every={args.iters}", *scheme, "--dtype", args.dtype],
                       P, run_dir, args.threads)


def formula(P, args, item, run_dir) -> float:
    """Bytes per iteration of the busiest rank (anchored: averaged over the run's accepted and
    rejected iterations, from its last metrics line; a rejected one sends no multipliers)."""
    if P == 1:
        return 0
    n_train = round(6497 * 0.8)
    if args.variant == "anchored":
        with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
            last = json.loads(fh.readlines()[-1])
        share = last["accepted"] / (last["accepted"] + last["rejected"])
        n_val = round(0.1 * n_train)
        fwd, back = args.width * n_train * item, args.width * (n_train - n_val) * item * share + 40
        return fwd + back if P > 2 else max(fwd, back)
    # the busiest rank: V forward (d·N) and (Q, M) back (2·d·N); at P = 2 the last rank sends 2·d·N
    return (3 if P > 2 else 2) * args.width * n_train * item


def main():
    ap = argparse.ArgumentParser(description="RADMM strong scaling")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--variant", default="anchored", choices=("anchored", "proximal"))
    ap.add_argument("--microbatches", type=int, default=0, help="anchored: radmm.microbatches (0: default)")
    args = ap.parse_args()
    item = 4 if args.dtype == "float32" else 8
    base = None
    print(f"{'P':>3} {'s/iter':>9} {'efficiency':>10} {'bytes/iter(max rank)':>21} {'formula':>12} "
          f"{'peak_rss_mb':>12} {'state_mb':>9} {'test_r2':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for P in args.ranks:
            run_dir = os.path.join(tmp, f"p{P}")
            s = run(P, args, run_dir)
            t = s["time_per_iter_s"]
            base = base or t * P
            print(f"{P:>3} {t:>9.4f} {base / (P * t):>10.2f} {s['bytes_sent_per_iter']:>21.0f} "
                  f"{formula(P, args, item, run_dir):>12.0f} {s['peak_rss_mb']:>12.1f} "
                  f"{s['state_mb_max_rank']:>9.1f} {s['test_r2']:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
