"""Reading a run's outputs and editing checkpoints (foreign manifests, damaged shards)."""

import hashlib
import json
import os

import h5py
import numpy as np

from radmm_hpc.checkpoint import MANIFEST, _manifest_digest


def weights(run_dir):
    with h5py.File(os.path.join(str(run_dir), "model.h5"), "r") as fh:
        return [fh[f"layers/{l}/weight"][()] for l in range(1, len(fh["layers"]) + 1)]


def same_weights(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# metrics and summary fields that are clocks or machine facts, not results
CLOCKS = {"wall_s", "time_per_iter_s", "peak_rss_mb", "run_dir", "phase_s", "phase_cpu_s", "updates_per_s",
          "server_busy_fraction", "train_images_per_s"}


def metrics_iters(run_dir):
    with open(os.path.join(str(run_dir), "metrics.jsonl")) as fh:
        return [json.loads(x)["iter"] for x in fh]


def metrics_records(run_dir):
    """metrics.jsonl without its clocks: what a resumed run must reproduce exactly."""
    with open(os.path.join(str(run_dir), "metrics.jsonl")) as fh:
        return [{k: v for k, v in json.loads(x).items() if k not in CLOCKS} for x in fh]


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
