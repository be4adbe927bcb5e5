"""What the tests share (and the benches: the launcher).

    launch.py        run the CLI as users do, under mpiexec for several ranks
    mpi.py           the world communicator, mpi_all, on_root, a Runtime per communicator
    configs.py       tiny configurations of every method, and a Trainer built from one
    checkpoints.py   reading run outputs, editing checkpoints (damage, foreign manifests)
    golden.py        the golden runs (numbers and files recorded before a refactoring)
    radmm.py, radmm_general.py   RADMM references: owned tensors, the serial Jacobi simulation,
                     small convolutional networks
    ps_selftest.py   start/stop cycles of the parameter-server protocol with trivial numerics
"""

from tests.support.configs import make_trainer
from tests.support.launch import ROOT, run_cli
from tests.support.mpi import mpi_all, on_root, runtime, world

__all__ = ["ROOT", "make_trainer", "mpi_all", "on_root", "run_cli", "runtime", "world"]
