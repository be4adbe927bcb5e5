"""Launching the program as users do, `python -m radmm_hpc ARGS` (under mpiexec for more than one
rank): the one launcher of the tests and the benches."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STARTUP = re.compile(r"radmm-hpc: rank \d+/\d+ on ")   # runtime.startup_lines: one per rank


def message_lines(stderr: str) -> list:
    """The non-empty lines of a run's stderr that are not its start-up lines."""
    return [x for x in stderr.splitlines() if x.strip() and not STARTUP.match(x)]


def mpiexec() -> str:
    """The environment's own mpiexec (pip MPICH) when there is one, else the one on PATH."""
    path = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return path if os.path.exists(path) else "mpiexec"


def command(args, ranks: int = 1) -> list:
    cmd = [sys.executable, "-m", "radmm_hpc", *args]
    return [mpiexec(), "-n", str(ranks)] + cmd if ranks > 1 else cmd


def environment(threads: int = 1, extra=None) -> dict:
    """This checkout's package first, `threads` threads per rank, and no Slurm job around it."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=ROOT)
    env.pop("SLURM_JOB_ID", None)
    env.update(extra or {})
    return env


def run_cli(args, ranks=1, timeout=120, cwd=None, env_extra=None, threads=1):
    """Run the CLI and wait. Returns (CompletedProcess with text stdout/stderr, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run(command(args, ranks), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or ROOT, env=environment(threads, env_extra))
    return proc, time.perf_counter() - t0


def run_summary(args, ranks: int, run_dir: str, threads: int = 1, timeout=None) -> dict:
    """Train with ARGS into run_dir and return its summary.json; exit with the ranks' error output
    if the job fails (benches)."""
    proc, _ = run_cli(["--run-dir", run_dir, *args], ranks, timeout, threads=threads)
    if proc.returncode:
        sys.exit(f"{' '.join(args)} on {ranks} rank(s) failed ({proc.returncode}): {proc.stderr[-2000:]}")
    with open(os.path.join(run_dir, "summary.json")) as fh:
        return json.load(fh)
