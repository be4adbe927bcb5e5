"""Golden runs: the numbers and files of fixed CLI jobs, recorded once and compared after changes
that must not alter behaviour (a refactoring).

A record holds, from one run directory: summary.json's deterministic fields (scores as float64),
metrics.jsonl without its clocks, manifest.json of every checkpoint minus timestamps, digests and
the run directory, and the SHA-256 of every array in model.h5.

    python tests/golden_runs.py record CASE      # write tests/golden/CASE.json from this code
    python tests/golden_runs.py check CASE       # run again and compare exactly

The test suite (tests/test_golden.py) runs the small cases and compares them with a relative
tolerance (float64 runs; another CPU may round differently); the notes in tests/golden/README.md
say what was compared exactly and when.
"""

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile

import h5py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GOLDEN = os.path.join(HERE, "golden")

# case -> (ranks, CLI arguments)
CASES = {
    # the default main job (scripts/run-main.sh) without the wall-clock baselines
    "main-full": (8, ["--set", "train.compare=false", "--checkpoint-every", "30"]),
    # the same network and data, shorter and in float64 (the test suite's copy)
    "main-small": (4, ["--set", "train.compare=false", "--iters", "6", "--dtype", "float64",
                       "--set", "train.log_every=2", "--checkpoint-every", "3"]),
    # ResNet-8 through the general RADMM trainer, two-colour schedule on 3 ranks (regions 2, 1, 1)
    "resnet8-two-colour": (3, ["--model", "resnet8", "--data", "digits", "--train-subset", "200",
                               "--set", "model.base_width=4", "--set", "radmm.schedule=two-colour",
                               "--iters", "6", "--dtype", "float64", "--set", "train.compare=false",
                               "--set", "train.log_every=2", "--checkpoint-every", "3"]),
}
# fields that are clocks or machine facts, not results
CLOCKS = {"wall_s", "time_per_iter_s", "peak_rss_mb", "run_dir", "phase_s", "updates_per_s",
          "server_busy_fraction", "train_images_per_s"}


def run_case(case: str, run_dir: str, timeout: int = 900) -> None:
    ranks, args = CASES[case]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("SLURM_JOB_ID", None)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = [mpiexec if os.path.exists(mpiexec) else "mpiexec", "-n", str(ranks),
           sys.executable, "-m", "radmm_hpc", *args, "--run-dir", run_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"golden case {case} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _manifest(path: str) -> dict:
    with open(path) as fh:
        m = json.load(fh)
    for k in ("created_unix", "manifest_sha256"):
        m.pop(k, None)
    m["config"]["train"].pop("run_dir", None)
    for s in m["shards"]:
        s.pop("sha256", None)
    return m


def _arrays_digest(path: str) -> dict:
    out = {}
    with h5py.File(path, "r") as fh:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = hashlib.sha256(obj[()].tobytes()).hexdigest()
        fh.visititems(visit)
    return out


def collect(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as fh:
        summary = {k: v for k, v in json.load(fh).items() if k not in CLOCKS}
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        metrics = [{k: v for k, v in json.loads(x).items() if k not in CLOCKS} for x in fh]
    ckpts = sorted(n for n in os.listdir(run_dir) if n.startswith("ckpt-"))
    return {"summary": summary, "metrics": metrics,
            "manifests": {n: _manifest(os.path.join(run_dir, n, "manifest.json")) for n in ckpts},
            "model_arrays_sha256": _arrays_digest(os.path.join(run_dir, "model.h5"))}


def differences(want, got, rtol: float = 0.0, where: str = "") -> list:
    """Paths where two records differ (floats within rtol when rtol > 0)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}/{k}: missing or extra" for k in set(want) ^ set(got)]
        for k in sorted(set(want) & set(got)):
            if rtol and k in ("model_arrays_sha256", "sha256", "bytes"):
                continue          # bit patterns: compared only when exact
            out += differences(want[k], got[k], rtol, f"{where}/{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{where}: length {len(want)} != {len(got)}"]
        return [d for i, (a, b) in enumerate(zip(want, got)) for d in differences(a, b, rtol, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and rtol:
        ok = math.isclose(want, got, rel_tol=rtol, abs_tol=rtol) or (want != want and got != got)
        return [] if ok else [f"{where}: {want!r} != {got!r}"]
    return [] if want == got else [f"{where}: {want!r} != {got!r}"]


def load(case: str) -> dict:
    with open(os.path.join(GOLDEN, f"{case}.json")) as fh:
        return json.load(fh)


def main(argv) -> int:
    what, case = argv
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        run_dir = os.path.join(tmp, "run")
        run_case(case, run_dir)
        got = collect(run_dir)
    if what == "record":
        os.makedirs(GOLDEN, exist_ok=True)
        with open(os.path.join(GOLDEN, f"{case}.json"), "w") as fh:
            json.dump(got, fh, indent=1, sort_keys=True)
            fh.write("\n")
        print(f"recorded {case}")
        return 0
    diff = differences(load(case), got)
    print("\n".join(diff) if diff else f"{case}: identical")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
