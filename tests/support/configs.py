"""Tiny configurations of every method (seconds per test), and a Trainer built from one."""

from radmm_hpc.algos import trainer_class
from radmm_hpc.config import Config
from radmm_hpc.data import load_dataset
from tests.support.mpi import runtime


def make_trainer(cfg, mpi_comm=None):
    """The Trainer of cfg.train.algo on cfg's data set, on mpi_comm (None: one process)."""
    return trainer_class(cfg.train.algo)(cfg, runtime(mpi_comm), load_dataset(cfg.data))


def tiny_cfg(run_dir, algo="radmm", schedule="serial", iters=10, every=0, depth=5, keep=3, **extra):
    """A whole run (loop, checkpoints) of any method on 64 synthetic samples; extra settings as
    section__key=value."""
    cfg = Config()
    cfg.train.algo, cfg.train.iters, cfg.train.dtype = algo, iters, "float64"
    cfg.train.run_dir, cfg.train.compare, cfg.train.log_every = str(run_dir), False, 5
    cfg.train.progress_seconds = 1e9
    cfg.model.width, cfg.model.depth = 8, depth
    cfg.data.name, cfg.data.n_samples = "synthetic-regression", 64
    cfg.radmm.variant, cfg.radmm.schedule = "proximal", schedule   # the paper variant (radmm__variant to change)
    cfg.backprop.batch_size = 16
    cfg.checkpoint.every, cfg.checkpoint.keep = every, keep
    for k, v in extra.items():
        sec, key = k.split("__")
        setattr(getattr(cfg, sec), key, v)
    return cfg


def small_cfg(depth=5, width=8, schedule="serial", n=96, **radmm):
    """RADMM on a small regression problem, with the penalties the RADMM tests were written for
    (not the Wine Quality defaults)."""
    cfg = Config()
    cfg.train.dtype = "float64"
    cfg.model.width, cfg.model.depth, cfg.model.init_scale = width, depth, 0.3
    cfg.data.name, cfg.data.n_samples, cfg.data.n_features = "synthetic-regression", n, 4
    cfg.radmm.schedule = schedule
    radmm = dict(dict(variant="proximal", lam=1e-4, gamma=1.0, rho=1.0, beta=2.0, omega=1e-3, beta_b=1.0),
                 **radmm)
    for k, v in radmm.items():
        setattr(cfg.radmm, k, v)
    return cfg


def anchored_cfg(depth=6, width=16, data="wine", subset=600, **radmm):
    """The anchored RADMM variant, one rank, on a subset of a bundled data set (float64)."""
    cfg = Config()
    cfg.train.dtype = "float64"
    cfg.model.width, cfg.model.depth = width, depth
    cfg.data.name, cfg.data.train_subset = data, subset
    cfg.radmm.variant, cfg.radmm.schedule = "anchored", "serial"
    for k, v in radmm.items():
        setattr(cfg.radmm, k, v)
    return cfg


def mac_cfg(depth=3, width=8, n=96, **mac):
    cfg = Config()
    cfg.train.algo, cfg.train.dtype, cfg.train.compare = "mac", "float64", False
    cfg.train.progress_seconds = 1e9
    cfg.model.width, cfg.model.depth = width, depth
    cfg.data.name, cfg.data.n_samples = "synthetic-regression", n
    cfg.mac.iters_per_mu, cfg.mac.patience = 2, 0
    cfg.mac.mu0, cfg.mac.mu_factor = 1.0, 2.0      # the schedule some tests spell out
    for k, v in mac.items():
        setattr(cfg.mac, k, v)
    return cfg


def trgl_cfg(run_dir="", modules=0, mode="parallel", arch="resnet8", iters=6, subset=160, **extra):
    cfg = Config()
    cfg.train.algo, cfg.train.iters, cfg.train.dtype = "trgl", iters, "float64"
    cfg.train.run_dir, cfg.train.compare, cfg.train.log_every = str(run_dir), False, 3
    cfg.train.progress_seconds = 1e9
    cfg.model.arch, cfg.model.base_width = arch, 4
    cfg.data.name, cfg.data.train_subset = "digits", subset
    cfg.trgl.modules, cfg.trgl.mode, cfg.trgl.batch_size = modules, mode, 16
    cfg.trgl.crop_pad, cfg.trgl.tau, cfg.trgl.eval_max = 1, 0.5, 64
    for k, v in extra.items():
        setattr(cfg.trgl, k, v)
    return cfg
