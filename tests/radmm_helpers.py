"""Small RADMM problems shared by the serial and MPI tests."""

import torch

from radmm_hpc.algos.radmm.fcresnet import RadmmTrainer
from radmm_hpc.comm import Comm
from radmm_hpc.config import Config
from radmm_hpc.data import load_dataset
from radmm_hpc.runtime import Runtime


def small_cfg(depth=5, width=8, schedule="serial", n=96, **radmm):
    cfg = Config()
    cfg.train.dtype = "float64"
    cfg.model.width, cfg.model.depth, cfg.model.init_scale = width, depth, 0.3
    cfg.data.name, cfg.data.n_samples, cfg.data.n_features = "synthetic-regression", n, 4
    cfg.radmm.schedule = schedule
    # the small-problem settings the tests were written for (not the Wine Quality defaults)
    radmm = dict(dict(lam=1e-4, gamma=1.0, rho=1.0, beta=2.0, omega=1e-3, beta_b=1.0), **radmm)
    for k, v in radmm.items():
        setattr(cfg.radmm, k, v)
    return cfg


def trainer(cfg, mpi_comm=None):
    ds = load_dataset(cfg.data)
    return RadmmTrainer(cfg, Runtime(comm=Comm(mpi_comm)), ds)


def owned_tensors(tr):
    """(name, tensor) of every W, U, V (and Λ) block this trainer owns."""
    out = []
    for l in tr.own_layers():
        out.append((f"W{l}", tr.st["W"][l - 1]))
        if l < tr.L:
            out += [(f"U{l}", tr.st["U"][l - 1]), (f"V{l}", tr.st["V"][l - 1])]
        else:
            out += [(f"V{l}", tr.st["V"][l - 1]), ("Lam", tr.st["Lam"])]
    return out


def tensor_bytes(tr):
    """Bytes of every tensor a trainer holds (its state and boundary buffers)."""
    seen, total = set(), 0
    tensors = [t for k in ("W", "U", "V") for t in tr.st[k] if t is not None]
    tensors += [tr.st[k] for k in ("Lam", "X", "Y") if tr.st[k] is not None]
    tensors += [getattr(tr, k) for k in ("Q", "M", "Vb", "Qn", "Mn") if getattr(tr, k, None) is not None]
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-300))
