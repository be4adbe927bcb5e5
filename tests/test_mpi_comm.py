"""The comm layer under MPI: packed neighbour exchange, byte counters, reductions, gathers."""

import numpy as np
import pytest
import torch

from conftest import mpi_all


@pytest.mark.mpi(min_size=2)
def test_ring_exchange_packs_one_message_per_neighbour():
    from mpi4py import MPI
    from radmm_hpc.comm import Comm
    comm = Comm(MPI.COMM_WORLD)
    r, p = comm.rank, comm.size
    right, left = (r + 1) % p, (r - 1) % p
    a = torch.full((3, 4), float(r), dtype=torch.float64)
    b = torch.arange(5, dtype=torch.float64) + 10 * r
    got_a, got_b = torch.zeros(3, 4, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    if p == 2:   # the same peer on both sides: one message each way
        comm.exchange({right: [a, b]}, {left: [got_a, got_b]})
    else:
        comm.exchange({right: [a, b]}, {left: [got_a, got_b]})
    ok = torch.all(got_a == left) and torch.equal(got_b, torch.arange(5, dtype=torch.float64) + 10 * left)
    ok = ok and comm.p2p_sent == 17 * 8 and comm.p2p_recv == 17 * 8
    assert mpi_all(bool(ok))


@pytest.mark.mpi(min_size=2)
def test_reductions_and_gather():
    from mpi4py import MPI
    from radmm_hpc.comm import Comm
    comm = Comm(MPI.COMM_WORLD)
    r, p = comm.rank, comm.size
    s = comm.reduce_scalars({"x": r, "y": 1.0})
    m = comm.reduce_scalars({"x": r}, "max")
    t = torch.full((4,), float(r + 1))
    comm.allreduce_(t)
    ok = s == {"x": p * (p - 1) / 2, "y": float(p)} and m["x"] == p - 1
    ok = ok and torch.all(t == p * (p + 1) / 2) and comm.agree_flag(int(r == p - 1)) == 1
    got = comm.gather_arrays({"w": np.full((2, r + 1), r, dtype=np.float32)})
    if r == 0:
        ok = ok and all(g["w"].shape == (2, q + 1) and np.all(g["w"] == q) for q, g in enumerate(got))
    else:
        ok = ok and got is None
    assert mpi_all(bool(ok))
