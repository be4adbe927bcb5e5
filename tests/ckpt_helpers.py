"""Tiny runs and file surgery shared by the checkpoint tests (serial and MPI)."""

import hashlib
import json
import os

import h5py
import numpy as np

from radmm_hpc.checkpoint import MANIFEST, _manifest_digest
from radmm_hpc.comm import Comm
from radmm_hpc.config import Config
from radmm_hpc.runtime import Runtime


def tiny_cfg(run_dir, algo="radmm", schedule="serial", iters=10, every=0, depth=5, keep=3, **extra):
    cfg = Config()
    cfg.train.algo, cfg.train.iters, cfg.train.dtype = algo, iters, "float64"
    cfg.train.run_dir, cfg.train.compare, cfg.train.log_every = str(run_dir), False, 5
    cfg.train.progress_seconds = 1e9
    cfg.model.width, cfg.model.depth = 8, depth
    cfg.data.name, cfg.data.n_samples = "synthetic-regression", 64
    cfg.radmm.schedule = schedule
    cfg.backprop.batch_size = 16
    cfg.checkpoint.every, cfg.checkpoint.keep = every, keep
    for k, v in extra.items():
        sec, key = k.split("__")
        setattr(getattr(cfg, sec), key, v)
    return cfg


def runtime(mpi_comm=None):
    return Runtime(comm=Comm(mpi_comm if mpi_comm is not None and mpi_comm.Get_size() > 1 else None))


def weights(run_dir):
    with h5py.File(os.path.join(str(run_dir), "model.h5"), "r") as fh:
        return [fh[f"layers/{l}/weight"][()] for l in range(1, len(fh["layers"]) + 1)]


def same_weights(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def metrics_iters(run_dir):
    with open(os.path.join(str(run_dir), "metrics.jsonl")) as fh:
        return [json.loads(x)["iter"] for x in fh]


def rewrite_manifest(ckpt, change):
    """Edit a manifest and re-seal it (a consistent but foreign/odd manifest)."""
    path = os.path.join(str(ckpt), MANIFEST)
    with open(path) as fh:
        m = json.load(fh)
    change(m)
    m["manifest_sha256"] = _manifest_digest(m)
    with open(path, "w") as fh:
        json.dump(m, fh)


def replace_shard(ckpt, j, data: bytes):
    """Put other bytes in shard j and record their size and hash in a re-sealed manifest."""
    name = f"shard-{j:05d}.h5"
    with open(os.path.join(str(ckpt), name), "wb") as fh:
        fh.write(data)

    def change(m):
        m["shards"][j]["bytes"] = len(data)
        m["shards"][j]["sha256"] = hashlib.sha256(data).hexdigest()
    rewrite_manifest(ckpt, change)


def flip(path, offset, n=1):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = bytearray(fh.read(n))
        fh.seek(offset)
        fh.write(bytes(x ^ 0xFF for x in b))
