"""The interface between a training method and the shared loop (loop.py)."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Dict, List, Optional

import numpy as np
import torch


class Trainer:
    """A training method. The loop calls, on every rank:

    step(it)            one iteration (collective where the method needs it)
    metrics()           collective; the same dict of floats on every rank
    export_weights()    collective; the whole network's weight list on rank 0, None elsewhere
    state()/load_state  this rank's checkpoint arrays (numeric only) and their restore
    partition(), manifest_fields(), resume_problem(manifest), elastic_resume(), remap_state()
                        what the checkpoint manifest records and whether (and how) a checkpoint
                        resumes here: the checkpointer asks, it never looks inside a Trainer

and, on rank 0 only, after export_weights():
    final_scores(w)     forward-pass scores of the exported network (train_* and test_*)
    save_final(path, w) model.h5 (modelio.py's layout for the FCResNet)
The defaults below are the FCResNet's; a method with another kind of model overrides them.
`backprop_baseline` says whether the final table shows Adam on the same network beside it, and
`least_squares_baseline` whether it shows least squares (for regression data).
"""

    name = "base"
    backprop_baseline = True
    least_squares_baseline = True

    def __init__(self, cfg, rt, ds):
        self.cfg, self.rt, self.ds = cfg, rt, ds
        self.dtype = torch.float64 if cfg.train.dtype == "float64" else torch.float32
        self.device = rt.device
        self.phase_s: Dict[str, float] = defaultdict(float)   # compute / exchange / wait seconds
        # the same phases in CPU seconds of this process: clean per-rank costs also when ranks
        # share cores (oversubscribed runs; the scaling model's inputs, bench/perf)
        self.phase_cpu_s: Dict[str, float] = defaultdict(float)

    def timed(self, phase: str):
        return _PhaseTimer(self.phase_s, self.phase_cpu_s, phase)

    def step(self, it: int) -> None:
        raise NotImplementedError

    def metrics(self) -> Dict[str, float]:
        raise NotImplementedError

    def export_weights(self) -> Optional[List[torch.Tensor]]:
        raise NotImplementedError

    def final_scores(self, weights) -> Dict[str, float]:
        from radmm_hpc.scoring import score_weights
        m = self.cfg.model
        return score_weights(weights, self.ds, m.activation, m.input_bias, residual=m.arch != "mlp")

    def save_final(self, path: str, weights) -> None:
        from radmm_hpc.modelio import save_model
        save_model(path, weights, self.cfg, self.ds)

    def state(self) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def load_state(self, state: Dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def partition(self) -> list:
        """The manifest's `partition`: how the model is split over ranks ([] if it is not)."""
        return []

    def manifest_fields(self) -> dict:
        """The manifest's `schedule` and `n_layers`."""
        from radmm_hpc.models import layer_count
        return {"schedule": "", "n_layers": layer_count(self.cfg.model)}

    def resume_problem(self, manifest: dict) -> Optional[str]:
        """Why a checkpoint with this (verified, same-config) manifest cannot resume here, or None."""
        return None

    def elastic_resume(self) -> bool:
        """Whether a checkpoint written by another number of ranks can be resumed (remap_state)."""
        return False

    def remap_state(self, manifest: dict, old_shard) -> Dict[str, np.ndarray]:
        """This rank's state from a checkpoint of manifest["world_size"] ranks; old_shard(j) gives
        the trainer arrays of old rank j. Only called when elastic_resume() is true."""
        raise NotImplementedError


def movement_metrics(num: List[Optional[float]], den: List[Optional[float]]) -> dict:
    """How far training moved each layer from its initialisation: layer_movement[l] =
    ‖W_l − W_l⁰‖/‖W_l⁰‖ from the squared norms num[l] = ‖W_l − W_l⁰‖², den[l] = ‖W_l⁰‖² (None for
    a layer without weights), the last entry the output layer; and its means over the lower and
    upper half of the hidden layers. The same metric for every method (docs/radmm.md)."""
    mv = [None if d is None else math.sqrt(n / max(d, 1e-300)) for n, d in zip(num, den)]
    L = len(mv)
    half = (L - 1) // 2
    lower = [m for m in mv[:half] if m is not None]
    upper = [m for m in mv[half:L - 1] if m is not None]
    return {"layer_movement": mv,
            "movement_lower_half": sum(lower) / len(lower) if lower else 0.0,
            "movement_upper_half": sum(upper) / len(upper) if upper else 0.0,
            "movement_output": mv[-1] if mv[-1] is not None else 0.0}


class _PhaseTimer:
    def __init__(self, acc, cpu, phase):
        self.acc, self.cpu, self.phase = acc, cpu, phase

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.acc[self.phase] += time.perf_counter() - self.t0
        self.cpu[self.phase] += time.process_time() - self.c0
