"""RADMM: ADMM training of residual networks, layer by layer, with the layers spread over ranks.

    regions.py    the region layer both trainers share: partition, schedules and their exchanges,
                  metrics, keep-best, export, elastic re-sharding of checkpoints
    fcresnet.py   the FCResNet trainer, on the closed-form / linearized blocks of blocks.py
    general.py    the trainer for other residual networks (and the FCResNet when asked): the
                  autograd-linearized blocks of engine.py on the layers of layers.py
"""

from radmm_hpc.algos.radmm.fcresnet import FcRadmmTrainer
from radmm_hpc.algos.radmm.general import GeneralRadmmTrainer


def make_trainer(cfg, rt, ds):
    """The FCResNet trainer, or the general one for other networks and when radmmconv.general."""
    if cfg.model.arch == "fcresnet" and not cfg.radmmconv.general:
        return FcRadmmTrainer(cfg, rt, ds)
    return GeneralRadmmTrainer(cfg, rt, ds)


__all__ = ["FcRadmmTrainer", "GeneralRadmmTrainer", "make_trainer"]
