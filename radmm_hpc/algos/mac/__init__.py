"""MAC / ParMAC: the method of auxiliary coordinates, data sharded over ranks, submodels on a ring
(trainer.py); the nested model, submodels, W-step visits and Z-step (parts.py)."""

from radmm_hpc.algos.mac.trainer import MacTrainer

__all__ = ["MacTrainer"]
