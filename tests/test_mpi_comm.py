"""The comm layer under MPI: packed neighbour exchange (several peers, tags, dtypes), reusable
buffers and byte counters, reductions, gathers, the pipeline slots, the protocol messages and
their deadline."""

import numpy as np
import pytest
import torch

from tests.support import mpi_all, world


def _comm():
    from radmm_hpc.comm import Comm
    return Comm(world())


@pytest.mark.mpi(min_size=2)
def test_ring_exchange_packs_one_message_per_neighbour():
    comm = _comm()
    r, p = comm.rank, comm.size
    right, left = (r + 1) % p, (r - 1) % p
    a = torch.full((3, 4), float(r), dtype=torch.float64)
    b = torch.arange(5, dtype=torch.float64) + 10 * r
    got_a, got_b = torch.zeros(3, 4, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    comm.exchange({right: [a, b]}, {left: [got_a, got_b]})
    ok = torch.all(got_a == left) and torch.equal(got_b, torch.arange(5, dtype=torch.float64) + 10 * left)
    ok = ok and comm.p2p_sent == 17 * 8 and comm.p2p_recv == 17 * 8
    assert mpi_all(bool(ok))


@pytest.mark.mpi(min_size=2)
def test_exchange_both_ways_with_dtypes_and_reused_buffers():
    """A line of ranks: each sends an int64 message left and a float32 one right (non-contiguous
    sources); the host buffers are allocated once and reused on the next round."""
    comm = _comm()
    r, p = comm.rank, comm.size
    left, right = r - 1, r + 1
    for rnd in range(3):
        ints = torch.arange(6, dtype=torch.int64) * (r + 1) + rnd
        flts = (torch.arange(8, dtype=torch.float32).view(2, 4) + 100 * r + rnd).T   # 4×2 view
        got_i, got_f = torch.zeros(6, dtype=torch.int64), torch.zeros(4, 2, dtype=torch.float32)
        sends = {**({left: [ints]} if r > 0 else {}), **({right: [flts]} if r < p - 1 else {})}
        recvs = {**({right: [got_i]} if r < p - 1 else {}), **({left: [got_f]} if r > 0 else {})}
        comm.exchange(sends, recvs, tag=5 + rnd % 2)
        ok = True
        if r < p - 1:
            ok = ok and torch.equal(got_i, torch.arange(6, dtype=torch.int64) * (right + 1) + rnd)
        if r > 0:
            want = (torch.arange(8, dtype=torch.float32).view(2, 4) + 100 * left + rnd).T
            ok = ok and torch.equal(got_f, want)
        if rnd == 1:
            held = comm.buffer_bytes()     # both tags' buffers exist now
        assert mpi_all(bool(ok)), rnd
    # per neighbour and tag: one send and one receive buffer, 6 int64 + 8 float32 = 80 bytes
    want_bytes = 2 * 80 * (int(r > 0) + int(r < p - 1))
    assert mpi_all(comm.buffer_bytes() == held == want_bytes), (comm.buffer_bytes(), held, want_bytes)
    sent = 3 * ((6 * 8 if r > 0 else 0) + (8 * 4 if r < p - 1 else 0))
    assert mpi_all(comm.p2p_sent == sent and comm.coll_bytes == 0)


@pytest.mark.mpi(min_size=2)
def test_reductions_and_gather():
    comm = _comm()
    r, p = comm.rank, comm.size
    s = comm.reduce_scalars({"x": r, "y": 1.0})
    m = comm.reduce_scalars({"x": r}, "max")
    lo = comm.reduce_scalars({"x": r}, "min")
    t = torch.full((4,), float(r + 1))
    comm.allreduce_(t)
    nc = torch.arange(6, dtype=torch.float64).view(2, 3).T * (r + 1)     # non-contiguous: staged
    comm.allreduce_(nc, "max")
    ok = s == {"x": p * (p - 1) / 2, "y": float(p)} and m["x"] == p - 1 and lo["x"] == 0
    ok = ok and torch.all(t == p * (p + 1) / 2) and comm.agree_flag(int(r == p - 1)) == 1
    ok = ok and torch.equal(nc, torch.arange(6, dtype=torch.float64).view(2, 3).T * p)
    ok = ok and comm.coll_bytes == 4 * 4 + 6 * 8 and comm.p2p_sent == 0   # tensors only, not scalars
    got = comm.gather_arrays({"w": np.full((2, r + 1), r, dtype=np.float32), "b": np.arange(r + 1)})
    if r == 0:
        ok = ok and all(g["w"].shape == (2, q + 1) and np.all(g["w"] == q) and np.array_equal(g["b"], np.arange(q + 1))
                        for q, g in enumerate(got))
    else:
        ok = ok and got is None
    assert mpi_all(bool(ok))


@pytest.mark.mpi(min_size=2)
def test_pipeline_slots_keep_messages_apart():
    """post_send on two slots before the receiver posts: each message arrives intact, in order."""
    comm = _comm()
    r = comm.rank
    ok = True
    if r == 0:
        reqs = [comm.post_send([torch.full((3,), float(k)), torch.tensor([k * 10.0])], 1, tag=9, slot=k)
                for k in range(2)]
        comm.wait_all(reqs)
    elif r == 1:
        for k in range(2):
            req, buf = comm.post_recv(4, torch.float32, 0, tag=9, slot=k)
            comm.wait_all([req])
            ok = ok and buf.tolist() == [float(k)] * 3 + [k * 10.0]
    assert mpi_all(bool(ok))


@pytest.mark.mpi(min_size=2)
def test_protocol_messages_and_deadline():
    """Tagged byte messages on a duplicated communicator: the tag comes back with the message; a
    receive nobody answers ends in a TimeoutError naming what it waited for, not a hang."""
    comm = _comm().dup()
    r = comm.rank
    buf = np.zeros(16, dtype=np.uint8)
    ok = True
    if r == 1:
        comm.wait_msgs([comm.isend_msg(np.full(16, 7, dtype=np.uint8), 0, 42)], 30, "rank 0", some=False)
    elif r == 0:
        done = comm.wait_msgs([comm.irecv_msg(buf, 1)], 30, "rank 1")
        ok = done == [(0, 42)] and np.all(buf == 7) and comm.p2p_recv == 16
        reqs = [comm.irecv_msg(buf, 1, 43)]
        try:
            comm.wait_msgs(reqs, 0.2, "a message that never comes")
            ok = False
        except TimeoutError as exc:
            ok = ok and "a message that never comes" in str(exc) and reqs[0] is not None
    comm.barrier()
    if r == 1:      # now complete the receive that timed out, so that nothing is left pending
        comm.wait_msgs([comm.isend_msg(np.zeros(16, dtype=np.uint8), 0, 43)], 30, "rank 0", some=False)
    elif r == 0:
        ok = ok and comm.wait_msgs(reqs, 30, "the late message") == [(0, 43)]
    comm.free()
    assert mpi_all(bool(ok))
