"""Run directories (issue 19): never mixed with an older run, --overwrite, unique default names,
run.json, TensorBoard logging across a resume, progress lines."""

import io
import json
import os
import subprocess
import sys
import time

from tests.support import ROOT

TINY = ["--algo", "backprop", "--set", "model.width=8", "--set", "model.depth=3", "--set", "train.compare=false",
        "--set", "train.log_every=5"]


def _iters(run):
    return [json.loads(x)["iter"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_non_empty_run_dir_is_refused_without_resume(cli, tmp_path):
    run = tmp_path / "run"
    proc, _ = cli(TINY + ["--iters", "10", "--run-dir", str(run)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    # before the fix this appended iterations 5, 10 to the old metrics (5, 10, 5, 10)
    proc, _ = cli(TINY + ["--iters", "10", "--run-dir", str(run)])
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and f"run directory {run} is not empty" in err[0], proc.stderr
    assert "--resume auto" in err[0] and "--overwrite" in err[0]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before   # untouched


def test_overwrite_starts_again(cli, tmp_path):
    run = tmp_path / "run"
    proc, _ = cli(TINY + ["--iters", "15", "--run-dir", str(run), "--checkpoint-every", "5"])
    assert proc.returncode == 0 and _iters(run) == [5, 10, 15]
    proc, _ = cli(TINY + ["--iters", "10", "--run-dir", str(run), "--overwrite"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _iters(run) == [5, 10]
    assert not [n for n in os.listdir(run) if n.startswith("ckpt-") or n == "latest"]   # old checkpoints gone
    # files no run writes are not deleted
    (run / "notes.txt").write_text("mine")
    proc, _ = cli(TINY + ["--iters", "10", "--run-dir", str(run), "--overwrite"])
    assert proc.returncode == 2 and "notes.txt" in proc.stderr and (run / "notes.txt").read_text() == "mine"
    proc, _ = cli(TINY + ["--iters", "10", "--run-dir", str(run), "--overwrite", "--resume", "auto"])
    assert proc.returncode == 2 and "exclude each other" in proc.stderr


def test_resume_auto_without_checkpoint_starts_the_metrics_again(cli, tmp_path):
    run = tmp_path / "run"
    proc, _ = cli(TINY + ["--iters", "10", "--run-dir", str(run)])
    assert proc.returncode == 0
    proc, _ = cli(TINY + ["--iters", "15", "--run-dir", str(run), "--resume", "auto"])
    assert proc.returncode == 0 and "starting fresh" in proc.stdout, proc.stdout + proc.stderr
    assert _iters(run) == [5, 10, 15]


def test_default_run_dir_is_new_even_within_one_second(cli, tmp_path):
    # directories named after this second and the next ones exist already (another run started
    # in the same second): the new run gets a directory of its own
    now = time.time()
    stamps = [time.strftime("%Y%m%d-%H%M%S", time.localtime(now + k)) for k in range(0, 30)]
    for s in stamps:
        (tmp_path / "runs" / s).mkdir(parents=True)
        (tmp_path / "runs" / s / "metrics.jsonl").write_text("")
    proc, _ = cli(TINY + ["--iters", "5"], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    made = sorted(d for d in os.listdir(tmp_path / "runs") if d not in stamps)
    assert len(made) == 1 and made[0].rsplit("-", 1)[0] in stamps and made[0].endswith("-1"), made
    assert (tmp_path / "runs" / made[0] / "summary.json").is_file()
    assert all(os.listdir(tmp_path / "runs" / s) == ["metrics.jsonl"] for s in stamps)


def test_new_default_dir_suffixes(tmp_path):
    from radmm_hpc.rundir import new_default_dir
    paths = [new_default_dir(str(tmp_path), "20260101-000000") for _ in range(3)]
    assert [os.path.basename(p) for p in paths] == ["20260101-000000", "20260101-000000-1", "20260101-000000-2"]


def _run_in_slurm_env(args, ranks=2):
    """The ranks see a Slurm job's variables; mpiexec itself does not (it would look for srun)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    for k in [k for k in env if k.startswith("SLURM_")]:
        del env[k]
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    slurm = ["SLURM_JOB_ID=4242", f"SLURM_NTASKS={ranks}", "SLURM_ARRAY_JOB_ID=4240", "SLURM_ARRAY_TASK_ID=2"]
    cmd = [mpiexec if os.path.exists(mpiexec) else "mpiexec", "-n", str(ranks), "env", *slurm,
           sys.executable, "-m", "radmm_hpc", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)


def test_run_json(tmp_path):
    run = tmp_path / "run"
    args = TINY + ["--iters", "10", "--run-dir", str(run), "--checkpoint-every", "5"]
    proc = _run_in_slurm_env(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((run / "run.json").read_text())
    assert meta["argv"] == args
    assert meta["versions"]["radmm_hpc"] and meta["versions"]["torch"] and meta["versions"]["mpi4py"]
    assert "MPICH" in meta["mpi_library"] or "Open MPI" in meta["mpi_library"], meta["mpi_library"]
    assert meta["world_size"] == 2 and len(meta["ranks"]) == 2 and meta["hosts"]
    assert {r["rank"] for r in meta["ranks"]} == {0, 1} and all(r["threads"] >= 1 for r in meta["ranks"])
    assert meta["slurm"]["SLURM_JOB_ID"] == "4242" and meta["slurm"]["SLURM_ARRAY_TASK_ID"] == "2"
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    if git.returncode == 0:
        assert meta["git"]["revision"] == git.stdout.strip()
    else:
        assert meta["git"] is None
    assert meta["resumed_from"] is None and meta["earlier"] == []
    # a resumed start is recorded, the first one kept under "earlier"
    proc = _run_in_slurm_env(args[:-4] + ["--iters", "15", "--run-dir", str(run), "--resume", "auto"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta2 = json.loads((run / "run.json").read_text())
    assert meta2["resumed_from"]["iteration"] == 10 and meta2["resumed_from"]["checkpoint"].endswith("ckpt-000010")
    assert len(meta2["earlier"]) == 1 and meta2["earlier"][0]["started"] == meta["started"]


def _scalars(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_log_purged_on_resume(cli, tmp_path):
    run = tmp_path / "run"
    args = TINY + ["--run-dir", str(run), "--set", "train.tensorboard=true", "--checkpoint-every", "10",
                   "--dtype", "float64"]
    proc, _ = cli(args + ["--iters", "20"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = _scalars(run / "tensorboard", "train_loss")
    assert [s for s, _ in first] == [5, 10, 15, 20]
    # resume from iteration 10 and redo 15, 20: TensorBoard shows each step once, as metrics.jsonl
    proc, _ = cli(args + ["--iters", "25", "--resume", str(run / "ckpt-000010")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = _scalars(run / "tensorboard", "train_loss")
    assert [s for s, _ in again] == [5, 10, 15, 20, 25], again
    assert _iters(run) == [5, 10, 15, 20, 25]
    m = {json.loads(x)["iter"]: json.loads(x)["train_loss"] for x in (run / "metrics.jsonl").read_text().splitlines()}
    assert all(abs(v - m[s]) < 1e-6 * max(1.0, abs(v)) for s, v in again)


def test_tensorboard_is_off_by_default(cli, tmp_path):
    proc, _ = cli(TINY + ["--iters", "5", "--run-dir", str(tmp_path / "r")])
    assert proc.returncode == 0 and not (tmp_path / "r" / "tensorboard").exists()


def test_progress_line_has_pace_and_eta():
    from radmm_hpc.metrics import Progress
    out = io.StringIO()
    p = Progress(100, True, every_s=0.0, stream=out, start=40)
    p.t0 -= 6.0                                  # 6 s for the 10 iterations after the resume point
    p.update(50, {"train_loss": 0.5})
    line = out.getvalue()
    assert "iter 50/100" in line and "0.6 s/iter" in line and "ETA 0:30" in line, line
