"""The job scripts in jobs/ against a real single-node Slurm (docs/slurm.md, "What the test does").

Brings up munged + slurmctld + slurmd from the Debian packages (installed on first use by
install-slurm.sh) in a temporary directory, as root; skips with the reason when that is impossible.
Submits jobs/radmm_cpu.sbatch with a tiny float64 RADMM config and checks:
  - an uninterrupted job completes (status 0, no restart) and writes summary.json and model.h5;
  - a job sent SIGUSR1 mid-run writes a checkpoint, exits 3, requeues itself, resumes from that
    checkpoint and completes, with final weights bit-identical to the uninterrupted job's;
  - launched with srun and no Slurm PMI, the launcher check stops the N one-rank jobs (status 2,
    one line naming mpirun) and the job is not requeued; one process in a 2-task allocation is
    stopped with a line naming `mpirun -n 2` and `--set train.world_size=1`;
  - the job array task that carries the array's id, preempted with SIGUSR2, requeues itself only
    (`<array id>_<task id>`), not the whole array, and resumes; the other task completes without a
    restart;
  - without OMP_NUM_THREADS, each rank takes --cpus-per-task threads, as its start-up line says;
  - the same preemption round trip for jobs/asgd_gpu.sbatch (deterministic A-SGD, run on CPU);
  - every other method's script (MAC, A-SGD, TRGL, backprop) runs a tiny job to completion.
The job's Python environment: $RADMM_SLURM_VENV, else the environment running pytest (in CI
<repo>/.venv). Every wait has a deadline; teardown stops every daemon by pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from minislurm import MiniSlurm, SlurmUnavailable, ensure_installed  # noqa: E402

JOBS = os.path.join(ROOT, "jobs")
RANKS = 2
# tiny, deterministic, float64: ~1500 iterations take about 10 s on 2 ranks (2 cores)
TINY = ["--data", "synthetic-regression", "--set", "model.width=8", "--set", "model.depth=4",
        "--dtype", "float64", "--seed", "7", "--set", "train.deterministic=true",
        "--set", "train.compare=false", "--iters", "1500", "--checkpoint-every", "50"]


def _venv() -> str:
    if os.environ.get("RADMM_SLURM_VENV"):
        return os.environ["RADMM_SLURM_VENV"]
    return sys.prefix if sys.prefix != sys.base_prefix else ""


# -- no Slurm needed --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(f for f in os.listdir(JOBS) if f.endswith((".sbatch", ".sh"))))
def test_job_scripts_parse_and_declare_requeue(name):
    path = os.path.join(JOBS, name)
    proc = subprocess.run(["bash", "-n", path], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    text = open(path).read()
    assert any(line.startswith(f"# jobs/{name}") for line in text.splitlines()[:2]), "documented at its top"
    if name.endswith(".sbatch"):
        assert "#SBATCH --requeue" in text and re.search(r"#SBATCH --signal=B:USR1@\d+", text)
        assert "jobs/common.sh" in text and "radmm_run " in text


# -- a real Slurm -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    try:
        ensure_installed()
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    c = MiniSlurm()
    try:
        c.start(timeout=60)
    except SlurmUnavailable as exc:
        c.stop()
        pytest.skip(str(exc))
    except BaseException:
        _dump_logs(c)
        c.stop()
        raise
    try:
        yield c
    finally:
        c.stop()
        if os.environ.get("RADMM_SLURM_KEEP"):
            print(f"\nSlurm test directory kept: {c.root}")
        else:
            shutil.rmtree(c.root, ignore_errors=True)


def _dump_logs(c: MiniSlurm) -> None:
    for name in ("slurmctld.log", "slurmd.log", "munged.out", "slurmctld.out", "slurmd.out"):
        p = os.path.join(c.logdir, name)
        if os.path.exists(p):
            print(f"--- {p} (tail)\n" + open(p, errors="replace").read()[-3000:])


class Job:
    def __init__(self, cluster: MiniSlurm, script: str, args: list[str], ntasks: int = RANKS,
                 env: dict | None = None, tag: str = "job", sbatch_opts: tuple = ()):
        self.cluster = cluster
        self.tag = tag
        self.work = os.path.join(cluster.root, "work", tag)
        os.makedirs(self.work, exist_ok=True)
        self.env = {"RADMM_HOME": ROOT, "VENV": _venv(), "RUNS": os.path.join(self.work, "runs"),
                    "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", **(env or {})}
        self.id = cluster.sbatch([f"--ntasks={ntasks}", f"--job-name={tag}", *sbatch_opts,
                                  os.path.join(JOBS, script), *args],
                                 cwd=self.work, env=self.env)
        self.run_dir = os.path.join(self.work, "runs", f"slurm-{self.id}")
        self.t0 = time.monotonic()

    @property
    def log(self) -> str:
        """The job's output file (the scripts' --output=slurm-%x-%j.out, appended across restarts)."""
        p = os.path.join(self.work, f"slurm-{self.tag}-{self.id}.out")
        return open(p, errors="replace").read() if os.path.exists(p) else ""

    def wait(self, states=frozenset({"COMPLETED"}), timeout: float = 120, on_poll=None) -> dict:
        try:
            return self.cluster.wait_for(self.id, set(states), timeout, on_poll=on_poll)
        except Exception:
            print(f"--- job {self.id} log\n{self.log}")
            for name in sorted(os.listdir(self.work)):   # an internal error's traceback, per rank
                if name.startswith("radmm-hpc-error-rank"):
                    print(f"--- {name}\n" + open(os.path.join(self.work, name), errors="replace").read()[-3000:])
            _dump_logs(self.cluster)
            raise


# tiny deterministic A-SGD (server + 1 worker): 300 iterations take about 9 s on 2 cores
ASGD_TINY = ["--device", "cpu", "--data", "synthetic-regression", "--set", "model.width=8", "--set", "model.depth=3",
             "--set", "ps.deterministic=true", "--dtype", "float64", "--seed", "7", "--set", "train.deterministic=true",
             "--set", "train.compare=false", "--iters", "300", "--checkpoint-every", "25"]
PREEMPTABLE = {"radmm_cpu.sbatch": TINY, "asgd_gpu.sbatch": ASGD_TINY}


@pytest.fixture(scope="module")
def references(cluster):
    """script -> its tiny job, uninterrupted (run on first use)."""
    done = {}

    def get(script):
        if script not in done:
            job = Job(cluster, script, PREEMPTABLE[script], tag="reference-" + script.split(".")[0],
                      sbatch_opts=_cpu_opts(script))
            job.info = job.wait(timeout=120)
            job.seconds = time.monotonic() - job.t0
            done[script] = job
        return done[script]
    return get


@pytest.fixture(scope="module")
def reference(references):
    """The tiny RADMM job, uninterrupted."""
    return references("radmm_cpu.sbatch")


def _cpu_opts(script: str) -> tuple:
    """This 2-core test cluster has no GPUs: a GPU script's request is overridden on the sbatch
    command line, as a user would on a CPU partition."""
    return ("--gpus-per-node=0", f"--ntasks-per-node={RANKS}", "--cpus-per-task=1") if "gpu" in script else ()


def _weights(path: str) -> dict:
    import h5py
    import numpy as np
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj[()])
        f.visititems(visit)
    return out


def test_cpu_job_completes_and_writes_the_run_directory(reference):
    info = reference.info
    assert info["ExitCode"] == "0:0" and info["Restarts"] == "0", info
    log = reference.log
    assert f"{RANKS} ranks" in log and "--resume auto" in log and f"train.world_size={RANKS}" in log, log
    assert "starting fresh" in log and "finished:" in log, log
    with open(os.path.join(reference.run_dir, "summary.json")) as fh:
        summary = json.load(fh)
    assert json.dumps(summary).find("1500") >= 0, summary
    w = _weights(os.path.join(reference.run_dir, "model.h5"))
    assert w and all(a.dtype.name == "float64" for a in w.values() if a.dtype.kind == "f"), w.keys()
    print(f"\nreference job {reference.id}: {reference.seconds:.1f} s from sbatch to COMPLETED")


@pytest.mark.parametrize("script", sorted(PREEMPTABLE))
def test_usr1_checkpoints_requeues_and_resumes_bit_identically(cluster, references, script):
    reference = references(script)
    iters = int(PREEMPTABLE[script][PREEMPTABLE[script].index("--iters") + 1])
    t0 = time.monotonic()
    job = Job(cluster, script, PREEMPTABLE[script], tag="preempted-" + script.split(".")[0],
              sbatch_opts=_cpu_opts(script))
    latest = os.path.join(job.run_dir, "latest")
    # preempt once the first periodic checkpoint exists (the signal handlers are installed by then)
    job.wait({"RUNNING"}, timeout=60)
    deadline = time.monotonic() + 60
    while not os.path.exists(latest):
        assert time.monotonic() < deadline, f"no checkpoint after 60 s\n{job.log}"
        assert cluster.job(job.id).get("JobState") == "RUNNING", job.log
        time.sleep(0.1)
    cluster.cmd("scancel", "--signal=USR1", "--batch", job.id)
    t_signal = time.monotonic()

    # the job leaves with status 3 and requeues itself: pending again (or already running), Restarts 1
    deadline = time.monotonic() + 60
    while True:
        info = cluster.job(job.id)
        if int(info.get("Restarts", "0")) >= 1:
            break
        assert info.get("JobState") in ("RUNNING", "COMPLETING", "REQUEUED", "PENDING"), (info, job.log)
        assert time.monotonic() < deadline, f"not requeued after 60 s: {info}\n{job.log}"
        time.sleep(0.2)
    t_requeued = time.monotonic()
    m = re.search(r"stopped by a signal at iteration (\d+); checkpoint (\S+) written; exiting with status 3",
                  job.log)
    assert m, job.log
    stopped_at, ckpt = int(m.group(1)), m.group(2)
    assert 0 < stopped_at < iters
    assert "preempted (status 3), checkpoint written: scontrol requeue" in job.log
    from radmm_hpc.checkpoint import verify
    assert verify(ckpt)["iteration"] == stopped_at

    def no_begin_delay(info):
        # Slurm holds a requeued job for about 2 minutes (Reason=BeginTime): let it start now, but
        # not within 2 s of the requeue. slurmd revokes the old run's credential at the requeue,
        # with a resolution of one second: a new run launched within the same second is refused
        # ("Job credential revoked", the job ends FAILED 1:0; seen in 2 of 16 runs of this module)
        if (info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime"
                and time.monotonic() - t_requeued > 2.0):
            cluster.cmd("scontrol", "update", f"JobId={job.id}", "StartTime=now", check=False)

    final = job.wait({"COMPLETED"}, timeout=120, on_poll=no_begin_delay)
    t_done = time.monotonic()
    assert final["ExitCode"] == "0:0" and final["Restarts"] == "1", final
    log = job.log
    assert "restart 1 on" in log, log
    assert f"resumed from {ckpt} (iteration {stopped_at}" in log, log
    assert "finished:" in log

    ref, got = _weights(os.path.join(reference.run_dir, "model.h5")), _weights(os.path.join(job.run_dir, "model.h5"))
    assert sorted(ref) == sorted(got)
    for k in ref:
        assert ref[k].dtype == got[k].dtype and ref[k].shape == got[k].shape, k
        assert ref[k].tobytes() == got[k].tobytes(), f"{k} differs from the uninterrupted run"
    print(f"\npreempted job {job.id}: signal at {t_signal - t0:.1f} s (iteration {stopped_at}), requeued "
          f"{t_requeued - t_signal:.1f} s later, completed {t_done - t0:.1f} s after sbatch; "
          f"weights bit-identical to job {reference.id} ({len(ref)} datasets)")


def test_srun_without_slurm_pmi_is_caught_by_the_launcher_check(cluster):
    # pip MPICH cannot reach this Slurm's PMI (MpiDefault=none): srun starts RANKS one-rank worlds
    job = Job(cluster, "radmm_cpu.sbatch", TINY, env={"LAUNCHER": "srun"}, tag="srun")
    info = job.wait({"FAILED"}, timeout=90)
    assert info["ExitCode"].startswith("2:") and info["Restarts"] == "0", info
    log = job.log
    errors = [ln for ln in log.splitlines() if ln.startswith("radmm-hpc: error:")]
    assert len(errors) == 1, log                                   # one line, from task 0
    assert f"srun started {RANKS} tasks" in errors[0] and f"mpirun -n {RANKS}" in errors[0], log
    assert "docs/slurm.md" in errors[0]


class WrapJob(Job):
    """`sbatch --wrap CMD` (no job script): the application launched by hand inside a job."""

    def __init__(self, cluster: MiniSlurm, command: str, sbatch_opts: tuple, tag: str):
        self.cluster, self.tag = cluster, tag
        self.work = os.path.join(cluster.root, "work", tag)
        os.makedirs(self.work, exist_ok=True)
        venv = _venv()
        python = os.path.join(venv, "bin", "python") if venv else sys.executable
        env = {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
        self.id = cluster.sbatch([f"--job-name={tag}", "--output=slurm-%x-%j.out", *sbatch_opts,
                                  "--wrap", command.replace("PYTHON", python)], cwd=self.work, env=env)
        self.run_dir = os.path.join(self.work, "run")
        self.t0 = time.monotonic()


def test_one_process_in_a_larger_allocation_is_told_what_to_run(cluster):
    job = WrapJob(cluster, "PYTHON -m radmm_hpc " + " ".join(TINY) + " --run-dir run", ("--ntasks=2",), "alone")
    info = job.wait({"FAILED"}, timeout=60)
    assert info["ExitCode"].startswith("2:"), info
    errors = [ln for ln in job.log.splitlines() if ln.startswith("radmm-hpc: error:")]
    assert len(errors) == 1 and "SLURM_NTASKS = 2" in errors[0], job.log
    assert "mpirun -n 2" in errors[0] and "--set train.world_size=1" in errors[0], errors


def test_threads_from_cpus_per_task_and_startup_line(cluster):
    # srun -c 3 with no OMP_NUM_THREADS: the rank takes the task's 3 CPUs (before: the process's
    # cores divided among the node's ranks, 2 on this machine), and says so at start-up
    cmd = ("env -u OMP_NUM_THREADS srun PYTHON -m radmm_hpc --algo backprop --data synthetic-regression "
           "--set model.width=8 --set model.depth=3 --set train.compare=false --iters 3 --run-dir run")
    job = WrapJob(cluster, cmd, ("--ntasks=1", "--cpus-per-task=3"), "threads")
    info = job.wait(timeout=60)
    assert info["ExitCode"] == "0:0", (info, job.log)
    lines = [ln for ln in job.log.splitlines() if ln.startswith("radmm-hpc: rank 0/1 on ")]
    assert len(lines) == 1 and lines[0].endswith("device cpu, 3 threads"), job.log
    with open(os.path.join(job.run_dir, "run.json")) as fh:
        meta = json.load(fh)
    assert meta["ranks"][0]["threads"] == 3 and meta["slurm"]["SLURM_JOB_ID"] == job.id
    assert meta["slurm"]["SLURM_CPUS_PER_TASK"] == "3"


def test_array_task_usr2_requeues_only_itself(cluster):
    """SIGUSR2 (submitit's preemption signal) to the task of a 2-task array whose job id is the
    array's id (Slurm gives the array's id to one of its tasks): that task checkpoints, requeues
    itself as <array id>_<task id> and resumes; the other task completes without a restart
    (`scontrol requeue $SLURM_JOB_ID` from that task names the whole array and restarts both)."""
    job = Job(cluster, "radmm_cpu.sbatch", TINY, tag="array", sbatch_opts=("--array=0-1",))
    tasks = [f"{job.id}_0", f"{job.id}_1"]
    running = {t: cluster.wait_for(t, {"RUNNING"}, timeout=90) for t in tasks}
    target = next(t for t in tasks if running[t]["JobId"] == running[t]["ArrayJobId"])
    other = next(t for t in tasks if t != target)
    run = os.path.join(job.work, "runs", f"slurm-{target}")
    deadline = time.monotonic() + 90
    while not os.path.exists(os.path.join(run, "latest")):
        assert time.monotonic() < deadline, f"no checkpoint of {target} after 90 s: {cluster.job(target)}"
        time.sleep(0.1)
    cluster.cmd("scancel", "--signal=USR2", "--batch", target)
    t_requeued = [None]

    def no_begin_delay(info):
        if int(info.get("Restarts", "0")) >= 1 and t_requeued[0] is None:
            t_requeued[0] = time.monotonic()
        if (info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime" and t_requeued[0]
                and time.monotonic() - t_requeued[0] > 2.0):
            cluster.cmd("scontrol", "update", f"JobId={target}", "StartTime=now", check=False)
    final = cluster.wait_for(target, {"COMPLETED"}, timeout=180, on_poll=no_begin_delay)
    final_other = cluster.wait_for(other, {"COMPLETED"}, timeout=120)
    log = open(os.path.join(job.work, f"slurm-array-{running[target]['JobId']}.out"), errors="replace").read()
    assert final["Restarts"] == "1" and final["ExitCode"] == "0:0", (final, log)
    assert final_other["Restarts"] == "0" and final_other["ExitCode"] == "0:0", final_other
    assert "received SIGUSR2" in log and f"scontrol requeue {target}" in log, log
    assert "resumed from" in log and "finished:" in log, log
    assert os.path.isfile(os.path.join(job.work, "runs", f"slurm-{other}", "model.h5"))


def test_scancel_checkpoints_and_is_not_requeued(cluster):
    # SIGTERM (scancel) reaches every process of the job: the ranks checkpoint and exit 3, and the
    # script must not requeue (that would undo the cancel)
    job = Job(cluster, "radmm_cpu.sbatch", TINY, tag="cancelled")
    job.wait({"RUNNING"}, timeout=60)
    latest = os.path.join(job.run_dir, "latest")
    deadline = time.monotonic() + 60
    while not os.path.exists(latest):
        assert time.monotonic() < deadline, f"no checkpoint after 60 s\n{job.log}"
        time.sleep(0.1)
    cluster.cmd("scancel", job.id)
    deadline = time.monotonic() + 45      # within KillWait (30 s), then the batch shell's last line
    while "not requeueing" not in job.log:
        assert time.monotonic() < deadline, f"no 'not requeueing' line after 45 s\n{job.log}"
        time.sleep(0.2)
    m = re.search(r"stopped by a signal at iteration (\d+); checkpoint (\S+) written", job.log)
    assert m, job.log
    info = job.wait({"CANCELLED"}, timeout=30)
    time.sleep(2)
    info = cluster.job(job.id)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", info
    assert "scontrol requeue" not in job.log


# the other methods' scripts, each with a tiny run on CPU ranks (a GPU script's --device cuda is
# overridden by the --device cpu given after the script name, as a user could do)
SMALL_NET = ["--data", "synthetic-regression", "--set", "model.width=8", "--set", "model.depth=3"]
OTHER_SCRIPTS = {   # script: (algo, arguments)
    "mac_cpu.sbatch": ("mac", SMALL_NET + ["--iters", "6"]),
    "asgd_gpu.sbatch": ("asgd", ["--device", "cpu", *SMALL_NET, "--iters", "4"]),
    "trgl_gpu.sbatch": ("trgl", ["--device", "cpu", "--model", "resnet8", "--data", "digits",
                                 "--set", "model.base_width=4", "--set", "data.train_subset=128", "--iters", "20"]),
    "backprop.sbatch": ("backprop", SMALL_NET + ["--iters", "20"]),
}


@pytest.mark.parametrize("script", sorted(OTHER_SCRIPTS))
def test_every_method_script_runs_to_completion(cluster, script):
    algo, args = OTHER_SCRIPTS[script]
    job = Job(cluster, script, args + ["--set", "train.compare=false"], tag=script.split(".")[0],
              sbatch_opts=_cpu_opts(script))
    info = job.wait(timeout=120)
    assert info["ExitCode"] == "0:0" and info["Restarts"] == "0", (info, job.log)
    assert "finished:" in job.log and f"train.world_size={RANKS}" in job.log, job.log
    with open(os.path.join(job.run_dir, "summary.json")) as fh:
        summary = json.load(fh)
    assert summary["world_size"] == RANKS and summary["algo"] == algo, summary
    assert os.path.getsize(os.path.join(job.run_dir, "model.h5")) > 0
