"""Reference baselines run on one process beside a training method's result."""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch

from radmm_hpc.algos.backprop import BackpropTrainer
from radmm_hpc.comm import Comm
from radmm_hpc.data import validation_split as data_validation_split
from radmm_hpc.runtime import Runtime
from radmm_hpc.scoring import loss_fn, predict, score_model, tensors_for

VAL_FRACTION = 0.1   # of the training split, held out for the early-stopped row
CHECK_EVERY = 10     # steps between validation checks


def validation_split(cfg, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows) of a training split of n rows, seeded by data.split_seed."""
    return data_validation_split(n, VAL_FRACTION, cfg.data.split_seed)


def backprop_for_seconds(cfg, ds, seconds: float, device, optimizer: str = "adam") -> dict[str, dict]:
    """Adam backpropagation on the same network and initialisation for `seconds` of wall-clock,
    trained on the training split less a seeded 10% validation share. Two rows:
    `backprop_adam_same_wall_clock`, the last iterate, and `backprop_adam_early_stopped`, the
    iterate with the lowest validation loss (checked every 10 steps): what a user running backprop
    with the usual model selection would keep. Both are scored on the whole training split and
    the test split, like the method beside them. `optimizer = sgd` (with cfg.backprop.lr) gives
    the same two rows for SGD, named backprop_sgd_*; each row has the largest gradient norm met."""
    bcfg = copy.deepcopy(cfg)
    bcfg.backprop.optimizer = optimizer
    fit, val = validation_split(cfg, len(ds.X_train))
    n_val = len(val)
    fit_ds = dataclasses.replace(ds, X_train=ds.X_train[fit], y_train=ds.y_train[fit])
    trainer = BackpropTrainer(bcfg, Runtime(comm=Comm(None), device=device), fit_ds)
    model = trainer.model
    p = next(model.parameters())
    Xv, yv = tensors_for(dataclasses.replace(ds, X_train=ds.X_train[val], y_train=ds.y_train[val]),
                         "train", p.dtype, p.device)
    best_loss, best_state, best_it, gmax = float("inf"), None, 0, 0.0
    t0, it = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        trainer.step(it)
        it += 1
        g = trainer.grad_norm
        gmax = g if g != g or g == float("inf") else max(gmax, g)    # NaN/inf: the run exploded
        if it % CHECK_EVERY == 0 and n_val:
            with torch.no_grad():
                v = float(loss_fn(predict(model, Xv), yv, ds.task))
            if v < best_loss:
                best_loss, best_it = v, it
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    wall = time.perf_counter() - t0
    last = score_model(model, ds)
    last.update(iters=it, wall_s=wall, grad_norm=trainer.grad_norm, max_grad_norm=gmax)
    out = {f"backprop_{optimizer}_same_wall_clock": last}
    if best_state is not None:
        model.load_state_dict(best_state)
        best = score_model(model, ds)
        best.update(iters=best_it, wall_s=wall, val_loss=best_loss, max_grad_norm=gmax)
        out[f"backprop_{optimizer}_early_stopped"] = best
    return out
