"""ParMAC speed-up against the model T(P) ≈ T(1)/P + e·M·t_c (docs/mac.md; the design note's
(e+1)·M·t_c with the Gauss–Newton ring, where a submodel travels as its statistics and then
its solved rows once per epoch).

For each P runs `mpiexec -n P python -m radmm_hpc --algo mac` on Wine Quality through the real
CLI and reads the median time per MAC iteration (Z-step + W-step; no μ stage ends during the run,
so no output refits). t_c, the time to send one submodel's statistics and rows one hop, is
measured separately by a 2-rank ring of exchange() calls with the mean message of one submodel
(bytes per iteration / (e·M·(P − 1))). M is the number of submodels trained in the W-step (the
hidden layers' row groups; it grows with P when they are split into unit groups).

    python -m bench.perf.mac_speedup --ranks 1 2 4 --width 32 --depth 8 --iters 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from tests.support.launch import ROOT, environment, mpiexec, run_summary


def ping(numel: int, reps: int) -> None:
    """Under mpiexec -n 2: median seconds of one one-hop exchange of `numel` float32 values."""
    import torch

    from tests.support import runtime, world
    comm = runtime(world()).comm
    peer = 1 - comm.rank
    a, b = torch.randn(numel), torch.empty(numel)
    times = []
    for _ in range(reps):
        comm.barrier()
        t0 = time.perf_counter()
        comm.exchange({peer: [a]}, {peer: [b]}, tag=5)
        times.append(time.perf_counter() - t0)
    if comm.rank == 0:
        print(statistics.median(times))


def measure_tc(numel: int) -> float:
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", __spec__.name, "--ping", str(numel)]
    out = subprocess.run(cmd, env=environment(), cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def main():
    ap = argparse.ArgumentParser(description="ParMAC speed-up against T(1)/P + e·M·t_c")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--data", default="wine")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--ping", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ping:
        return ping(args.ping, 200)
    rows, t1 = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for P in args.ranks:
            s = run_summary(["--algo", "mac", "--data", args.data, "--iters", str(args.iters),
                         "--set", f"model.width={args.width}", "--set", f"model.depth={args.depth}",
                         "--set", f"mac.epochs={args.epochs}", "--set", "mac.patience=0",
                         "--set", "mac.iters_per_mu=1000", "--set", "train.compare=false",
                         "--set", f"train.log_every={args.iters}"], P, os.path.join(tmp, f"p{P}"))
            import json
            last = [json.loads(x) for x in open(os.path.join(tmp, f"p{P}", "metrics.jsonl"))][-1]
            M = int(last["submodels"]) - 1      # the output layer is refitted at stage ends only
            t1 = t1 if t1 is not None else s["time_per_iter_s"] * P
            rows.append((P, M, s["time_per_iter_s"], last["submodel_bytes_last_iter"], s["test_mse"]))
    print(f"{'P':>3} {'M':>4} {'t_c (s)':>10} {'T(P) meas':>10} {'T(P) model':>11} {'speed-up':>9} "
          f"{'model':>7} {'p2p bytes/iter':>15} {'test_mse':>9}")
    for P, M, t, nbytes, mse in rows:
        tc = 0.0
        if P > 1:   # one submodel's message: its statistics and rows (float32)
            tc = measure_tc(int(round(nbytes / 4 / (args.epochs * M * (P - 1)))))
        model = t1 / P + args.epochs * M * tc
        print(f"{P:>3} {M:>4} {tc:>10.2e} {t:>10.4f} {model:>11.4f} {t1 / t:>9.2f} {t1 / model:>7.2f} "
              f"{nbytes:>15.0f} {mse:>9.4f}", flush=True)


if __name__ == "__main__":
    main()
