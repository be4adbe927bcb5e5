"""General RADMM (a small conv ResNet) across MPI ranks: two-colour == serial red-black, Jacobi
progress, resume (N + resume + N == 2N)."""

import pytest
import torch

from conftest import mpi_all
from radmmconv_helpers import conv_trainer


def _world():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def _rel(a, b):
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


@pytest.mark.mpi(min_size=2)
def test_two_colour_equals_serial_redblack_conv(monkeypatch):
    P = _world().Get_size()
    blocks = P          # P + 1 hidden layers: P does not divide them
    # the parallel run also sweeps in chunks of 5 samples (32 = 6·5 + 2): chunking changes nothing
    par = conv_trainer(monkeypatch, "two-colour", _world(), blocks=blocks, chunk=5)
    ser = conv_trainer(monkeypatch, "serial-redblack", None, blocks=blocks, regions=P)
    for it in range(3):
        par.step(it)
        ser.step(it)
    S = ser.eng.owned()
    worst = max(_rel(t, S[k]) for k, t in par.eng.owned().items())
    m_par, m_ser = par.metrics(), ser.metrics()
    ok = worst <= 1e-10 and abs(m_par["lagrangian"] - m_ser["lagrangian"]) <= 1e-10 * abs(m_ser["lagrangian"])
    assert mpi_all(ok), (worst, m_par["lagrangian"], m_ser["lagrangian"])


@pytest.mark.mpi(min_size=2)
def test_jacobi_decreases_merit_and_resumes(monkeypatch):
    P = _world().Get_size()
    a = conv_trainer(monkeypatch, "jacobi", _world(), blocks=P)
    m0 = a.metrics()
    for it in range(2):
        a.step(it)
    saved = {k: v.copy() for k, v in a.state().items()}   # state() may share memory
    for it in range(2, 4):
        a.step(it)
    m1 = a.metrics()
    # resume: a fresh trainer from the iteration-2 state, two more iterations, the same iterates
    b = conv_trainer(monkeypatch, "jacobi", _world(), blocks=P)
    b.load_state(saved)
    for it in range(2, 4):
        b.step(it)
    B = b.eng.owned()
    same = all(torch.equal(t, B[k]) for k, t in a.eng.owned().items())
    ok = same and m1["lagrangian"] < m0["lagrangian"] and m1["train_loss"] < m0["train_loss"]
    assert mpi_all(ok), (same, m0["lagrangian"], m1["lagrangian"], m0["train_loss"], m1["train_loss"])
    assert m1["boundary_residual"] < 0.5
