"""RADMM: ADMM training of residual networks, layer by layer, with the layers spread over ranks.

    regions.py    the region layer both trainers share: partition, schedules and their exchanges,
                  metrics, keep-best, export, elastic re-sharding of checkpoints
    fcresnet.py   the FCResNet trainer, on the closed-form / linearized blocks of blocks.py
    general.py    the trainer for other residual networks (and the FCResNet when asked): the
                  autograd-linearized blocks of engine.py on the layers of layers.py
    anchored.py   the anchored variant (the default) on any network of layers.py: forward
                  anchor, multiplier estimates, exact proximal W steps, pipelined over ranks
"""

from radmm_hpc.algos.radmm.anchored import AnchoredTrainer
from radmm_hpc.algos.radmm.fcresnet import FcRadmmTrainer
from radmm_hpc.algos.radmm.general import GeneralRadmmTrainer


def make_trainer(cfg, rt, ds):
    """The anchored variant (any network); else the FCResNet trainer, or the general one for
    other networks and when radmmconv.general."""
    if cfg.radmm.variant == "anchored":
        return AnchoredTrainer(cfg, rt, ds)
    if cfg.model.arch == "fcresnet" and not cfg.radmmconv.general:
        return FcRadmmTrainer(cfg, rt, ds)
    return GeneralRadmmTrainer(cfg, rt, ds)


__all__ = ["AnchoredTrainer", "FcRadmmTrainer", "GeneralRadmmTrainer", "make_trainer"]
