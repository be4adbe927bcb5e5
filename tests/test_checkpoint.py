"""Checkpoints (serial suite): exact resume, atomic writes, keep-k, damaged files, faults,
preemption by a real signal and a rank killed by SIGKILL (the last two launch mpiexec)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radmm_hpc import checkpoint as ck
from radmm_hpc.algos import trainer_class
from radmm_hpc.data import load_dataset
from radmm_hpc.errors import UserError
from radmm_hpc.loop import train
from radmm_hpc.runtime import CollectiveError
from tests.support import ROOT, mpi_all, on_root, runtime
from tests.support.checkpoints import (
    flip,
    metrics_iters,
    metrics_records,
    replace_shard,
    rewrite_manifest,
    same_weights,
    weights,
)
from tests.support.configs import tiny_cfg

RESUMABLE = [("backprop", "serial", {}), ("radmm", "serial", {}),
             ("radmm", "serial-redblack", {"radmm__regions": 2}), ("radmm", "two-colour", {}),
             ("radmm", "jacobi", {}),
             ("radmm", "pipeline", {"radmm__variant": "anchored", "radmm__trust": 0.0, "radmm__gamma": 0.01}),
             ("mac", "serial", {"mac__iters_per_mu": 3, "mac__variant": "al", "mac__patience": 0})]
CLI_SMALL = ["--data", "synthetic-regression", "--set", "data.n_samples=64", "--set", "model.width=8",
             "--set", "model.depth=5", "--set", "train.compare=false", "--set", "train.log_every=5",
             "--dtype", "float64"]


@pytest.mark.parametrize("algo,schedule,extra", RESUMABLE)
def test_resume_is_bit_identical(comm, rt, run_root, algo, schedule, extra):
    """10 iterations, a checkpoint, a resume to 20 == 20 at once: the same weights and metrics, on
    one process (serial suite) and on every rank count of the MPI suite."""
    P = 1 if comm is None else comm.Get_size()
    if P > 1 and algo == "radmm" and schedule.startswith("serial"):
        pytest.skip("a one-rank schedule")
    kw = dict(algo=algo, schedule=schedule, depth=9, data__n_samples=40 + 12 * P, **extra)
    a, b = os.path.join(run_root, "a"), os.path.join(run_root, "b")
    train(tiny_cfg(a, iters=20, **kw), rt())
    train(tiny_cfg(b, iters=10, every=10, **kw), rt())
    summary = train(tiny_cfg(b, iters=20, **kw), rt(), resume="auto")
    ok = on_root(comm, lambda: summary["iters"] == 20 and same_weights(weights(a), weights(b))
                 and metrics_records(a) == metrics_records(b) and metrics_iters(a) == [5, 10, 15, 20])
    assert ok if comm is None else mpi_all(ok, comm)


def test_resume_drops_metrics_after_the_checkpoint_and_named_path(tmp_path):
    run = tmp_path / "r"
    train(tiny_cfg(run, iters=15, every=10, algo="backprop"), runtime())
    assert metrics_iters(run) == [5, 10, 15]
    train(tiny_cfg(run, iters=20, algo="backprop"), runtime(), resume=str(run / "ckpt-000010"))
    assert metrics_iters(run) == [5, 10, 15, 20]
    train(tiny_cfg(tmp_path / "s", iters=20, algo="backprop"), runtime())
    assert same_weights(weights(run), weights(tmp_path / "s"))


def test_atomic_layout_keep_and_latest(tmp_path):
    run = tmp_path / "r"
    train(tiny_cfg(run, iters=10, every=2, keep=2), runtime())
    names = sorted(os.listdir(run))
    assert [n for n in names if n.startswith("ckpt")] == ["ckpt-000008", "ckpt-000010"], names
    assert (run / "latest").read_text().strip() == "ckpt-000010"
    assert not [n for n in names if ".tmp" in n or ".old" in n]
    m = ck.verify(str(run / "ckpt-000010"))
    assert m["iteration"] == 10 and m["world_size"] == 1 and m["format_version"] == ck.FORMAT_VERSION
    assert m["config"]["model"]["width"] == 8 and m["partition"] == [[1, 5]]
    with h5py.File(run / "ckpt-000010" / "shard-00000.h5", "r") as fh:
        assert int(fh["loop/iteration"][0]) == 10 and fh["trainer/W/1"].shape == (8, 9)
        assert fh["loop/rng/torch"].dtype == np.uint8
    # nothing pickled: the manifest is plain JSON
    json.loads((run / "ckpt-000010" / "manifest.json").read_text())


def _fresh(run_dir, **kw):
    cfg = tiny_cfg(run_dir, **kw)
    rt = runtime()
    tr = trainer_class(cfg.train.algo)(cfg, rt, load_dataset(cfg.data))
    return ck.Checkpointer(cfg, rt, str(run_dir), tr)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("good") / "r"
    train(tiny_cfg(run, iters=6, every=2, algo="backprop"), runtime())
    return run


def _copy(good_run, tmp_path):
    dst = tmp_path / "r"
    shutil.copytree(good_run, dst)
    return dst


def test_auto_skips_damaged_newest(good_run, tmp_path, capsys):
    run = _copy(good_run, tmp_path)
    flip(run / "ckpt-000006" / "shard-00000.h5", 3000, 4)
    loop = _fresh(run, algo="backprop").resume("auto")
    assert loop["iteration"] == 4
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "skipping" in ln]
    assert len(lines) == 1 and "ckpt-000006/shard-00000.h5" in lines[0] and "SHA-256" in lines[0]
    # no checkpoint at all: start fresh
    assert _fresh(tmp_path / "empty", algo="backprop").resume("auto") is None


def _other_config(tmp_path):
    other = tmp_path / "other"
    train(tiny_cfg(other, iters=2, every=2, algo="backprop", model__width=6), runtime())
    return other / "ckpt-000002"


def _not_hdf5(ck_dir):
    replace_shard(ck_dir, 0, b"this is not an HDF5 file\n" * 10)


def _version(ck_dir):
    rewrite_manifest(ck_dir, lambda m: m.update(format_version=99))


DAMAGE = {
    "truncated shard": (lambda d: os.truncate(d / "shard-00000.h5", 1000), "truncated"),
    "flipped bytes": (lambda d: flip(d / "shard-00000.h5", 2000, 3), "SHA-256 mismatch"),
    "missing shard": (lambda d: os.remove(d / "shard-00000.h5"), "missing shard"),
    "missing manifest": (lambda d: os.remove(d / "manifest.json"), "manifest.json: missing"),
    "manifest not json": (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON"),
    "manifest edited": (lambda d: flip(d / "manifest.json", 40), "manifest.json: damaged"),
    "format version": (_version, "format version 99"),
    "not hdf5": (_not_hdf5, "not a readable HDF5 shard"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_checkpoint_one_clear_message(good_run, tmp_path, case):
    run = _copy(good_run, tmp_path)
    damage, message = DAMAGE[case]
    damage(run / "ckpt-000006")
    with pytest.raises(CollectiveError) as info:
        _fresh(run, algo="backprop").resume(str(run / "ckpt-000006"))
    text = str(info.value)
    assert message in text and "ckpt-000006" in text and "\n" not in text, text
    assert info.value.exit_code == 2


def test_checkpoint_from_another_config(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    shutil.rmtree(run / "ckpt-000006")
    shutil.copytree(_other_config(tmp_path), run / "ckpt-000006")
    with pytest.raises(CollectiveError, match=r"ckpt-000006/manifest.json: written by another config "
                                              r"\(model.width = 6 there, 8 in this run\)"):
        _fresh(run, algo="backprop").resume("auto")     # not damaged: no silent fallback


def test_only_the_runs_own_method_settings_are_compared_on_resume():
    from radmm_hpc.checkpoint import _config_diff
    from radmm_hpc.config import Config
    saved = Config().to_dict()
    now = Config().to_dict()
    now["trgl"]["lr"] *= 2                # another method's default changed since the checkpoint
    now["asgd"]["batch_size"] += 1
    assert _config_diff(saved, now) is None                       # a RADMM run reads neither
    now["radmm"]["gamma"] *= 2
    assert "radmm.gamma" in _config_diff(saved, now)
    now["train"]["algo"] = saved["train"]["algo"] = "trgl"
    assert "trgl.lr" in _config_diff(saved, now)


def test_cli_resume_errors(cli, good_run, tmp_path, capsys):
    run = _copy(good_run, tmp_path)
    flip(run / "ckpt-000006" / "shard-00000.h5", 100, 8)
    base = ["--algo", "backprop", "--set", "backprop.batch_size=16", "--set", "model.depth=5",
            "--iters", "8"] + CLI_SMALL
    proc, _ = cli(base + ["--resume", str(run / "ckpt-000006")])
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert proc.returncode == 2 and len(errors) == 1 and "shard-00000.h5: damaged" in errors[0], proc.stderr
    from radmm_hpc.cli import main  # the other bad inputs in-process (same code path)
    assert main(base + ["--resume", "auto"]) == 2
    assert "--resume auto needs the run directory" in capsys.readouterr().err
    assert main(base + ["--resume", str(tmp_path / "nothing")]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err
    proc, _ = cli(base + ["--resume", "auto", "--run-dir", str(run), "--checkpoint-every", "2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipping damaged checkpoint" in proc.stderr and "resumed from" in proc.stdout
    proc, _ = cli(["inspect", str(run / "ckpt-000008")])
    assert proc.returncode == 0 and "sha256 ok" in proc.stdout and "trainer/param/0" in proc.stdout
    proc, _ = cli(["inspect", str(run)])
    assert proc.returncode == 0 and "ckpt-000008: iteration 8" in proc.stdout


def test_inspect_reports_bad_shard(good_run, tmp_path):
    from radmm_hpc.inspect import inspect
    run = _copy(good_run, tmp_path)
    flip(run / "ckpt-000006" / "shard-00000.h5", 500)
    text = inspect(str(run / "ckpt-000006"))
    assert "BAD" in text and "SHA-256 mismatch" in text and "1 damaged shard" in text


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(target=st.sampled_from(["manifest.json", "shard-00000.h5"]),
       op=st.sampled_from(["flip", "truncate", "append", "zero"]),
       pos=st.floats(0, 1, exclude_max=True), n=st.integers(1, 64))
def test_fuzz_damage_gives_only_clean_user_errors(good_run, tmp_path_factory, target, op, pos, n):
    run = tmp_path_factory.mktemp("fuzz") / "r"
    shutil.copytree(good_run, run)
    path = run / "ckpt-000006" / target
    size = path.stat().st_size
    off = int(pos * size)
    if op == "flip":
        flip(path, off, min(n, size - off))
    elif op == "truncate":
        os.truncate(path, off)
    elif op == "append":
        with open(path, "ab") as fh:
            fh.write(os.urandom(n))
    else:
        with open(path, "r+b") as fh:
            fh.seek(off)
            fh.write(b"\0" * n)
    try:
        loop = _fresh(run, algo="backprop").resume(str(run / "ckpt-000006"))
        assert loop["iteration"] == 6        # e.g. JSON whitespace changed: the content is intact
    except CollectiveError as exc:           # the rank-agreed form of a UserError
        assert exc.exit_code == 2 and "ckpt-000006" in str(exc) and "\n" not in str(exc)
    try:
        ck.verify(str(run / "ckpt-000006"))
    except UserError as exc:
        assert "ckpt-000006" in str(exc)


def test_write_failure_keeps_previous(tmp_path, monkeypatch):
    run = tmp_path / "r"
    train(tiny_cfg(run, iters=4, every=2), runtime())
    real = ck._write_bytes
    monkeypatch.setattr(ck, "_write_bytes", lambda p, d: (_ for _ in ()).throw(
        OSError(28, "No space left on device")) if "shard" in p else real(p, d))
    with pytest.raises(CollectiveError, match="cannot write checkpoint shard .*No space left on device"):
        train(tiny_cfg(run, iters=8, every=2), runtime(), resume="auto")
    assert sorted(n for n in os.listdir(run) if n.startswith("ckpt")) == ["ckpt-000002", "ckpt-000004"]
    assert (run / "latest").read_text().strip() == "ckpt-000004"
    ck.verify(str(run / "ckpt-000004"))


def test_divergence_never_overwrites_the_last_good_checkpoint(tmp_path, monkeypatch):
    import torch

    from radmm_hpc import loop
    base = trainer_class("backprop")

    class Breaks(base):
        def step(self, it):
            super().step(it)
            if it + 1 == 7:
                with torch.no_grad():
                    next(self.model.parameters()).fill_(float("nan"))
    monkeypatch.setattr(loop, "trainer_class", lambda name: Breaks)
    run = tmp_path / "r"
    with pytest.raises(CollectiveError, match="non-finite .* iteration 8.*ckpt-000006 is kept") as info:
        train(tiny_cfg(run, algo="backprop", iters=20, every=2), runtime())
    assert info.value.exit_code == 4
    assert (run / "latest").read_text().strip() == "ckpt-000006"
    assert not (run / "ckpt-000008").exists()
    with h5py.File(run / "ckpt-000006" / "shard-00000.h5", "r") as fh:
        assert np.isfinite(fh["trainer/param/0"][()]).all()
    ck.verify(str(run / "ckpt-000006"))


# ---- real processes: signals and a killed rank -------------------------------------------------
def _launch(args, ranks):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("SLURM_JOB_ID", None)
    cmd = [sys.executable, "-m", "radmm_hpc", *args]
    if ranks > 1:
        cmd = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(ranks)] + cmd
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)


def _wait_for(path, proc, limit=60):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < limit, "no checkpoint appeared"
        time.sleep(0.1)


def _ranks(proc):
    """PIDs of the Python ranks under an mpiexec process (its descendants running radmm_hpc)."""
    kids, out = {proc.pid}, []
    for _ in range(3):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                stat = open(f"/proc/{pid}/stat").read()
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid in kids and int(pid) not in kids:
                kids.add(int(pid))
                if b"radmm_hpc" in cmd and b"mpiexec" not in cmd and b"hydra" not in cmd:
                    out.append(int(pid))
    return sorted(set(out))


@pytest.mark.parametrize("ranks", [1, 2])
def test_sigusr1_checkpoints_and_exits_3_then_resumes(tmp_path, ranks):
    run = tmp_path / "r"
    args = ["--algo", "radmm", "--run-dir", str(run)] + CLI_SMALL     # the default: anchored, pipeline
    proc = _launch(args + ["--iters", "1000000", "--checkpoint-every", "50"], ranks)
    _wait_for(run / "latest", proc)
    # MPICH's mpiexec (hydra) forwards SIGUSR1 (and SIGTERM) to every rank
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err[-2000:]
    assert "stopped by a signal" in err and "exiting with status 3" in err
    last = (run / "latest").read_text().strip()
    m = ck.verify(str(run / last))
    assert m["world_size"] == ranks and m["iteration"] > 0
    it = m["iteration"]
    proc = _launch(args + ["--iters", str(it + 5), "--resume", "auto"], ranks)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert f"resumed from {run / last} (iteration {it}" in out
    assert json.loads((run / "summary.json").read_text())["iters"] == it + 5


def test_kill9_one_rank_ends_job_fast_and_last_checkpoint_verifies(tmp_path):
    run = tmp_path / "r"
    args = ["--algo", "radmm", "--run-dir", str(run),
            "--iters", "1000000", "--checkpoint-every", "20", "--set", "checkpoint.keep=2"] + CLI_SMALL
    proc = _launch(args, 3)
    _wait_for(run / "latest", proc)
    time.sleep(0.5)
    pids = _ranks(proc)
    assert len(pids) == 3, pids
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.time()
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the job outlived a killed rank by 30 s")
    assert time.time() - t0 < 30 and proc.returncode != 0
    for pid in pids:   # no orphan rank keeps running
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    latest = (run / "latest").read_text().strip()
    m = ck.verify(str(run / latest))
    assert m["world_size"] == 3
