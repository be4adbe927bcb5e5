"""One MPI job across several "nodes" (network namespaces, netns.py): transports, node-local
logic, and the methods' results compared with the same computation on this host alone.

Needs root; skips with the reason elsewhere. Run by scripts/run-tests.sh (a block of its own).
"""

import json
import os

import numpy as np
import pytest
from helpers import (
    TINY,
    identical,
    metrics,
    rel_err,
    run_here,
    run_nodes,
    summary,
    weights,
)

pytestmark = pytest.mark.timeout(900)


def _probe(cluster, per_node, what, env=None):
    from helpers import PY
    here = os.path.dirname(os.path.abspath(__file__))
    proc = cluster.run(per_node, [PY, os.path.join(here, "probe.py"), what], timeout=120,
                       env={"PYTHONPATH": os.path.dirname(os.path.dirname(here)), **(env or {})})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(out[-1]), proc.stdout + proc.stderr


def test_cluster_is_isolated(cluster):
    """Distinct hostnames, one interface each besides loopback, nothing routed out."""
    for i in range(cluster.n):
        names = set(cluster.iface_bytes(i))
        assert names == {"lo", "eth0"}, names
        routes = cluster.routes(i)
        assert routes == [f"{cluster.subnet}.0/24 dev eth0 proto kernel scope link src {cluster.addr[i]}"], routes


def test_other_nodes_over_tcp_same_node_through_shared_memory(cluster):
    """32 MiB from rank 0 to rank 1 (same node) moves no bytes on any interface; to rank 2
    (another node) the same 32 MiB leave node 0's eth0 and arrive on node 1's. With UCX (the pip
    MPICH's network module) the library's own report says the same: tcp/eth0 between nodes,
    shared-memory transports (sysv, cma, posix) within one."""
    from mpi4py import MPI
    out, log = _probe(cluster, [2, 2, 0], "transport", env={"UCX_LOG_LEVEL": "info"})
    size = out["size"]
    same, other = out["phases"]["same_node"], out["phases"]["other_node"]
    assert [r["host"] for r in same] == ["node0", "node0", "node1", "node1"]
    # ranks 0 and 1 share node 0's counters; ranks 2 and 3 share node 1's
    for r in same:
        for iface, (rx, tx) in r["bytes"].items():
            assert rx < size // 16 and tx < size // 16, (iface, rx, tx)   # barriers only
    assert other[0]["bytes"]["eth0"][1] >= size and other[2]["bytes"]["eth0"][0] >= size, other
    assert other[0]["bytes"]["lo"][1] < size // 16
    if "ucx" in MPI.Get_library_version().lower():
        lines = [l for l in log.splitlines() if "ucp_context" in l and "-node cfg" in l]
        inter = [l for l in lines if "inter-node" in l]
        intra = [l for l in lines if "intra-node" in l]
        assert inter and intra, log[-3000:]
        assert all("tcp/eth0" in l for l in inter), inter
        assert all("tcp" not in l and ("sysv" in l or "cma" in l or "posix" in l) for l in intra), intra


