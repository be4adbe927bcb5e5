"""RADMM across MPI ranks: two-colour exactness, Jacobi convergence, bytes and memory per rank."""


import pytest

from tests.support import make_trainer, mpi_all, world
from tests.support.configs import small_cfg
from tests.support.radmm import init_jacobi, jacobi_merit, jacobi_sweep, owned_tensors, rel_err, tensor_bytes


def _depth_not_divisible(P):
    return 2 * P + 1 if P > 1 else 3     # 5, 7, 9, 17 hidden layers for P = 2, 3, 4, 8


@pytest.mark.mpi(min_size=2)
def test_two_colour_equals_serial_redblack():
    P = world().Get_size()
    depth = _depth_not_divisible(P)
    par = make_trainer(small_cfg(depth=depth, schedule="two-colour"), world())
    ser = make_trainer(small_cfg(depth=depth, schedule="serial-redblack", regions=P))
    for it in range(6):
        par.step(it)
        ser.step(it)
    names = dict(owned_tensors(ser))
    worst = max(rel_err(t, names[k]) for k, t in owned_tensors(par))
    m_par, m_ser = par.metrics(), ser.metrics()
    ok = worst <= 1e-10 and abs(m_par["lagrangian"] - m_ser["lagrangian"]) <= 1e-10 * abs(m_ser["lagrangian"])
    assert mpi_all(ok), worst


@pytest.mark.mpi(min_size=2)
def test_jacobi_converges_like_serial():
    P = world().Get_size()
    depth = _depth_not_divisible(P)
    kw = dict(depth=depth, width=8, n=64, omega=0.05, beta_b=1.0)
    par = make_trainer(small_cfg(schedule="jacobi", **kw), world())
    ser = make_trainer(small_cfg(schedule="serial", **kw))
    # Both runs still descend at this point and follow different block orders on a non-convex
    # problem: Jacobi ends from 9% below (P = 3) to 1% above (P = 2) the serial loss (measured,
    # docs/radmm.md). The check: never more than 5% worse than serial, boundary consensus reached.
    iters = 300
    for it in range(iters):
        par.step(it)
        ser.step(it)
    mp, ms = par.metrics(), ser.metrics()
    ok = mp["boundary_residual"] < 1e-3 and mp["train_loss"] <= 1.05 * ms["train_loss"]
    assert mpi_all(ok), (mp["boundary_residual"], mp["train_loss"], ms["train_loss"])


@pytest.mark.mpi(min_size=2)
def test_jacobi_bytes_per_iteration_exact():
    comm = world()
    P, r = comm.Get_size(), comm.Get_rank()
    d, n = 8, 80
    tr = make_trainer(small_cfg(depth=_depth_not_divisible(P), width=d, n=n, schedule="jacobi"), comm)
    N = tr.N
    before = tr.comm.p2p_sent
    for it in range(3):
        tr.step(it)
    sent = tr.comm.p2p_sent - before
    total = comm.allreduce(sent)
    # per boundary and iteration: V forward (d×N) and (Q, M) back (2·d×N)
    assert mpi_all(total == 3 * (P - 1) * (1 + 2) * d * N * 8), (total, P, d, N)
    mine = (d * N * 8 if r < P - 1 else 0) + (2 * d * N * 8 if r > 0 else 0)
    assert mpi_all(sent == 3 * mine)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("schedule", ["jacobi", "two-colour"])
def test_memory_per_rank_falls_as_one_over_p(schedule):
    comm = world()
    P = comm.Get_size()
    depth, d, n = 8 * P, 8, 64     # P divides depth: regions of equal size
    cfg = small_cfg(depth=depth, width=d, n=n, schedule=schedule)
    par = make_trainer(cfg, comm)
    ser = make_trainer(small_cfg(depth=depth, width=d, n=n))
    N = par.N
    mine, serial = tensor_bytes(par), tensor_bytes(ser)
    # X, Y sit on one rank each; boundary buffers: at most 5 d×N blocks and one d×d matrix
    boundary = (5 * d * N + d * d) * 8
    io = (ser.st["X"].numel() + ser.st["Y"].numel()) * 8
    ok = mine <= serial / P + boundary + io and comm.allreduce(mine) >= serial - io
    assert mpi_all(ok), (mine, serial, P)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("variant,splitting", [("proximal", "three"), ("linearized", "three"),
                                               ("linearized", "two")])
def test_jacobi_equals_the_serial_jacobi_simulation(variant, splitting):
    """The MPI Jacobi schedule == Jacobi PRU simulated in one process (tests/support/radmm.py):
    the same iterates and boundary variables on every rank, the same Lagrangian."""
    P, r = world().Get_size(), world().Get_rank()
    kw = dict(depth=_depth_not_divisible(P), variant=variant, splitting=splitting, omega=0.05)
    par = make_trainer(small_cfg(schedule="jacobi", **kw), world())
    ser = make_trainer(small_cfg(schedule="serial", **kw))
    st = init_jacobi(ser.st, P)
    for it in range(4):
        par.step(it)
        jacobi_sweep(st, ser.p)
    names = dict(owned_tensors(ser))
    worst = max(rel_err(t, names[k]) for k, t in owned_tensors(par))
    if r > 0:
        worst = max(worst, rel_err(par.Q, st["Q"][r]), rel_err(par.M, st["M"][r]))
    ref = jacobi_merit(st, ser.p)
    lag = par.metrics()["lagrangian"]
    assert mpi_all(worst <= 1e-12 and abs(lag - ref) <= 1e-10 * abs(ref)), (worst, lag, ref)
