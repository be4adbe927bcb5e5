"""Strong scaling of RADMM (Jacobi PRU) on a fixed deep configuration, through the real CLI.

Runs `mpiexec -n P python -m radmm_hpc` for each P and reads summary.json: median time per
iteration, parallel efficiency T(1)/(P·T(P)) against the one-rank run, bytes sent per iteration
(max over ranks) against the formula 3·d·N·itemsize per boundary, and peak memory per rank
(process RSS, and the training state a rank holds: its share of W, U, V, duals, buffers).

    python -m bench.perf.scaling --ranks 1 2 --depth 32 --iters 30
"""

from __future__ import annotations

import argparse
import os
import tempfile

from tests.support.launch import run_summary


def run(P, args, run_dir):
    return run_summary(["--iters", str(args.iters), "--set", f"model.depth={args.depth}",
                    "--set", f"model.width={args.width}", "--set", "train.compare=false",
                    "--set", f"train.log_every={args.iters}",
                    "--set", f"radmm.schedule={'jacobi' if P > 1 else 'serial'}", "--dtype", args.dtype],
                   P, run_dir, args.threads)


def main():
    ap = argparse.ArgumentParser(description="RADMM strong scaling")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    item = 4 if args.dtype == "float32" else 8
    base = None
    print(f"{'P':>3} {'s/iter':>9} {'efficiency':>10} {'bytes/iter(max rank)':>21} {'formula':>12} "
          f"{'peak_rss_mb':>12} {'state_mb':>9} {'test_r2':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for P in args.ranks:
            s = run(P, args, os.path.join(tmp, f"p{P}"))
            t = s["time_per_iter_s"]
            base = base or t * P
            n_train = round(6497 * 0.8)
            # the busiest rank: V forward (d·N) and (Q, M) back (2·d·N); at P = 2 the last rank sends 2·d·N
            formula = (3 if P > 2 else (2 if P == 2 else 0)) * args.width * n_train * item
            print(f"{P:>3} {t:>9.4f} {base / (P * t):>10.2f} {s['bytes_sent_per_iter']:>21.0f} "
                  f"{formula:>12d} {s['peak_rss_mb']:>12.1f} {s['state_mb_max_rank']:>9.1f} {s['test_r2']:>8.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
