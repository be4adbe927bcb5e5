"""Checkpoints under MPI (pytest-mpi): elastic resume on another number of ranks, a write failure
on one rank, damaged-shard fallback (bit-identical resume: test_checkpoint.py, on every rank count)."""

import os

import numpy as np
import pytest

from tests.support import mpi_all, on_root, runtime, world
from tests.support.checkpoints import flip, same_weights, weights
from tests.support.configs import tiny_cfg


def _train(cfg, comm, resume=None):
    from radmm_hpc.loop import train
    return train(cfg, runtime(comm), resume=resume)


def _on_root(fn):
    return on_root(world(), fn)


def _sub(comm, n):
    """A communicator of the first n ranks (None on the others)."""
    sub = comm.Split(0 if comm.Get_rank() < n else 1, comm.Get_rank())
    return sub if comm.Get_rank() < n else None


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo,schedule", [("radmm", "two-colour"), ("radmm", "jacobi"),
                                           ("backprop", "serial")])
@pytest.mark.parametrize("direction", ["grow", "shrink"])
def test_elastic_resume(shared_dir, algo, schedule, direction):
    """Save on P-1 ranks and resume on P (grow), or the reverse (shrink): the weights right after
    the resume are the saved ones, and training continues to a loss close to an unbroken run."""
    from radmm_hpc.algos import trainer_class
    from radmm_hpc.checkpoint import Checkpointer
    from radmm_hpc.data import load_dataset
    comm = world()
    P = comm.Get_size()
    before, after = (P - 1, P) if direction == "grow" else (P, P - 1)
    run = os.path.join(shared_dir, "e")
    kw = dict(algo=algo, schedule=schedule, depth=9)
    sub = _sub(comm, before)
    if sub is not None:
        _train(tiny_cfg(run, iters=10, every=10, **kw), sub)
        _train(tiny_cfg(os.path.join(shared_dir, "straight"), iters=20, **kw), sub)
    comm.Barrier()
    saved = _on_root(lambda: weights(run))
    sub = _sub(comm, after)
    ok = True
    if sub is not None:
        cfg = tiny_cfg(run, iters=20, **kw)
        rt = runtime(sub)
        tr = trainer_class(algo)(cfg, rt, load_dataset(cfg.data))
        loop = Checkpointer(cfg, rt, run, tr).resume("auto")
        w = tr.export_weights()
        if rt.is_root:
            got = [t.numpy() for t in w]
            got[0] = got[0][:, :-1]          # model.h5 keeps layer 1's bias column apart
            ok = loop["iteration"] == 10 and same_weights(got, saved)
        summary = _train(cfg, sub, resume="auto")
        if rt.is_root:
            import json
            ref = json.load(open(os.path.join(shared_dir, "straight", "summary.json")))
            ok = ok and summary["iters"] == 20 and np.isfinite(summary["train_loss"]) and \
                summary["train_loss"] <= 1.2 * ref["train_loss"]
    assert mpi_all(ok), (ok, locals().get("summary") and summary.get("train_loss"))


@pytest.mark.mpi(min_size=2)
def test_write_failure_on_one_rank_fails_every_rank_cleanly(shared_dir, monkeypatch):
    from radmm_hpc import checkpoint as ck
    from radmm_hpc.runtime import CollectiveError
    comm = world()
    run = os.path.join(shared_dir, "w")
    kw = dict(schedule="jacobi", depth=9)
    _train(tiny_cfg(run, iters=4, every=4, **kw), comm)
    if comm.Get_rank() == 1:
        monkeypatch.setattr(ck, "_write_bytes", lambda p, d: (_ for _ in ()).throw(
            OSError(28, "No space left on device")))
    msg = ""
    try:
        _train(tiny_cfg(run, iters=12, every=4, **kw), comm, resume="auto")
    except CollectiveError as exc:
        msg = str(exc)
    ok = "shard-00001.h5: No space left on device" in msg
    intact = _on_root(lambda: (sorted(n for n in os.listdir(run) if n.startswith("ckpt")) == ["ckpt-000004"]
                               and open(os.path.join(run, "latest")).read().strip() == "ckpt-000004"
                               and ck.verify(os.path.join(run, "ckpt-000004"))["iteration"] == 4))
    assert mpi_all(ok and intact), msg


@pytest.mark.mpi(min_size=2)
def test_damaged_shard_of_one_rank_falls_back_on_every_rank(shared_dir):
    from radmm_hpc.algos import trainer_class
    from radmm_hpc.checkpoint import Checkpointer
    from radmm_hpc.data import load_dataset
    comm = world()
    run = os.path.join(shared_dir, "d")
    kw = dict(schedule="two-colour", depth=9)
    _train(tiny_cfg(run, iters=8, every=4, **kw), comm)
    if comm.Get_rank() == 0:
        flip(os.path.join(run, "ckpt-000008", f"shard-{comm.Get_size() - 1:05d}.h5"), 1500, 2)
    comm.Barrier()
    cfg = tiny_cfg(run, iters=8, **kw)
    rt = runtime(comm)
    tr = trainer_class("radmm")(cfg, rt, load_dataset(cfg.data))
    loop = Checkpointer(cfg, rt, run, tr).resume("auto")
    assert mpi_all(loop["iteration"] == 4)
