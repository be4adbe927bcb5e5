"""Training methods, one package per method (radmm, mac, trgl, ps: A-SGD and DAP, backprop). Each
is a Trainer (base.py) registered here by its --algo name; the methods never import each other."""

import importlib

from radmm_hpc.algos.base import Trainer

# --algo name -> "module:constructor" (a Trainer class or a factory that picks one; imported on
# use, so a method's dependencies load only when chosen)
REGISTRY = {
    "radmm": "radmm_hpc.algos.radmm:make_trainer",
    "backprop": "radmm_hpc.algos.backprop:BackpropTrainer",
    "asgd": "radmm_hpc.algos.ps.asgd:AsgdTrainer",
    "dapsvrg": "radmm_hpc.algos.ps.dap:DapTrainer",
    "dapsgd": "radmm_hpc.algos.ps.dap:DapTrainer",
    "mac": "radmm_hpc.algos.mac:MacTrainer",
    "trgl": "radmm_hpc.algos.trgl:TrglTrainer",
}


def trainer_class(name: str):
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["REGISTRY", "Trainer", "trainer_class"]
