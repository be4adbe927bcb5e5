"""TRGL: module-wise training of a ResNet with a kinetic-energy penalty, one module per rank in a
forward-only pipeline (trainer.py); the module, augmentation, schedules, memory (parts.py)."""

from radmm_hpc.algos.trgl.trainer import TrglTrainer

__all__ = ["TrglTrainer"]
