"""Checkpoints written by an earlier radmm_hpc (tests/data/old-checkpoints, format version 1, made
before the algorithms became packages) still resume, to the numbers that earlier code reached.

Each case is a tiny CLI job that wrote ckpt-000004 on `ranks` ranks; resuming it to iteration 8 on
`resume` ranks gave expected.json's record (tests.support.golden.collect) with the old code. Radmm's
cases resume on fewer ranks than wrote them (elastic re-sharding of FCResNet and general state).
MAC's checkpoint (its Adam W-step, since replaced by Gauss-Newton fits) is refused with the reason.

    python -m tests.test_old_checkpoints      # regenerate (only meaningful on the old code)
"""

import json
import os
import shutil

import pytest

from tests.support import ROOT, run_cli
from tests.support.golden import collect, differences
from tests.support.launch import message_lines

DATA = os.path.join(ROOT, "tests", "data", "old-checkpoints")
SMALL = ["--data", "synthetic-regression", "--set", "data.n_samples=32", "--set", "model.width=6",
         "--set", "model.depth=4", "--set", "train.compare=false", "--set", "train.log_every=2",
         "--dtype", "float64", "--set", "train.progress_seconds=1e9"]
TRGL = ["--algo", "trgl", "--model", "resnet8", "--data", "digits", "--train-subset", "48",
        "--set", "model.base_width=2", "--set", "trgl.batch_size=8", "--set", "trgl.eval_max=16",
        "--set", "train.compare=false", "--set", "train.log_every=2", "--dtype", "float64"]
# the paper variant at its former defaults (what wrote these checkpoints)
PAPER = ["--set", "radmm.variant=proximal", "--set", "radmm.gamma=100", "--set", "radmm.lam=0.1"]
# name -> (ranks that wrote it, ranks that resume it, CLI arguments)
CASES = {
    "radmm-jacobi": (2, 1, SMALL + PAPER + ["--set", "radmm.schedule=jacobi"]),
    "radmm-general-two-colour": (2, 1, SMALL + PAPER + ["--set", "radmm.schedule=two-colour",
                                                "--set", "radmmconv.general=true"]),
    "backprop": (1, 1, SMALL + ["--algo", "backprop", "--set", "backprop.batch_size=8"]),
    "trgl": (1, 1, TRGL),
    "asgd": (2, 2, SMALL + ["--algo", "asgd", "--set", "ps.deterministic=true",
                            "--set", "asgd.updates_per_iter=3", "--set", "asgd.batch_size=8"]),
}
WRITE_ITERS, RESUME_ITERS = 4, 8
# MAC's checkpoint from the Adam W-step (mac.batch_size=8 wrote it); resumed with its old schedule
OLD_MAC = SMALL + ["--algo", "mac"] + [f"--set=mac.{k}" for k in (
    "variant=qp", "mu0=1", "mu_factor=2", "mu_steps=10", "iters_per_mu=2", "epochs=1", "z_steps=5")]


def _resume(name, run_dir):
    """Copy the old checkpoint into a fresh run directory and resume it to RESUME_ITERS."""
    _, ranks, args = CASES[name]
    os.makedirs(run_dir)
    shutil.copytree(os.path.join(DATA, name, "ckpt-000004"), os.path.join(run_dir, "ckpt-000004"))
    proc, _ = run_cli(args + ["--iters", str(RESUME_ITERS), "--run-dir", run_dir,
                              "--resume", os.path.join(run_dir, "ckpt-000004")], ranks=ranks, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from" in proc.stdout
    return collect(run_dir)


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_checkpoint_resumes_to_the_old_numbers(tmp_path, name):
    with open(os.path.join(DATA, "expected.json")) as fh:
        want = json.load(fh)[name]
    got = _resume(name, str(tmp_path / "run"))
    diff = differences(want, got, rtol=1e-9)
    assert not diff, diff[:10]


def test_old_mac_checkpoint_is_refused_with_the_reason(tmp_path):
    """The Gauss-Newton W-step replaced the Adam one: its state (Adam moments, no damping) cannot
    continue, so resume stops with one line on rank 0 and a non-zero status, not a wrong run."""
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    shutil.copytree(os.path.join(DATA, "mac", "ckpt-000004"), os.path.join(run_dir, "ckpt-000004"))
    proc, _ = run_cli(OLD_MAC + ["--iters", str(RESUME_ITERS), "--run-dir", run_dir,
                                 "--resume", os.path.join(run_dir, "ckpt-000004")], ranks=1, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = message_lines(proc.stderr)
    assert len(line) == 1 and "MAC with the Adam W-step" in line[0], proc.stderr


def _generate():
    import tempfile
    for name in CASES:          # (mac/ stays: the Adam W-step that wrote it is gone)
        shutil.rmtree(os.path.join(DATA, name), ignore_errors=True)
    os.makedirs(DATA, exist_ok=True)
    expected = {}
    for name, (ranks, _, args) in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            run = os.path.join(tmp, "run")
            proc, _ = run_cli(args + ["--iters", str(WRITE_ITERS), "--checkpoint-every", str(WRITE_ITERS),
                                      "--run-dir", run], ranks=ranks, timeout=300)
            assert proc.returncode == 0, proc.stderr
            shutil.copytree(os.path.join(run, "ckpt-000004"), os.path.join(DATA, name, "ckpt-000004"))
            expected[name] = _resume(name, os.path.join(tmp, "resumed"))
    with open(os.path.join(DATA, "expected.json"), "w") as fh:
        json.dump(expected, fh, indent=1, sort_keys=True)
        fh.write("\n")


if __name__ == "__main__":
    _generate()
