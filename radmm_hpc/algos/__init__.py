"""Training methods. Each is a Trainer (see base.py) registered by its --algo name."""

from radmm_hpc.algos.base import Trainer


def trainer_class(name: str):
    if name == "backprop":
        from radmm_hpc.algos.backprop import BackpropTrainer
        return BackpropTrainer
    if name == "radmm":
        from radmm_hpc.algos.radmm import RadmmTrainer
        return RadmmTrainer
    raise KeyError(name)


__all__ = ["Trainer", "trainer_class"]
