"""Run the real CLI (under mpiexec when P > 1) and return its summary.json: shared by benches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args, P: int, run_dir: str, threads: int = 1) -> dict:
    cmd = [sys.executable, "-m", "radmm_hpc", "--run-dir", run_dir, *args]
    if P > 1:
        cmd = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(P)] + cmd
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(args)} on {P} rank(s) failed ({proc.returncode}): {proc.stderr[-2000:]}")
    with open(os.path.join(run_dir, "summary.json")) as fh:
        return json.load(fh)
