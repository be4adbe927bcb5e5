"""ParMAC under MPI: the same model as serial MAC with the same shards and visiting order, only
submodel bytes on the wire (bit-identical resume: test_checkpoint.py)."""


import pytest
import torch

from tests.support import make_trainer, mpi_all, world
from tests.support.configs import mac_cfg


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("variant,depth,epochs", [("qp", 3, 1), ("al", 1, 2)])
def test_parmac_equals_serial_mac(variant, depth, epochs):
    """depth 1 gives fewer layers than ranks: hidden layers split into unit groups."""
    comm = world()
    P, r = comm.Get_size(), comm.Get_rank()
    cfg = mac_cfg(depth=depth, variant=variant, epochs=epochs, shards=P, n=40 + 8 * P)
    par, ser = make_trainer(cfg, comm), make_trainer(cfg)
    init = [w.clone() for w in par.W]
    for it in range(4):     # two μ stage ends (multipliers, validation)
        par.step(it)
        ser.step(it)
        if it == 0:         # (a later skipped stage may bring the initial weights back)
            moved = max(float((a - b).abs().max()) for a, b in zip(par.W, init)) > 1e-4
    same_w = all(torch.equal(a, b) for a, b in zip(par.W, ser.W))
    same_z = all(torch.equal(a, b) for a, b in zip(par.sh[r]["Z"], ser.sh[r]["Z"]))
    m_par, m_ser = par.metrics(), ser.metrics()
    same_m = all(m_par[k] == m_ser[k] for k in ("E_Q", "violation", "train_loss", "val_loss"))
    assert mpi_all(same_w and same_z and moved and same_m and len(par.subs) >= P), \
        (same_w, same_z, moved, same_m, len(par.subs))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("epochs", [1, 3])
def test_bytes_on_the_wire_are_the_submodel_sizes(epochs):
    comm = world()
    P = comm.Get_size()
    tr = make_trainer(mac_cfg(depth=2, epochs=epochs, n=40 + 12 * P), comm)
    sizes = sum(tr.W[sm.layer][sm.r0:sm.r1].numel() for sm in tr.subs)
    item = 8   # float64
    state_extra = len(tr.subs)          # one Adam step counter per submodel
    expect = ((3 * sizes + state_extra) * (epochs * P - 1) + sizes * (P - 1)) * item
    ok = True
    for it in range(3):
        s0, r0, c0 = tr.comm.p2p_sent, tr.comm.p2p_recv, tr.comm.coll_bytes
        tr.step(it)
        sent = comm.allreduce(tr.comm.p2p_sent - s0)
        recv = comm.allreduce(tr.comm.p2p_recv - r0)
        ok = ok and sent == recv == expect == tr.submodel_bytes() and tr.comm.coll_bytes == c0
    assert mpi_all(ok and sum(w.numel() for w in tr.W) == sizes), (expect, tr.submodel_bytes())
