"""Tiny MAC configurations shared by the serial and MPI MAC tests."""

from radmm_hpc.config import Config
from radmm_hpc.data import load_dataset


def mac_cfg(depth=3, width=8, n=96, **mac):
    cfg = Config()
    cfg.train.algo, cfg.train.dtype, cfg.train.compare = "mac", "float64", False
    cfg.train.progress_seconds = 1e9
    cfg.model.width, cfg.model.depth = width, depth
    cfg.data.name, cfg.data.n_samples = "synthetic-regression", n
    cfg.mac.batch_size, cfg.mac.iters_per_mu, cfg.mac.patience = 16, 2, 0
    for k, v in mac.items():
        setattr(cfg.mac, k, v)
    return cfg


def trainer(cfg, mpi_comm=None):
    from radmm_hpc.algos.mac import MacTrainer
    from radmm_hpc.comm import Comm
    from radmm_hpc.runtime import Runtime
    comm = Comm(mpi_comm if mpi_comm is not None and mpi_comm.Get_size() > 1 else None)
    return MacTrainer(cfg, Runtime(comm=comm), load_dataset(cfg.data))
