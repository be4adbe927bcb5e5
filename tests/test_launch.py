"""Launching (issue 19): --help/--version under any launcher, foreign launchers, the world-size
checks, threads, signals, determinism settings, the start-up lines."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.support import ROOT

TINY = ["--algo", "backprop", "--set", "model.width=8", "--set", "model.depth=3", "--set", "train.compare=false"]


def _mpiexec():
    p = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return p if os.path.exists(p) else "mpiexec"


@pytest.mark.parametrize("flag", ["--help", "--version", "-h"])
def test_help_and_version_end_on_every_rank_under_mpiexec(cli, flag):
    # before the fix, rank 0 printed the help and left while rank 1 waited in a broadcast: a hang
    proc, secs = cli([flag], ranks=2, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if flag == "--version":
        assert proc.stdout.count("radmm_hpc ") == 1, proc.stdout
    else:
        assert proc.stdout.count("usage: radmm-hpc [") == 1, proc.stdout   # printed by rank 0 only
    assert "Traceback" not in proc.stderr


def test_help_also_under_mpi4py_and_for_a_subcommand(cli):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "radmm_hpc", "eval", "--help"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.count("usage: radmm-hpc eval") == 1, proc.stdout + proc.stderr


def test_top_level_help_lists_the_training_flags(cli):
    proc, _ = cli(["--help"])
    assert proc.returncode == 0
    for flag in ("--algo", "--data", "--model", "--iters", "--run-dir", "--resume", "--overwrite", "--set",
                 "--print-config", "export"):
        assert flag in proc.stdout, flag


def _torchrun(args, nproc=2, timeout=90):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    for k in [k for k in env if k.startswith(("PMI_", "OMPI_", "PMIX_", "SLURM_"))]:
        del env[k]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-port=0",
           "-m", "radmm_hpc", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_torchrun_is_refused_with_one_line(tmp_path):
    # before: two independent one-rank runs writing into the same run directory, status 0
    proc = _torchrun(TINY + ["--run-dir", str(tmp_path / "run"), "--iters", "3"])
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("radmm-hpc: error:")]
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert len(ours) == 1, proc.stderr[-3000:]
    assert "torchrun started 2 processes" in ours[0] and "mpirun -n 2" in ours[0], ours
    assert not (tmp_path / "run").exists()


def test_help_under_torchrun_exits_0():
    proc = _torchrun(["--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("usage: radmm-hpc [") == 1


def test_launcher_problem_srun_without_pmi(monkeypatch):
    from radmm_hpc.comm import Comm
    from radmm_hpc.runtime import Runtime, launcher_problem
    rt = Runtime(comm=Comm(None))
    for k in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(k, raising=False)
    assert launcher_problem(rt) is None
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert launcher_problem(rt) is None            # srun -n 1: a one-rank job is right
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    msg = launcher_problem(rt)
    assert "srun started 4 tasks" in msg and "mpirun -n 4" in msg and "docs/slurm.md" in msg


def test_one_process_in_a_larger_allocation_names_the_way_out(cli, tmp_path):
    # inside `salloc -n 4`, one python process: the message says what to run instead
    env = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "4"}
    proc, _ = cli(TINY + ["--iters", "2", "--run-dir", str(tmp_path / "a")], env_extra=env)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and "SLURM_NTASKS = 4" in err[0], proc.stderr
    assert "mpirun -n 4" in err[0] and "--set train.world_size=1" in err[0], err
    # ... and the way out works
    proc, _ = cli(TINY + ["--iters", "2", "--run-dir", str(tmp_path / "b"), "--set", "train.world_size=1"],
                  env_extra=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_world_size_error_names_the_setting(cli, tmp_path):
    proc, _ = cli(TINY + ["--iters", "2", "--run-dir", str(tmp_path / "a"), "--set", "train.world_size=3"], ranks=2)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and "train.world_size = 3 but this job has 2 ranks" in err[0], proc.stderr
    assert "--set train.world_size=2" in err[0] and "mpirun -n 3" in err[0]


def test_threads_from_slurm_cpus_per_task(monkeypatch):
    from radmm_hpc.comm import Comm
    from radmm_hpc.runtime import Runtime, pin_threads
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
        rt = Runtime(comm=Comm(None), local_size=4)
        pin_threads(rt)
        assert rt.threads == 3 and torch.get_num_threads() == 3   # not cores // 4
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        pin_threads(rt)
        assert rt.threads == 2
    finally:
        torch.set_num_threads(before)


def test_cublas_workspace_set_when_deterministic_on_cuda(monkeypatch):
    from radmm_hpc.comm import Comm
    from radmm_hpc.runtime import Runtime, set_determinism
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda flag: calls.append(flag))
    rt = Runtime(comm=Comm(None), device=torch.device("cpu"))
    set_determinism(rt, True)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and calls == [True]
    rt.device = torch.device("cuda", 0)       # only the device's type is read
    set_determinism(rt, False)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    set_determinism(rt, True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")   # a user's value stays
    set_determinism(rt, True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_startup_line_per_rank(cli, tmp_path):
    proc, _ = cli(TINY + ["--iters", "2", "--run-dir", str(tmp_path / "r")], ranks=3,
                  env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("radmm-hpc: rank ")]
    assert sorted(ln.split()[2] for ln in lines) == ["0/3", "1/3", "2/3"], proc.stderr
    assert all("device cpu, 1 thread" in ln and " on " in ln for ln in lines)


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGUSR1])
def test_usr2_preempts_like_usr1(tmp_path, sig):
    """SIGUSR2 (submitit's preemption signal) writes a checkpoint and exits 3, as SIGUSR1 does."""
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("SLURM_JOB_ID", None)
    args = TINY + ["--iters", "100000", "--run-dir", str(run), "--checkpoint-every", "50",
                   "--set", "train.log_every=50"]
    p = subprocess.Popen([sys.executable, "-m", "radmm_hpc", *args], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (run / "latest").exists():   # the handlers are installed before the loop
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-2000:]
            time.sleep(0.1)
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 3, err[-2000:]
    assert "stopped by a signal at iteration" in err and "Traceback" not in err
