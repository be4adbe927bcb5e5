"""Golden runs: the numbers and files of fixed CLI jobs, recorded once and compared after changes
that must not alter behaviour (a refactoring).

A record holds, from one run directory: summary.json's deterministic fields (scores as float64),
metrics.jsonl without its clocks, manifest.json of every checkpoint minus timestamps, digests and
the run directory, and the SHA-256 of every array in model.h5.

    python -m tests.support.golden record CASE      # write tests/golden/CASE.json from this code
    python -m tests.support.golden check CASE       # run again and compare exactly

The test suite (tests/test_golden.py) runs the small cases and compares them with a relative
tolerance (float64 runs; another CPU may round differently); the notes in tests/golden/README.md
say what was compared exactly and when.
"""

import hashlib
import json
import math
import os
import sys
import tempfile

import h5py

from radmm_hpc.config import foreign_sections
from tests.support.checkpoints import CLOCKS, metrics_records
from tests.support.launch import ROOT, run_cli

GOLDEN = os.path.join(ROOT, "tests", "golden")

# the paper variant with the settings it was tuned at (the defaults when the records were made)
PAPER = ["--config", os.path.join(ROOT, "configs", "radmm-proximal.toml")]
# case -> (ranks, CLI arguments)
CASES = {
    # the default main job (scripts/run-main.sh) of the paper variant (the default until the
    # anchored variant replaced it) without the wall-clock baselines
    "main-full": (8, PAPER + ["--set", "train.compare=false", "--checkpoint-every", "30"]),
    # the same network and data, shorter and in float64 (the test suite's copy)
    "main-small": (4, PAPER + ["--set", "train.compare=false", "--iters", "6", "--dtype", "float64",
                       "--set", "train.log_every=2", "--checkpoint-every", "3"]),
    # ResNet-8 through the general RADMM trainer, two-colour schedule on 3 ranks (regions 2, 1, 1)
    "resnet8-two-colour": (3, ["--model", "resnet8", "--data", "digits", "--train-subset", "200",
                               "--set", "model.base_width=4", *PAPER, "--set", "radmm.schedule=two-colour",
                               "--iters", "6", "--dtype", "float64", "--set", "train.compare=false",
                               "--set", "train.log_every=2", "--checkpoint-every", "3"]),
}


def run_case(case: str, run_dir: str, timeout: int = 900) -> None:
    ranks, args = CASES[case]
    proc, _ = run_cli([*args, "--run-dir", run_dir], ranks, timeout)
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
    metrics = metrics_records(run_dir)
    ckpts = sorted(n for n in os.listdir(run_dir) if n.startswith("ckpt-"))
    return {"summary": summary, "metrics": metrics,
            "manifests": {n: _manifest(os.path.join(run_dir, n, "manifest.json")) for n in ckpts},
            "model_arrays_sha256": _arrays_digest(os.path.join(run_dir, "model.h5"))}


def comparable(record: dict) -> dict:
    """The record without the sections of the methods the run did not use (config.foreign_sections:
    another method's defaults may change, a tuned default, without changing this run)."""
    out = json.loads(json.dumps(record))
    for m in out.get("manifests", {}).values():
        cfg = m.get("config", {})
        for sec in foreign_sections(cfg.get("train", {}).get("algo")):
            cfg.pop(sec, None)
    return out


def differences(want, got, rtol: float = 0.0, where: str = "") -> list:
    """Paths where a record differs from the one wanted (floats within rtol when rtol > 0). Keys
    that only `got` has are fields added since the record (new settings, new metrics): not a
    difference; every recorded value must be reproduced."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}/{k}: missing" for k in set(want) - set(got)]
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
    diff = differences(comparable(load(case)), comparable(got))
    print("\n".join(diff) if diff else f"{case}: identical")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
