"""Reference baselines run on one process beside a training method's result."""

from __future__ import annotations

import copy
import time

from radmm_hpc.algos.backprop import BackpropTrainer
from radmm_hpc.comm import Comm
from radmm_hpc.runtime import Runtime
from radmm_hpc.scoring import score_model


def backprop_for_seconds(cfg, ds, seconds: float, device) -> dict:
    """Adam backpropagation on the same network and data for `seconds` of wall-clock."""
    bcfg = copy.deepcopy(cfg)
    bcfg.backprop.optimizer = "adam"
    trainer = BackpropTrainer(bcfg, Runtime(comm=Comm(None), device=device), ds)
    t0, it = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        trainer.step(it)
        it += 1
    out = score_model(trainer.model, ds)
    out.update(iters=it, wall_s=time.perf_counter() - t0, grad_norm=trainer.grad_norm)
    return out
