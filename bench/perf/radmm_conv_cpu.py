"""Conv-RADMM through the real CLI on CPU: accuracy against Adam backpropagation on the same
ResNet for the same wall-clock (the loop's own baseline), and strong scaling over P ranks.

    python -m bench.perf.radmm_conv_cpu --ranks 1 2 --arch resnet8 --subset 512 --iters 20

For each P: `mpiexec -n P python -m radmm_hpc --algo radmm --model ARCH --data digits` (serial
sweep for P = 1, radmm.schedule for P > 1) and summary.json: median s/iteration, efficiency
T(1)/(P·T(P)), state per rank (max; the formula of docs/radmm.md), forward-pass test accuracy
of RADMM and of Adam run for RADMM's wall-clock (P = 1 only: the baseline uses rank 0's cores).
"""

from __future__ import annotations

import argparse
import os
import tempfile

from tests.support.launch import run_summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--arch", default="resnet8")
    ap.add_argument("--width", type=int, default=8, help="model.base_width")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--subset", type=int, default=512, help="data.train_subset (0 = all)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--schedule", default="pipeline", choices=("pipeline", "jacobi", "two-colour"),
                    help="pipeline: the anchored variant (the default); jacobi, two-colour: the linearized one")
    ap.add_argument("--set", action="append", default=[], help="extra --set section.key=value")
    args = ap.parse_args()
    print(f"# {args.arch} (base_width {args.width}) on {args.data} (train_subset {args.subset}), "
          f"{args.iters} iterations, one thread per rank")
    print(f"{'P':>3} {'schedule':>10} {'s/iter':>8} {'eff.':>6} {'state MiB/rank':>15} {'wall s':>7} "
          f"{'radmm test acc':>15} {'adam test acc (same wall)':>26}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for P in args.ranks:
            sched = args.schedule if P > 1 else "serial"
            extra = [x for kv in args.set for x in ("--set", kv)]
            s = run_summary(["--algo", "radmm", "--model", args.arch, "--data", args.data,
                         "--iters", str(args.iters), "--set", f"model.base_width={args.width}",
                         "--set", f"data.train_subset={args.subset}", "--set", f"radmm.schedule={sched}",
                         "--set", f"radmm.variant={'anchored' if args.schedule == 'pipeline' else 'linearized'}",
                         "--set", f"train.log_every={args.iters}",
                         "--set", f"train.compare={'true' if P == 1 else 'false'}", *extra],
                        P, os.path.join(tmp, f"p{P}"))
            t = s["time_per_iter_s"]
            base = base or t * P
            bp = s.get("baselines", {}).get("backprop_adam_same_wall_clock", {}).get("test_accuracy")
            print(f"{P:>3} {sched:>10} {t:>8.3f} {base / (P * t):>6.2f} {s['state_mb_max_rank']:>15.2f} "
                  f"{s['wall_s']:>7.1f} {s['test_accuracy']:>15.4f} "
                  f"{(f'{bp:.4f}' if bp is not None else '-'):>26}", flush=True)


if __name__ == "__main__":
    main()
