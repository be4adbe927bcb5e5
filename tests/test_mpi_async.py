"""The async modes under MPI (pytest-mpi): protocol start-up/shutdown cycles, replay equality of
deterministic runs, N + resume + N == 2N, DAP-SVRG against DAP-SGD."""

import os

import numpy as np
import pytest

from tests.support import mpi_all, runtime, world
from tests.support.configs import tiny_cfg


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("deterministic,policy,jitter", [(False, "none", 0.0), (True, "drop", 0.0),
                                                        (False, "ssp", 0.0005)])
def test_start_stop_cycles_never_hang(deterministic, policy, jitter):
    from radmm_hpc.comm import Comm
    from tests.support.ps_selftest import start_stop_cycles
    assert mpi_all(start_stop_cycles(Comm(world()), 20, deterministic, policy, jitter))


def _dap_cfg(run_dir, algo="dapsvrg", iters=3, **extra):
    cfg = tiny_cfg(run_dir, algo=algo, iters=iters, **extra)
    cfg.data.name = "wine-red"
    cfg.dap.inner, cfg.dap.batch_size, cfg.dap.reference = 12, 4, False
    cfg.ps.deterministic = True
    return cfg


def _asgd_cfg(run_dir, iters=3, **extra):
    cfg = tiny_cfg(run_dir, algo="asgd", iters=iters, depth=3, **extra)
    cfg.asgd.updates_per_iter, cfg.asgd.n_sync, cfg.asgd.batch_size = 5, 2, 8
    cfg.ps.deterministic, cfg.ps.staleness, cfg.ps.bound = True, "scale", 1
    return cfg


def _replay(tr, cfg, ds, P, trace):
    """Rank 0: replay a trace in this process with fresh numerics; equal to the MPI run?"""
    from radmm_hpc.algos.ps import protocol as ps
    from radmm_hpc.algos.ps.asgd import AsgdServer, AsgdWorker, _flat
    from radmm_hpc.algos.ps.dap import DapServer, DapWorker
    if cfg.train.algo == "asgd":
        import torch

        from radmm_hpc.models import build_model
        m = build_model(cfg, ds, torch.Generator().manual_seed(cfg.train.seed), tr.dtype, "cpu")
        app = AsgdServer(_flat(list(m.parameters())).numpy().copy(), cfg.asgd)
        workers = {w: AsgdWorker(cfg, ds, w, P - 1, tr.dtype, "cpu") for w in range(1, P)}
        budgets, dtype = [cfg.asgd.updates_per_iter] * cfg.train.iters, app.x.dtype
    else:
        app = DapServer(tr.shape, len(tr.A))
        workers = {w: DapWorker(tr.A, tr.Y, w, P - 1, tr.shape, tr.eta, cfg.dap, tr.svrg, cfg.train.seed)
                   for w in range(1, P)}
        budgets, dtype = [tr.inner] * cfg.train.iters, np.float64
    srv = ps.replay(app, workers, trace, budgets, cfg.ps, app.x.size, dtype, begin=lambda s: app.begin())
    return np.array_equal(app.x, tr.app.x) and np.array_equal(srv.trace_array(), trace) \
        and len(trace) == sum(budgets) and not np.array_equal(app.x, np.zeros_like(app.x))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo", ["dapsvrg", "dapsgd", "asgd"])
