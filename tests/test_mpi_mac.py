"""ParMAC under MPI: the same model as serial MAC with the same shards and visiting order (the
Gauss–Newton statistics summed in the same ring order), only submodel bytes on the wire
(bit-identical resume: test_checkpoint.py)."""

import pytest
import torch

from tests.support import make_trainer, mpi_all, world
from tests.support.configs import mac_cfg


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("variant,depth,epochs,output,task", [
    ("qp", 3, 1, "refit", "regression"), ("al", 1, 2, "fit", "regression"),
    ("qp", 2, 1, "fit", "classification")])
def test_parmac_equals_serial_mac(variant, depth, epochs, output, task):
    """depth 1 gives fewer layers than ranks: hidden layers split into unit groups."""
    comm = world()
    P, r = comm.Get_size(), comm.Get_rank()
    cfg = mac_cfg(depth=depth, variant=variant, epochs=epochs, shards=P, n=40 + 8 * P,
                  output=output, refit_steps=3)
    if task == "classification":
        cfg.data.name = "synthetic-classification"
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
@pytest.mark.parametrize("epochs,task", [(1, "regression"), (3, "regression"), (1, "classification")])
def test_bytes_on_the_wire_are_the_submodel_sizes(epochs, task):
    """Per Gauss–Newton epoch a submodel's statistics make P − 1 hops and its solved rows P − 1
    copy hops; a stage end adds the output layer's refit (softmax: refit_steps epochs)."""
    comm = world()
    P = comm.Get_size()
    cfg = mac_cfg(depth=2, width=6, epochs=epochs, n=40 + 12 * P, refit_steps=2)
    if task == "classification":
        cfg.data.name = "synthetic-classification"
    tr = make_trainer(cfg, comm)
    C, d_in = tr.W[-1].shape[0], tr.W[0].shape[1]
    hidden = 0
    for sm in tr.subs[:-1]:
        g, d = sm.r1 - sm.r0, (d_in if sm.layer == 0 else 6)
        hidden += g * d * d + g * d + g * d          # per-row Gram, right-hand side, the rows
    out = ((6 * C) ** 2 if task == "classification" else 36) + C * 6 + C * 6
    item = 8   # float64
    ok = True
    for it in range(3):                 # iters_per_mu = 2: iteration 1 ends a stage
        s0, r0, c0 = tr.comm.p2p_sent, tr.comm.p2p_recv, tr.comm.coll_bytes
        tr.step(it)
        sent = comm.allreduce(tr.comm.p2p_sent - s0)
        recv = comm.allreduce(tr.comm.p2p_recv - r0)
        refits = (2 if task == "classification" else 1) if it == 1 else 0
        expect = (epochs * hidden + refits * out) * (P - 1) * item
        ok = ok and sent == recv == expect == tr.submodel_bytes(it) and tr.comm.coll_bytes == c0
    assert mpi_all(ok and len(tr.subs) >= P), (expect, tr.submodel_bytes(it))