def test_node_local_logic_per_node(cluster):
    """Local rank and size from the node communicator, threads = the node's cores shared among
    its ranks, device = local rank modulo the node's GPUs: checked on each node separately."""
    per_node = [1, 2, 3]
    out, _ = _probe(cluster, per_node, "local", env={"OMP_NUM_THREADS": None})
    ranks = out["ranks"]
    assert [r["rank"] for r in ranks] == list(range(6))
    first = 0
    for node, k in enumerate(per_node):
        mine = ranks[first:first + k]
        first += k
        assert {r["host"] for r in mine} == {f"node{node}"}
        assert {r["processor"] for r in mine} == {f"node{node}"}
        assert [r["local_rank"] for r in mine] == list(range(k))
        assert all(r["local_size"] == k for r in mine)
        want = max(1, mine[0]["cores"] // k)
        assert all(r["threads"] == want and r["torch_threads"] == want for r in mine), mine
        assert [r["device"] for r in mine] == [f"cuda:{j % 2}" for j in range(k)]


def test_main_job_reduced(cluster, tmp_path):
    """The main job (RADMM, anchored pipeline, wine, final table) at reduced size on 2 + 2 ranks of two
    nodes: the same network as the job on this host alone, bit for bit."""
    args = ["--iters", "8", "--set", "model.depth=8"]
    proc = run_nodes(cluster, [2, 2, 0], str(tmp_path / "nodes"), args)
    assert "backprop_adam_same_wall_clock" in proc.stdout and "radmm" in proc.stdout
    s = summary(tmp_path / "nodes")
    assert s["world_size"] == 4 and s["iters"] == 8 and np.isfinite(s["test_r2"])
    run_here(4, str(tmp_path / "here"), args + ["--set", "train.compare=false"])
    assert identical(weights(tmp_path / "nodes"), weights(tmp_path / "here"))


def test_two_colour_across_nodes_equals_serial_redblack(cluster, tmp_path):
    args = TINY + ["--iters", "6", "--set", "model.depth=7", "--set", "radmm.keep_best=false"]
    args = args + ["--set", "radmm.variant=proximal"]
    run_nodes(cluster, [1, 1, 1], str(tmp_path / "tc"), args + ["--set", "radmm.schedule=two-colour"])
    run_here(1, str(tmp_path / "rb"), args + ["--set", "radmm.schedule=serial-redblack",
                                              "--set", "radmm.regions=3"])
    assert rel_err(weights(tmp_path / "tc"), weights(tmp_path / "rb")) <= 1e-10


def test_backprop_data_parallel_across_nodes_equals_one_process(cluster, tmp_path):
    args = TINY + ["--algo", "backprop", "--iters", "20", "--set", "backprop.batch_size=24",
                   "--set", "backprop.lr=0.01"]
    run_nodes(cluster, [2, 1, 0], str(tmp_path / "dp"), args)
    run_here(1, str(tmp_path / "one"), args)
    # the same trajectory up to the summation order of the gradient Allreduce
    assert rel_err(weights(tmp_path / "dp"), weights(tmp_path / "one")) < 1e-9
    losses = [m["train_loss"] for m in metrics(tmp_path / "dp")]
    assert len(losses) == 2 and losses[1] < losses[0]          # and it trains


def test_checkpoint_from_several_nodes_resumes_bit_exactly(cluster, tmp_path):
    """Ranks on three nodes write one checkpoint (each its shard); it verifies, and resuming it
    with the ranks placed on the nodes differently gives the uninterrupted run's weights."""
    from radmm_hpc.checkpoint import list_checkpoints, verify
    args = TINY + ["--set", "model.depth=8"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    run_nodes(cluster, [2, 1, 1], straight, args + ["--iters", "12"])
    run_nodes(cluster, [2, 1, 1], split, args + ["--iters", "6", "--checkpoint-every", "6"])
    ckpts = list_checkpoints(split)
    assert len(ckpts) == 1 and verify(ckpts[0])["world_size"] == 4
    run_nodes(cluster, [1, 1, 2], split, args + ["--iters", "12", "--resume", "auto"])
    assert summary(split)["iters"] == 12
    assert identical(weights(straight), weights(split))


def test_asgd_server_on_one_node_workers_on_others(cluster, tmp_path):
    """A-SGD, deterministic: rank 0 (the server) on node 0, one worker on each other node; the
    same iterates as the job on this host."""
    args = TINY + ["--algo", "asgd", "--iters", "3", "--set", "model.depth=3",
                   "--set", "asgd.updates_per_iter=6", "--set", "asgd.batch_size=8",
                   "--set", "ps.deterministic=true"]
    run_nodes(cluster, [1, 1, 1], str(tmp_path / "nodes"), args)
    run_here(3, str(tmp_path / "here"), args)
    a = weights(tmp_path / "nodes")
    assert identical(a, weights(tmp_path / "here"))