def test_replay_reproduces_mpi_iterates_exactly(shared_dir, algo):
    from radmm_hpc.algos import trainer_class
    from radmm_hpc.data import load_dataset
    comm = world()
    cfg = _asgd_cfg(shared_dir) if algo == "asgd" else _dap_cfg(shared_dir, algo)
    ds = load_dataset(cfg.data)
    tr = trainer_class(algo)(cfg, runtime(comm), ds)
    for it in range(cfg.train.iters):
        tr.step(it)
    ok = True
    if comm.Get_rank() == 0:
        trace = tr.server.trace_array()
        ok = _replay(tr, cfg, ds, comm.Get_size(), trace)
        bad = trace.copy()
        bad[len(bad) // 2, 4] += 1          # another mini-batch than the one the run used
        with pytest.raises(AssertionError, match="replay: push"):
            _replay(tr, cfg, ds, comm.Get_size(), bad)
    assert mpi_all(ok)


def _final(run_dir):
    import h5py
    with h5py.File(os.path.join(run_dir, "model.h5"), "r") as fh:
        if "coef" in fh:
            return [fh["coef"][()]]
        return [fh[f"layers/{l}/weight"][()] for l in range(1, len(fh["layers"]) + 1)]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo", ["dapsvrg", "asgd"])
def test_resume_n_plus_n_equals_2n(shared_dir, algo):
    from radmm_hpc.loop import train
    comm = world()
    make = _asgd_cfg if algo == "asgd" else _dap_cfg
    a, b = os.path.join(shared_dir, "a"), os.path.join(shared_dir, "b")
    train(make(a, iters=4), runtime(comm))
    train(make(b, iters=2, every=2), runtime(comm))
    train(make(b, iters=4), runtime(comm), resume="auto")
    ok = True
    if comm.Get_rank() == 0:
        wa, wb = _final(a), _final(b)
        ok = len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))
    assert mpi_all(ok)


@pytest.mark.mpi(min_size=2)
def test_dap_svrg_converges_linearly_where_dap_sgd_flattens(shared_dir):
    from radmm_hpc.algos import trainer_class
    from radmm_hpc.algos.ps.dap_math import max_smoothness, problem, write_sparse_problem
    from radmm_hpc.data import load_dataset
    comm = world()
    path = os.path.join(shared_dir, "sparse.h5")
    if comm.Get_rank() == 0:
        write_sparse_problem(path, n=400, p=20, support=4)
    comm.Barrier()
    subs = {}
    for algo in ("dapsvrg", "dapsgd"):
        cfg = tiny_cfg(shared_dir, algo=algo, iters=8)
        cfg.data.name = f"hdf5:{path}"
        ds = load_dataset(cfg.data)
        # one step size for every world size (the default shrinks it with the worker count)
        cfg.dap.eta = 0.7 / max_smoothness(problem(ds, 0.0)[0])
        cfg.dap.batch_size, cfg.dap.lam2, cfg.dap.inner = 4, 0.05, 200
        tr = trainer_class(algo)(cfg, runtime(comm), ds)
        subs[algo] = []
        for it in range(cfg.train.iters):
            tr.step(it)
            subs[algo].append(tr.metrics()["suboptimality"])
    s, g = np.array(subs["dapsvrg"]), np.array(subs["dapsgd"])
    # linear: every epoch contracts by a steady factor; DAP-SGD is left far behind at the end
    ok = s[-1] < 1e-3 * s[0] and np.all(s[1:] < 0.6 * s[:-1]) and s[-1] < 1e-2 * g[-1] and np.all(s > -1e-12)
    assert mpi_all(ok), (s, g)


@pytest.mark.mpi(min_size=3)
def test_resume_on_another_world_size_is_a_clear_error(shared_dir):
    from radmm_hpc.loop import train
    from radmm_hpc.runtime import CollectiveError
    comm = world()
    r, P = comm.Get_rank(), comm.Get_size()
    run = os.path.join(shared_dir, "ws")
    train(_dap_cfg(run, iters=2, every=2), runtime(comm))
    sub = comm.Split(0 if r < P - 1 else 1, r)
    msg = ""
    if r < P - 1:
        try:
            train(_dap_cfg(run, iters=4), runtime(sub), resume="auto")
        except CollectiveError as exc:
            msg = str(exc)
    sub.Free()
    want = f"written by {P} ranks; --algo dapsvrg in this configuration resumes on {P} ranks only"
    assert mpi_all(r == P - 1 or want in msg), msg
