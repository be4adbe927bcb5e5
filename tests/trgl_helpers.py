"""Tiny TRGL configurations shared by the serial and MPI tests."""

from radmm_hpc.config import Config


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
