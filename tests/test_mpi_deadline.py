"""The comm layer's deadline (comm.timeout_s): a wait for a peer that never comes ends in
CommTimeout instead of a hang, for point-to-point messages and for the pickled control-plane
collectives (which now run on nonblocking buffer collectives: checked for correctness here too)."""

import time

import numpy as np
import pytest
import torch

from tests.support import mpi_all, world


@pytest.mark.mpi(min_size=2)
def test_control_plane_objects_round_trip():
    from radmm_hpc.comm import Comm
    comm = Comm(world())
    r, P = comm.rank, comm.size
    ok = True
    for size in (10, 3000):     # in one slot, and (rank 1 and up) larger than it
        obj = {"rank": r, "blob": "x" * (r * size), "arr": np.arange(r + 1)}   # sizes differ per rank
        every = comm.allgather_obj(obj)
        at_root = comm.gather_obj(obj, root=P - 1)
        sent = {"from": 1, "data": list(range(size))}
        b = comm.bcast_obj(sent if r == 1 else None, root=1)
        ok &= [e["rank"] for e in every] == list(range(P)) and all(
            len(e["blob"]) == size * e["rank"] and len(e["arr"]) == e["rank"] + 1 for e in every)
        ok &= (at_root is None) if r != P - 1 else (
            [e["rank"] for e in at_root] == list(range(P))
            and all(len(e["blob"]) == size * e["rank"] for e in at_root))
        ok &= b == sent
    assert mpi_all(ok)


@pytest.mark.mpi(min_size=2)
def test_missing_message_ends_in_comm_timeout():
    from radmm_hpc.comm import Comm, CommTimeout
    w = world()
    comm = Comm(w.Dup(), timeout_s=1.0)
    ok, elapsed = True, 0.0
    if comm.rank == 0:
        t0 = time.perf_counter()
        with pytest.raises(CommTimeout, match=r"no progress for 1 s waiting for a message"):
            comm.recv([torch.zeros(4)], 1, tag=77)
        elapsed = time.perf_counter() - t0
        ok = 1.0 <= elapsed < 10.0
    w.Barrier()
    if comm.rank == 1:       # the late message completes the abandoned receive
        comm.send([torch.ones(4)], 0, tag=77)
    w.Barrier()
    assert mpi_all(ok), elapsed


@pytest.mark.mpi(min_size=2)
def test_missing_rank_in_a_collective_ends_in_comm_timeout():
    from radmm_hpc.comm import Comm, CommTimeout
    w = world()
    dup = w.Dup()
    comm = Comm(dup, timeout_s=1.0)
    ok = True
    if comm.rank != 0:       # rank 0 is late: everyone else gives up after the deadline
        with pytest.raises(CommTimeout, match="waiting for an allgather"):
            comm.allgather_obj({"r": comm.rank})
    w.Barrier()
    if comm.rank == 0:       # join the collective the others gave up on, so the job stays clean
        comm.allgather_obj({"r": 0})   # (small objects: one round, already posted by the others)
    w.Barrier()
    assert mpi_all(ok)


def test_timeout_setting_is_validated_and_free_on_resume():
    from radmm_hpc.checkpoint import _config_diff
    from radmm_hpc.config import Config, set_value, validate
    from radmm_hpc.errors import ConfigError
    cfg = Config()
    assert cfg.comm.timeout_s == 600.0
    set_value(cfg, "comm.timeout_s", "0", "--set")
    with pytest.raises(ConfigError, match="comm.timeout_s must be > 0"):
        validate(cfg)
    a, b = Config().to_dict(), Config().to_dict()
    b["comm"]["timeout_s"] = 30.0
    assert _config_diff(a, b) is None
    del a["comm"]                # a checkpoint from before the setting existed
    assert _config_diff(a, b) is None
