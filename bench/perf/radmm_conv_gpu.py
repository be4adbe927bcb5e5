"""Conv-RADMM on one GPU (or one region per GPU under mpiexec): time per iteration and memory per
GPU against end-to-end backprop (Adam, one pass over the same samples) on the same device.

    python -m bench.perf.radmm_conv_gpu                                  # ResNet-20, CIFAR-sized synthetic images
    python -m bench.perf.radmm_conv_gpu --data cifar10:/path/to/cifar-10-batches-py --n 10000
    python -m bench.perf.radmm_conv_gpu --data digits --arch resnet20 --n 1024
    mpiexec -n 2 python -m bench.perf.radmm_conv_gpu --schedule two-colour   # memory per GPU, 2 regions
    python -m bench.perf.radmm_conv_gpu --device cpu --n 64 --iters 2     # a dry run without a GPU

Prints one table: method, samples, median s/iteration (an iteration = one RADMM sweep over all
samples; for backprop one epoch of minibatches over the same samples), peak GPU memory per rank
(torch.cuda.max_memory_allocated), and the RADMM state predicted by the formula in docs/radmm.md.
Synthetic data (Gaussian images, random labels) measure speed and memory only, not accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from radmm_hpc.config import Config
from radmm_hpc.data import Dataset, load_dataset
from radmm_hpc.runtime import bind_device, init_world


def synthetic_images(n, shape=(3, 32, 32), classes=10, seed=0):
    g = np.random.default_rng(seed)
    X = g.standard_normal((n + 256, int(np.prod(shape))))
    y = g.integers(0, classes, n + 256)
    return Dataset("synthetic-images", "classification", X[:n], y[:n], X[n:], y[n:], n_classes=classes,
                   image_shape=shape)


def dataset(args):
    if args.data == "synthetic":
        return synthetic_images(args.n)
    cfg = Config()
    cfg.data.name, cfg.data.train_subset = args.data, args.n
    return load_dataset(cfg.data)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_mb(dev):
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")


def reset_peak(dev):
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def bench_radmm(args, ds, rt):
    from radmm_hpc.algos.radmm import make_trainer
    cfg = Config()
    cfg.model.arch, cfg.train.dtype = args.arch, args.dtype
    cfg.radmm.schedule = args.schedule if rt.size > 1 else "serial"
    cfg.radmm.variant = "anchored" if args.schedule == "pipeline" else "linearized"
    cfg.radmmconv.chunk, cfg.radmmconv.aux_memory = args.chunk, args.aux_memory
    reset_peak(rt.device)
    tr = make_trainer(cfg, rt, ds)
    times = []
    for it in range(args.iters):
        sync(rt.device)
        t0 = time.perf_counter()
        tr.step(it)
        sync(rt.device)
        times.append(time.perf_counter() - t0)
    m = tr.metrics()
    return {"s_per_iter": statistics.median(times), "peak_mb": peak_mb(rt.device),
            "state_mb_pred": tr.predicted_state_bytes() / 2**20, "store": str(tr.ch.store),
            "train_loss": m["train_loss"]}


def bench_backprop(args, ds, rt):
    from radmm_hpc.models import build_model
    from radmm_hpc.scoring import loss_fn, tensors_for
    cfg = Config()
    cfg.model.arch = args.arch
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    reset_peak(rt.device)
    model = build_model(cfg, ds, torch.Generator().manual_seed(0), dtype, rt.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X, y = tensors_for(ds, "train", dtype, rt.device)
    times = []
    for _ in range(args.iters):
        sync(rt.device)
        t0 = time.perf_counter()
        for i in range(0, len(X), args.batch):
            opt.zero_grad()
            loss = loss_fn(model(X[i:i + args.batch]), y[i:i + args.batch], ds.task)
            loss.backward()
            opt.step()
        sync(rt.device)
        times.append(time.perf_counter() - t0)
    return {"s_per_iter": statistics.median(times), "peak_mb": peak_mb(rt.device),
            "state_mb_pred": float("nan"), "store": str(rt.device), "train_loss": loss.item()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--data", default="synthetic", help="synthetic (3x32x32), digits, cifar10:DIR, mnist:DIR")
    ap.add_argument("--n", type=int, default=10000, help="training samples")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=1024, help="samples per chunk of a RADMM sweep")
    ap.add_argument("--aux-memory", dest="aux_memory", default="auto", choices=("auto", "device", "host"))
    ap.add_argument("--schedule", default="pipeline", choices=("pipeline", "two-colour", "jacobi"),
                    help="pipeline: the anchored variant; two-colour, jacobi: the linearized one")
    ap.add_argument("--batch", type=int, default=128, help="backprop minibatch")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = ap.parse_args()
    rt = init_world()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU machine, or pass --device cpu for a dry run")
    bind_device(rt, args.device)
    ds = dataset(args)
    rows = [("radmm (P=%d, %s)" % (rt.size, args.schedule if rt.size > 1 else "serial"), bench_radmm(args, ds, rt))]
    if rt.size == 1:
        rows.append(("backprop (Adam, batch %d)" % args.batch, bench_backprop(args, ds, rt)))
    peaks = rt.comm.gather_obj(rows[0][1]["peak_mb"])
    if rt.rank == 0:
        dev = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else "cpu"
        print(f"# {args.arch} on {ds.name} ({len(ds.X_train)} samples, image {ds.image_shape}), "
              f"{args.dtype}, {dev}, chunk {args.chunk}")
        print(f"{'method':<30}{'s/iter':>10}{'peak MiB/GPU':>14}{'state MiB (formula)':>21}{'aux store':>11}"
              f"{'loss':>9}")
        for name, r in rows:
            print(f"{name:<30}{r['s_per_iter']:>10.3f}{r['peak_mb']:>14.1f}{r['state_mb_pred']:>21.1f}"
                  f"{r['store']:>11}{r['train_loss']:>9.4f}")
        if rt.size > 1:
            print("peak MiB per rank:", ", ".join(f"{p:.1f}" for p in peaks))


if __name__ == "__main__":
    main()
