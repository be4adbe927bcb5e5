"""The anchored RADMM variant across MPI ranks: the pipeline schedule computes exactly what one
rank computes, its bytes per iteration follow the formula, and checkpoints resume bit-identically,
also on another number of ranks."""

import os

import pytest
import torch

from tests.support import make_trainer as make
from tests.support import mpi_all, on_root, runtime, world
from tests.support.checkpoints import metrics_iters, same_weights, weights
from tests.support.configs import anchored_cfg, tiny_cfg

REJECTS = dict(gamma=0.01, beta=0.01, trust=0.0)        # steps too long at first: rejections happen
ANCHORED = dict(radmm__variant="anchored", **{f"radmm__{k}": v for k, v in REJECTS.items()})


def _depth(P):
    return 2 * P + 1          # regions of unequal size: 5, 7, 9, 17 hidden layers for P = 2, 3, 4, 8


@pytest.mark.mpi(min_size=2)
def test_pipeline_equals_serial_bit_for_bit():
    """Same radmm.microbatches: every weight, the accept/reject sequence and the chosen iterate
    are identical (float64, torch.equal) on P ranks and on one."""
    comm = world()
    P = comm.Get_size()
    kw = dict(depth=_depth(P), width=8, subset=300, microbatches=3, **REJECTS)
    par = make(anchored_cfg(**dict(kw, schedule="pipeline")), comm)
    ser = make(anchored_cfg(**kw))
    for it in range(8):
        par.step(it)
        ser.step(it)
    ok = (par.accepted, par.rejected, par.scale, par.F_prev) == (ser.accepted, ser.rejected, ser.scale, ser.F_prev)
    ok = ok and par.rejected >= 1
    for l in par.groups:
        ok = ok and torch.equal(par.layers[l - 1].w, ser.layers[l - 1].w)
        ok = ok and torch.equal(par.best_W[l], ser.best_W[l])
    assert mpi_all(ok)


@pytest.mark.mpi(min_size=2)
def test_pipeline_bytes_per_iteration_exact():
    """Rank r sends per iteration: its region output forward, d·(N_fit + N_val) values (r < P−1);
    the control message backward, 5 float64 (r > 0); and after an accepted anchor the multiplier
    of its input boundary backward, d·N_fit values (r > 0). Nothing else."""
    comm = world()
    P, r = comm.Get_size(), comm.Get_rank()
    d, b = 8, 8
    tr = make(anchored_cfg(depth=_depth(P), width=d, subset=300, schedule="pipeline", **REJECTS), comm)
    before, iters = tr.comm.p2p_sent, 6
    for it in range(iters):
        tr.step(it)
    sent = tr.comm.p2p_sent - before
    want = iters * ((d * (tr.N + tr.n_val) * b if r < P - 1 else 0) + (5 * 8 if r > 0 else 0)) \
        + (tr.accepted * d * tr.N * b if r > 0 else 0)
    assert mpi_all(sent == want and tr.rejected >= 1), (sent, want, tr.accepted, tr.rejected)


def _train(cfg, comm, resume=None):
    from radmm_hpc.loop import train
    return train(cfg, runtime(comm), resume=resume)


@pytest.mark.mpi(min_size=2)
def test_resume_is_bit_identical(shared_dir):
    comm = world()
    a, b = os.path.join(shared_dir, "a"), os.path.join(shared_dir, "b")
    kw = dict(schedule="pipeline", depth=9, **ANCHORED)
    _train(tiny_cfg(a, iters=20, **kw), comm)
    _train(tiny_cfg(b, iters=10, every=5, **kw), comm)
    _train(tiny_cfg(b, iters=20, **kw), comm, resume="auto")
    ok = on_root(world(), lambda: same_weights(weights(a), weights(b))
                  and metrics_iters(a) == metrics_iters(b) == [5, 10, 15, 20])
    assert mpi_all(ok)


def _sub(comm, n):
    sub = comm.Split(0 if comm.Get_rank() < n else 1, comm.Get_rank())
    return sub if comm.Get_rank() < n else None


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("direction", ["grow", "shrink"])
def test_elastic_resume_continues_the_same_run(shared_dir, direction):
    """Saved on P−1 ranks and resumed on P (or the reverse): with the same radmm.microbatches the
    pipeline computes what one rank computes, so the resumed run ends with the weights of a run
    that never stopped, bit for bit."""
    comm = world()
    P = comm.Get_size()
    before, after = (P - 1, P) if direction == "grow" else (P, P - 1)
    run, straight = os.path.join(shared_dir, "e"), os.path.join(shared_dir, "straight")
    kw = dict(schedule="pipeline", depth=9, radmm__microbatches=4, **ANCHORED)
    sub = _sub(comm, before)
    if sub is not None:
        _train(tiny_cfg(run, iters=10, every=10, **kw), sub)
        _train(tiny_cfg(straight, iters=20, **kw), sub)
    comm.Barrier()
    sub = _sub(comm, after)
    if sub is not None:
        _train(tiny_cfg(run, iters=20, **kw), sub, resume="auto")
    comm.Barrier()
    ok = on_root(world(), lambda: same_weights(weights(run), weights(straight)))
    assert mpi_all(ok)
