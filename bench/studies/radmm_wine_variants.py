"""Does any RADMM variant learn hidden features on Wine Quality? (docs/radmm.md, session 4)

Serial RADMM in process (`FcRadmmTrainer`, schedule serial, float64) on the default split with a
64-wide, 4-hidden-layer FCResNet, for each variant below; forward-pass train/test R² every 10
iterations. A variant "learns features" only if its forward-pass *training* R² rises clearly above
the output-layer-only fit of the same initial network (printed first).

Variants beyond the settings: `order=backward` sweeps the blocks from the output layer down (the
signal from the loss then reaches every layer in one sweep instead of one layer per sweep), and
`reset=K` is an experiment not offered by the product: every K iterations the auxiliary variables
are reset to the true forward pass (U, V, V_L) and Λ to −N∇ℓ(V_L), which removes the relaxation
gap (target-propagation style).

    OMP_NUM_THREADS=1 python -m bench.studies.radmm_wine_variants [--iters 200] [--only N ...]

One run of your own instead of the table (its curve printed every --every iterations):

    OMP_NUM_THREADS=1 python -m bench.studies.radmm_wine_variants --order backward --reset 5 \
        --set gamma=30 rho=30 beta=10 lam=1e-4 omega=0.1 --iters 1000 --every 100
"""

from __future__ import annotations

import argparse
import time

from radmm_hpc.algos.radmm import blocks as rb
from radmm_hpc.algos.radmm import make_trainer
from radmm_hpc.config import Config
from radmm_hpc.data import load_dataset
from radmm_hpc.scoring import output_layer_only_scores
from tests.support import runtime

# (order, reset, settings)
BASE = dict(beta=10.0, lam=1e-4, omega=1.0)
VARIANTS = [("forward", 0, dict(BASE, gamma=1.0, rho=1.0))]
VARIANTS += [(o, k, dict(BASE, gamma=g, rho=g, lam=lam))
             for g in (1.0, 10.0) for lam in (1e-4, 1e-3) for k in (1, 5) for o in ("forward", "backward")]
VARIANTS += [(o, 0, dict(BASE, gamma=g, rho=g, variant="linearized"))
             for g in (1.0, 10.0) for o in ("forward", "backward")]
VARIANTS += [("forward", 0, dict(BASE, gamma=g, rho=g, splitting="two")) for g in (1.0, 10.0, 100.0)]
VARIANTS += [("backward", 0, dict(BASE, gamma=3.0, rho=3.0, lam=0.0, omega=om)) for om in (10.0, 100.0)]


def _value(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def run(ds, order, reset, settings, iters, width, depth, every=10):
    cfg = Config()
    cfg.train.dtype = "float64"
    cfg.model.width, cfg.model.depth = width, depth
    cfg.radmm.variant, cfg.radmm.schedule = "proximal", "serial"      # the paper variant's blocks
    for k, v in settings.items():
        setattr(cfg.radmm, k, v)
    tr = make_trainer(cfg, runtime(), ds)
    sweep = None if order == "forward" else list(range(tr.L, 0, -1))
    curve = [(0, tr.forward_scores())]
    for it in range(1, iters + 1):
        rb.serial_sweep(tr.st, tr.p, sweep)
        if reset and it % reset == 0:
            tr._start(tr.st["X"])   # the trainer's own start: U, V, V_L by a forward pass, Λ = −N∇ℓ(V_L)
        if it % every == 0:
            curve.append((it, tr.forward_scores()))
    return curve


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--only", type=int, nargs="*", help="row numbers to run (default all)")
    ap.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="one run with these [radmm] settings")
    ap.add_argument("--order", choices=("forward", "backward"), default="forward", help="with --set")
    ap.add_argument("--reset", type=int, default=0, help="with --set: reset every K iterations (0: never)")
    ap.add_argument("--every", type=int, default=10, help="with --set: score every K iterations")
    args = ap.parse_args()
    ds = load_dataset(Config().data)
    ref_cfg = Config()
    ref_cfg.model.width, ref_cfg.model.depth = args.width, args.depth
    ref = output_layer_only_scores(ref_cfg, ds)
    print(f"reference: the initial {args.width}x{args.depth} network, output layer only by least squares: "
          f"train R2 {ref['train_r2']:.3f}, test R2 {ref['test_r2']:.3f}")
    if args.set is not None:
        settings = {k: _value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        curve = run(ds, args.order, args.reset, settings, args.iters, args.width, args.depth, args.every)
        print(f"{args.width}x{args.depth}, order {args.order}, reset {args.reset}, {settings}")
        for it, sc in curve:
            print(f"  iteration {it:>5}: train R2 {sc['train_r2']:.3f}, test R2 {sc['test_r2']:.3f}")
        return
    print(f"{'#':>3} {'order':>8} {'reset':>5} {'settings':<68} {'best train R2 (it, test R2)':>28} "
          f"{'last train/test R2':>19} {'s':>4}")
    for n, (order, reset, settings) in enumerate(VARIANTS):
        if args.only and n not in args.only:
            continue
        t0 = time.time()
        curve = run(ds, order, reset, settings, args.iters, args.width, args.depth)
        it, best = max(curve, key=lambda c: c[1]["train_r2"])
        last = curve[-1][1]
        desc = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())
        print(f"{n:>3} {order:>8} {reset:>5} {desc:<68} {best['train_r2']:>12.3f} ({it:>3}, {best['test_r2']:.3f}) "
              f"{last['train_r2']:>9.3f}/{last['test_r2']:.3f} {time.time() - t0:>4.0f}", flush=True)


if __name__ == "__main__":
    main()
