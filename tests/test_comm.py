"""The comm layer in one process: the serial API, the polling wait and its deadline, pack/unpack,
the tag table."""

import time

import numpy as np
import pytest
import torch

from radmm_hpc.comm import TAG, Comm, _pack, _unpack


def test_serial_comm_is_the_identity():
    c = Comm(None)
    assert (c.rank, c.size) == (0, 1)
    assert c.reduce_scalars({"b": 2.0, "a": 1.0}, "max") == {"a": 1.0, "b": 2.0}
    t = torch.arange(4.0)
    assert c.allreduce_(t) is t and c.agree_flag(3) == 3
    assert c.bcast_obj("x") == "x" and c.allgather_obj(1) == [1] and c.gather_obj(1) == [1]
    arrays = {"w": np.ones(2)}
    assert c.gather_arrays(arrays) == [arrays]
    c.exchange({}, {})            # nothing to do
    c.barrier()
    c.wait_all([None])
    c.abort(2)                    # no MPI: nothing to abort
    assert c.bytes_sent == 0 and c.buffer_bytes() == 0 and c.dup().size == 1
    with pytest.raises(RuntimeError, match="one-process run"):
        c.exchange({1: [t]}, {})


def test_pack_and_unpack_are_inverse():
    a = torch.arange(6, dtype=torch.float64).view(2, 3).T        # not contiguous
    b = torch.tensor([7.0, 8.0], dtype=torch.float64)
    buf = _pack(torch.empty(8, dtype=torch.float64), [a, b])
    assert buf.tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0, 7.0, 8.0]
    x, y = torch.zeros(3, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    _unpack(buf, [x, y])
    assert torch.equal(x, a) and torch.equal(y, b)


def test_poll_counts_its_time_and_keeps_its_deadline():
    c = Comm(None)
    calls = []
    c._poll(lambda: calls.append(1) or len(calls) > 60)     # past the spins: sleeps too
    assert len(calls) == 61 and c.wait_s > 0
    before = c.wait_s
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError, match="^nobody answered$"):
        c._poll(lambda: False, timeout_s=0.05, message="nobody answered")
    assert 0.05 <= time.perf_counter() - t0 < 5 and c.wait_s == before   # a failed wait is not counted


def test_every_tag_is_distinct():
    values = []
    for name, v in vars(TAG).items():
        if not name.startswith("_"):
            values += list(v) if isinstance(v, tuple) else [v]
    assert len(values) == len(set(values)) and max(v for v in values if v != TAG.GATHER) < TAG.GATHER
