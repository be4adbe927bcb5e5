"""Shared by the multi-node tests: the cluster fixture's set-up, CLI runs across the nodes and on
this host alone, and reading a run's outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import netns
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
# a small deterministic float64 problem: every comparison below can be exact
TINY = ["--data", "synthetic-regression", "--set", "model.width=8", "--set", "model.depth=6",
        "--dtype", "float64", "--set", "train.compare=false", "--set", "train.deterministic=true",
        "--seed", "3"]


def make_cluster(nodes: int):
    """A started cluster, or a skip with the reason namespaces cannot be built here."""
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(f"multi-node tests need network namespaces: {reason}")
    return netns.Cluster(nodes).up()


@pytest.fixture(scope="module")
def cluster():
    """Three nodes for a test module, torn down after it (also when a test fails)."""
    c = make_cluster(3)
    try:
        yield c
    finally:
        c.down()


def cli_argv(run_dir: str, args) -> list:
    return [PY, "-m", "radmm_hpc", "--run-dir", run_dir, *args]


def run_nodes(cluster, per_node, run_dir, args, timeout=240, ok=True, env=None):
    """`python -m radmm_hpc` as one MPI job with per_node[i] ranks on node i."""
    proc = cluster.run(per_node, cli_argv(run_dir, args), timeout=timeout, cwd=ROOT,
                       env={"PYTHONPATH": ROOT, **(env or {})})
    if ok:
        assert proc.returncode == 0, f"job failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def run_here(ranks, run_dir, args, timeout=240):
    """The same job on this host only (the machine's own namespaces), as the reference."""
    cmd = cli_argv(run_dir, args)
    if ranks > 1:
        cmd = [os.path.join(os.path.dirname(PY), "mpiexec"), "-n", str(ranks)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    assert proc.returncode == 0, f"reference run failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def summary(run_dir) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as fh:
        return json.load(fh)


def metrics(run_dir) -> list:
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def weights(run_dir) -> list:
    with h5py.File(os.path.join(run_dir, "model.h5"), "r") as fh:
        return [fh[f"layers/{l}/weight"][()] for l in range(1, len(fh["layers"]) + 1)]


def identical(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def rel_err(a, b) -> float:
    return max(float(np.abs(x - y).max() / (np.abs(y).max() + 1e-300)) for x, y in zip(a, b))
