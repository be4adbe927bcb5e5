"""General RADMM (a small conv ResNet) across MPI ranks: two-colour == serial red-black, Jacobi
progress, resume (N + resume + N == 2N)."""

import pytest
import torch

from tests.support import mpi_all, runtime, world
from tests.support.radmm_general import conv_trainer


def _state_bytes(tr):
    return sum(a.nbytes for k, a in tr.state().items() if not k.startswith(("best/", "tau/W/")))


def _rel(a, b):
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


@pytest.mark.mpi(min_size=2)
def test_two_colour_equals_serial_redblack_conv(monkeypatch):
    P = world().Get_size()
    blocks = P          # P + 1 hidden layers: P does not divide them
    # the parallel run also sweeps in chunks of 5 samples (32 = 6·5 + 2): chunking changes nothing
    par = conv_trainer(monkeypatch, "two-colour", world(), blocks=blocks, chunk=5)
    ser = conv_trainer(monkeypatch, "serial-redblack", None, blocks=blocks, regions=P)
    for it in range(3):
        par.step(it)
        ser.step(it)
    assert mpi_all(_state_bytes(par) == par.predicted_state_bytes())    # the memory formula
    S = ser.eng.owned()
    worst = max(_rel(t, S[k]) for k, t in par.eng.owned().items())
    m_par, m_ser = par.metrics(), ser.metrics()
    ok = worst <= 1e-10 and abs(m_par["lagrangian"] - m_ser["lagrangian"]) <= 1e-10 * abs(m_ser["lagrangian"])
    assert mpi_all(ok), (worst, m_par["lagrangian"], m_ser["lagrangian"])


@pytest.mark.mpi(min_size=2)
def test_jacobi_decreases_merit_and_resumes(monkeypatch):
    P = world().Get_size()
    a = conv_trainer(monkeypatch, "jacobi", world(), blocks=P)
    m0 = a.metrics()
    for it in range(2):
        a.step(it)
    saved = {k: v.copy() for k, v in a.state().items()}   # state() may share memory
    for it in range(2, 4):
        a.step(it)
    m1 = a.metrics()
    # resume: a fresh trainer from the iteration-2 state, two more iterations, the same iterates
    b = conv_trainer(monkeypatch, "jacobi", world(), blocks=P)
    b.load_state(saved)
    for it in range(2, 4):
        b.step(it)
    assert mpi_all(_state_bytes(b) == b.predicted_state_bytes())
    B = b.eng.owned()
    same = all(torch.equal(t, B[k]) for k, t in a.eng.owned().items())
    ok = same and m1["lagrangian"] < m0["lagrangian"] and m1["train_loss"] < m0["train_loss"]
    assert mpi_all(ok), (same, m0["lagrangian"], m1["lagrangian"], m0["train_loss"], m1["train_loss"])
    assert m1["boundary_residual"] < 0.5


@pytest.mark.mpi(min_size=2)
def test_cli_loop_resume_conv(monkeypatch, tmp_path_factory, schedule="two-colour"):
    """Through the shared loop: 2 iterations + checkpoint + resume + 2 == 4 straight (model.h5).
    (Jacobi's resume is checked in process above.)"""
    import h5py
    import numpy as np

    from radmm_hpc import loop
    from radmm_hpc.algos.radmm import general
    from radmm_hpc.config import Config
    from tests.support.radmm_general import conv_dataset, conv_layers
    comm = world()
    P = comm.Get_size()
    base = comm.bcast(str(tmp_path_factory.mktemp("rc")) if comm.Get_rank() == 0 else None)
    monkeypatch.setattr(general, "build_layers", lambda cfg, ds, dtype, device: (conv_layers(blocks=P), False, None))
    monkeypatch.setattr(loop, "load_dataset", lambda dcfg: conv_dataset())

    def run(name, iters, resume=None):
        cfg = Config()
        cfg.train.dtype, cfg.train.iters, cfg.train.log_every, cfg.train.compare = "float64", iters, 1, False
        cfg.train.run_dir = f"{base}/{name}"
        cfg.model.arch = "test-conv"
        cfg.radmm.schedule, cfg.radmm.variant = schedule, "linearized"
        for k, v in dict(lam=1e-4, gamma=1.0, rho=1.0, beta=2.0, omega=0.05).items():
            setattr(cfg.radmmconv, k, v)
        cfg.checkpoint.every, cfg.checkpoint.every_seconds = 2, 0.0
        return loop.train(cfg, runtime(comm), resume=resume)
    straight = run("a", 4)
    run("b", 2)
    resumed = run("b", 4, resume="auto")
    ok = True
    if comm.Get_rank() == 0:
        ok = straight["train_loss"] == resumed["train_loss"]
        with h5py.File(f"{base}/a/model.h5") as fa, h5py.File(f"{base}/b/model.h5") as fb:
            names = []
            fa.visit(names.append)
            ok = ok and all(np.array_equal(fa[n][()], fb[n][()]) for n in names
                            if isinstance(fa[n], h5py.Dataset))
            ok = ok and len(names) > 5
    assert mpi_all(ok)
