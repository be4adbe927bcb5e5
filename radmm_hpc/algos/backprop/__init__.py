"""Backpropagation: mini-batch Adam/SGD, synchronous data-parallel (trainer.py); the baseline
beside every other method."""

from radmm_hpc.algos.backprop.trainer import BackpropTrainer

__all__ = ["BackpropTrainer"]
