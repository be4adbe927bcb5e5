"""The run directory: a fresh one per run, never mixed with an older run's files, and run.json.

An explicit `--run-dir` that already holds anything is refused unless the run continues it
(`--resume`) or starts it again (`--overwrite`, which deletes only the files a run writes). The
default `runs/<YYYYmmdd-HHMMSS>` takes the next free `-1`, `-2`, … suffix when that name exists
(mkdir is atomic, so runs started in the same second by separate processes get separate
directories). run.json records what ran where (docs/outputs.md).
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time

from radmm_hpc.errors import UserError

# what a run writes into its directory (--overwrite deletes these and nothing else)
RUN_OUTPUTS = ("config.toml", "metrics.jsonl", "summary.json", "model.h5", "run.json", "latest",
               "tensorboard", "metrics.png", "losses.png", "phases.png", "staleness.png", "model.pt",
               "model.safetensors", "ckpt-*", "radmm-hpc-error-rank*.log", "*.tmp", ".write-test")


def new_default_dir(parent: str = "runs", stamp: str | None = None) -> str:
    """runs/<stamp>, or runs/<stamp>-1, -2, … when taken; created here."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(parent, exist_ok=True)
    for n in itertools.count():
        path = os.path.join(parent, stamp if n == 0 else f"{stamp}-{n}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _is_output(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in RUN_OUTPUTS)


def prepare(path: str, resume: bool, overwrite: bool) -> str:
    """Create (or check) the run directory named by the user (rank 0 only); a UserError when it
    holds an earlier run that this run would mix with."""
    try:
        names = sorted(os.listdir(path)) if os.path.isdir(path) else []
    except OSError as exc:
        raise UserError(f"cannot read run directory {path}: {exc.strerror}") from None
    if names and not resume:
        if not overwrite:
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise UserError(f"run directory {path} is not empty ({shown}): continue that run with "
                            f"--resume auto, start it again with --overwrite, or choose another --run-dir")
        foreign = [n for n in names if not _is_output(n)]
        if foreign:
            raise UserError(f"--overwrite: {path} holds files no run writes ({', '.join(foreign[:4])}); "
                            f"not deleting them: choose another --run-dir")
        for n in names:
            p = os.path.join(path, n)
            try:
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
            except OSError as exc:
                raise UserError(f"--overwrite: cannot delete {p}: {exc.strerror}") from None
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"cannot create run directory {path}: {exc.strerror}") from None
    return path


# -- run.json ----------------------------------------------------------------------------------
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
              "SLURM_JOB_NAME", "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURM_NTASKS",
              "SLURM_CPUS_PER_TASK", "SLURM_CLUSTER_NAME", "SLURM_SUBMIT_DIR")


def _versions() -> dict:
    from importlib import metadata

    from radmm_hpc import __version__
    from radmm_hpc.runtime import MPI_PACKAGES
    out = {"radmm_hpc": __version__, "python": platform.python_version()}
    for pkg in ("torch", "numpy", "h5py", *MPI_PACKAGES):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_revision() -> dict | None:
    """The commit of the source tree radmm_hpc runs from, and whether it has local changes (None
    when it is not a git checkout, e.g. an installed wheel, or git is missing)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def run_metadata(rt, argv, resumed: dict | None) -> dict:
    """What run.json holds for one start of the run (rank 0; rt.ranks from startup_lines)."""
    import torch

    from radmm_hpc.runtime import mpi_library
    cuda = torch.version.cuda if torch.cuda.is_available() else None
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(argv or []),
            "command": " ".join([os.path.basename(sys.executable), "-m", "radmm_hpc", *(argv or [])]),
            "cwd": os.getcwd(), "versions": _versions(), "cuda": cuda, "mpi_library": mpi_library(),
            "world_size": rt.size, "hosts": sorted({r["host"] for r in rt.ranks}), "ranks": rt.ranks,
            "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ},
            "git": git_revision(),
            "resumed_from": ({"checkpoint": resumed.get("path"), "iteration": resumed["iteration"]}
                             if resumed else None)}


def write_run_json(run_dir: str, meta: dict, resumed: bool) -> None:
    """run.json: this start's metadata; a resumed run keeps the earlier starts under "earlier"."""
    path = os.path.join(run_dir, "run.json")
    earlier = []
    if resumed and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as fh:
                old = json.load(fh)
            earlier = old.pop("earlier", []) + [old]
        except (OSError, ValueError):
            pass
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({**meta, "earlier": earlier}, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)
