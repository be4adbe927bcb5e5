"""MAC vs RADMM vs Adam backprop on Wine Quality at equal wall-clock (forward-pass test MSE).

1. MAC runs its μ schedule through the real CLI (train.compare = true, so the same summary holds
   least squares and Adam backprop on the same network for MAC's wall-clock).
2. RADMM on the same network, logging every 5 iterations for about twice MAC's wall-clock (from a
   short probe of its time per iteration); its row is the last logged iterate within MAC's
   wall-clock (the machine's load varies, so a fixed iteration count would not hit it).
All scores are forward passes on the test split (MAC, backprop: the exported network; RADMM:
the logged iterate).

    python -m bench.studies.mac_compare --width 32 --depth 8 --ranks 1
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from tests.support.launch import run_summary


def main():
    ap = argparse.ArgumentParser(description="MAC vs RADMM vs backprop at equal wall-clock")
    ap.add_argument("--data", default="wine")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--mac", nargs="*", default=[], help="extra --set items for MAC, e.g. mac.mu0=2")
    args = ap.parse_args()
    net = ["--data", args.data, "--set", f"model.width={args.width}", "--set", f"model.depth={args.depth}"]
    P = args.ranks
    with tempfile.TemporaryDirectory() as tmp:
        mac = run_summary(["--algo", "mac", "--iters", "1000", *net, "--set", "train.log_every=1",
                       *sum((["--set", s] for s in args.mac), [])], P, os.path.join(tmp, "mac"))
        wall = mac["wall_s"]
        schedule = "serial" if P == 1 else "pipeline"      # the default RADMM (anchored)
        probe = run_summary(["--algo", "radmm", "--iters", "5", *net, "--set", "train.compare=false",
                         "--set", f"radmm.schedule={schedule}"], P, os.path.join(tmp, "probe"))
        iters = max(10, int(2 * wall / probe["time_per_iter_s"]))
        run_summary(["--algo", "radmm", "--iters", str(iters), *net, "--set", "train.compare=false",
                 "--set", "train.log_every=5", "--set", f"radmm.schedule={schedule}"],
                P, os.path.join(tmp, "radmm"))
        with open(os.path.join(tmp, "radmm", "metrics.jsonl")) as fh:
            recs = [json.loads(x) for x in fh]
        within = [r for r in recs if r["wall_s"] <= wall] or recs[:1]
        radmm = dict(within[-1], iters=within[-1]["iter"])
    rows = [("mac", mac), (f"radmm ({schedule})", radmm)] + list(mac["baselines"].items())
    print(f"{args.data}, width {args.width}, depth {args.depth}, {P} rank(s); MAC wall-clock {wall:.1f} s "
          f"({mac['iters']} iterations); RADMM {radmm['iters']} iterations in {radmm['wall_s']:.1f} s")
    print(f"{'method':<32}{'wall_s':>8}{'train_mse':>11}{'test_mse':>10}{'test_r2':>9}")
    for name, r in rows:
        w = r.get("wall_s", wall)   # the baselines ran for MAC's wall-clock
        print(f"{name:<32}{w:>8.1f}{r['train_mse']:>11.4f}{r['test_mse']:>10.4f}{r['test_r2']:>9.4f}")


if __name__ == "__main__":
    main()
