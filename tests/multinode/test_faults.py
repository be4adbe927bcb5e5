"""Faults across the test nodes (netns.py): a node dies, a node is cut off.

  node loss   SIGKILL every process of one node mid-run: the whole job ends within 60 s with a
              non-zero status, the newest checkpoint verifies, and `--resume auto` on the
              surviving nodes with fewer ranks finishes the run (elastic resume).
  partition   one node's link goes down, its processes alive: no rank waits forever; the comm
              deadline (comm.timeout_s) ends every rank that can still act with one line and a
              non-zero status, and the newest checkpoint verifies.
"""

import time

import numpy as np
import pytest
from helpers import (
    ROOT,
    TINY,
    cli_argv,
    metrics,
    rel_err,
    run_here,
    run_nodes,
    summary,
    weights,
)

from tests.support.launch import message_lines

pytestmark = pytest.mark.timeout(900)


def _start_until_checkpoints(cluster, per_node, run_dir, args, count=2, timeout=180, env=None):
    """Start a job too long to finish and return it once `count` checkpoints are complete."""
    from radmm_hpc.checkpoint import list_checkpoints
    proc = cluster.start(per_node, cli_argv(run_dir, args), cwd=ROOT, env={"PYTHONPATH": ROOT, **(env or {})})
    deadline = time.monotonic() + timeout
    while len(list_checkpoints(run_dir)) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            cluster.kill_jobs()
            out, err = proc.communicate()
            pytest.fail(f"no {count} checkpoints (status {proc.returncode}):\n{err[-3000:]}")
        time.sleep(0.1)
    return proc


def _wait_end(cluster, proc, limit):
    """Seconds until mpiexec returns (killing everything and failing past `limit`)."""
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=limit)
    except Exception:   # noqa: BLE001 - TimeoutExpired: the job outlived the limit
        cluster.kill_jobs()
        out, err = proc.communicate()
        pytest.fail(f"the job was still running {limit} s after the fault:\n{err[-3000:]}")
    return time.monotonic() - t0, out, err


def _newest_verifies(run_dir):
    from radmm_hpc.checkpoint import list_checkpoints, verify
    newest = list_checkpoints(run_dir)[0]
    return verify(newest)


ALGOS = {
    "radmm": TINY + ["--set", "model.depth=8"],      # the default: anchored, pipeline schedule
    "backprop": TINY + ["--algo", "backprop", "--set", "backprop.batch_size=24",
                        "--set", "backprop.lr=0.01"],
}


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_node_loss_ends_job_and_survivors_resume_elastically(cluster, tmp_path, algo):
    run_dir = str(tmp_path / "run")
    args = ALGOS[algo] + ["--set", "train.log_every=20", "--checkpoint-every", "20"]
    proc = _start_until_checkpoints(cluster, [2, 1, 1], run_dir, args + ["--iters", "100000000"])
    killed = cluster.kill_node(2)
    assert killed
    seconds, _, err = _wait_end(cluster, proc, 60)
    assert proc.returncode != 0, err[-2000:]
    assert all(not cluster.pids(i) for i in range(cluster.n)), "a process outlived the job"
    m = _newest_verifies(run_dir)
    assert m["world_size"] == 4
    print(f"{algo}: node 2 killed; job ended in {seconds:.1f} s with status {proc.returncode}; "
          f"newest checkpoint: iteration {m['iteration']}")
    # elastic resume on the two surviving nodes, 3 ranks instead of 4
    target = m["iteration"] + 20
    out = run_nodes(cluster, [2, 1, 0], run_dir, args + ["--iters", str(target), "--resume", "auto"]).stdout
    assert f"(iteration {m['iteration']}, 4 -> 3 ranks)" in out, out[-2000:]
    s = summary(run_dir)
    assert s["iters"] == target and s["world_size"] == 3 and np.isfinite(s["train_loss"])
    assert [r["iter"] for r in metrics(run_dir)] == list(range(20, target + 1, 20))
    if algo == "backprop":
        # data-parallel: the same trajectory as one process that never failed (up to summation order)
        run_here(1, str(tmp_path / "one"), args + ["--iters", str(target)])
        assert rel_err(weights(run_dir), weights(tmp_path / "one")) < 1e-9


def test_partition_ends_every_rank_by_the_comm_deadline(cluster, tmp_path):
    """Node 2's link goes down with its rank alive. Every rank, on either side of the cut, stops
    waiting after comm.timeout_s: the reachable ones print one line each and the job ends with
    status 5; node 2's rank ends too (its line cannot reach mpiexec; hydra's proxy there, which
    cannot reach it either, is left for the link's return)."""
    from radmm_hpc.errors import EXIT_COMM
    run_dir = str(tmp_path / "run")
    timeout_s = 10
    args = ALGOS["radmm"] + ["--set", "train.log_every=20", "--checkpoint-every", "20",
                             "--set", f"comm.timeout_s={timeout_s}", "--iters", "100000000"]
    proc = _start_until_checkpoints(cluster, [1, 1, 1], run_dir, args)
    assert cluster.ranks(2)
    cluster.set_link(2, False)
    t0 = time.monotonic()
    try:
        seconds, _, err = _wait_end(cluster, proc, timeout_s + 50)
        while cluster.ranks(2) and time.monotonic() - t0 < timeout_s + 50:
            time.sleep(0.2)
        cut_off = time.monotonic() - t0
        assert not cluster.ranks(2), "the cut-off node's rank still waits"
    finally:
        cluster.set_link(2, True)
    assert proc.returncode == EXIT_COMM, err[-3000:]
    lines = [line for line in message_lines(err) if line.startswith("radmm-hpc:")]   # ours, not MPI's
    assert lines and "Traceback" not in err, err[-3000:]
    assert all(f"no progress for {timeout_s} s waiting for" in line and "(comm.timeout_s)" in line
               for line in lines), lines
    assert timeout_s <= seconds < timeout_s + 30 and cut_off < timeout_s + 30
    m = _newest_verifies(run_dir)
    print(f"partition: job ended {seconds:.1f} s after the cut (status {proc.returncode}), the cut-off "
          f"rank after {cut_off:.1f} s; {len(lines)} line(s): {lines[0]}; newest checkpoint: "
          f"iteration {m['iteration']}")
