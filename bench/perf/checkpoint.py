"""Checkpoint cost against iteration time: write (all ranks' shards + manifest, fsynced) and load
(verify SHA-256 + restore) for the default RADMM job config and a larger one.

    python -m bench.perf.checkpoint                         # one process
    mpiexec -n 4 python -m bench.perf.checkpoint            # 4 ranks (jacobi regions)
    python -m bench.perf.checkpoint --configs default --iters 5 --repeats 3

Prints, per configuration: median seconds per iteration, checkpoint bytes (all shards), median
write and load seconds, and the overhead write/(interval x iteration) for checkpoint.every = 10
and 100 iterations and for checkpoint.every_seconds (default 300 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from radmm_hpc.algos import trainer_class
from radmm_hpc.checkpoint import Checkpointer
from radmm_hpc.config import Config
from radmm_hpc.data import load_dataset
from radmm_hpc.runtime import init_world, pin_threads

CONFIGS = {
    # the default RADMM job: depth 34, width 64, wine, jacobi, float32
    "default": dict(depth=34, width=64, data="wine"),
    # a larger one: 4x the width, twice the depth (about 0.35 GB of float32 state in all)
    "large": dict(depth=68, width=128, data="wine"),
}


def bench(name, spec, args, rt):
    cfg = Config()
    cfg.model.depth, cfg.model.width, cfg.data.name = spec["depth"], spec["width"], spec["data"]
    cfg.train.compare = False
    comm = rt.comm
    tr = trainer_class("radmm")(cfg, rt, load_dataset(cfg.data))
    times = []
    for it in range(args.iters):
        comm.barrier()
        t0 = time.perf_counter()
        tr.step(it)
        comm.barrier()
        times.append(time.perf_counter() - t0)
    run = comm.bcast_obj(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.dir) if rt.is_root else None)
    cfg.train.run_dir, cfg.checkpoint.keep = run, 2
    ck = Checkpointer(cfg, rt, run, tr)
    writes, loads = [], []
    for k in range(args.repeats):
        comm.barrier()
        t0 = time.perf_counter()
        path = ck.save(args.iters + k, {"wall_s": 0.0, "step_bytes": 0})
        comm.barrier()
        writes.append(time.perf_counter() - t0)
    nbytes = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) if rt.is_root else 0
    for _ in range(args.repeats):
        comm.barrier()
        t0 = time.perf_counter()
        ck.resume(path)
        comm.barrier()
        loads.append(time.perf_counter() - t0)
    comm.barrier()
    if rt.is_root:
        shutil.rmtree(run, ignore_errors=True)
    it_s, w, ld = statistics.median(times), statistics.median(writes), statistics.median(loads)
    return dict(name=name, depth=spec["depth"], width=spec["width"], it_s=it_s, mb=nbytes / 1e6,
                write_s=w, load_s=ld, ovh10=w / (10 * it_s), ovh100=w / (100 * it_s),
                ovh_t=w / cfg.checkpoint.every_seconds if cfg.checkpoint.every_seconds else float("nan"),
                every_s=cfg.checkpoint.every_seconds)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    args = p.parse_args()
    rt = init_world()
    pin_threads(rt)
    rows = [bench(n, CONFIGS[n], args, rt) for n in args.configs]
    if rt.is_root:
        print(f"checkpoint cost, {rt.size} rank(s), RADMM jacobi, float32, {args.iters} iterations, "
              f"{args.repeats} writes/loads (medians)")
        print(f"{'config':<9}{'depth':>6}{'width':>6}{'s/iter':>9}{'MB':>8}{'write s':>9}{'load s':>8}"
              f"{'every 10':>10}{'every 100':>10}{'every ' + str(int(rows[0]['every_s'])) + ' s':>12}")
        for r in rows:
            print(f"{r['name']:<9}{r['depth']:>6}{r['width']:>6}{r['it_s']:>9.3f}{r['mb']:>8.1f}"
                  f"{r['write_s']:>9.3f}{r['load_s']:>8.3f}{100 * r['ovh10']:>9.1f}%{100 * r['ovh100']:>9.2f}%"
                  f"{100 * r['ovh_t']:>11.3f}%")


if __name__ == "__main__":
    main()
