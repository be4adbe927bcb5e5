"""The package's layout rules that the import contracts (.importlinter) do not state: MPI is
called from comm.py and runtime.py only, and radmm_hpc/algos holds one package per method."""

import os
import re

from radmm_hpc.algos import REGISTRY
from tests.support import ROOT

PKG = os.path.join(ROOT, "radmm_hpc")


def _sources():
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                yield os.path.relpath(path, PKG), open(path, encoding="utf-8").read()


def test_mpi_is_called_from_the_comm_layer_and_runtime_only():
    mpi = re.compile(r"\bMPI\.[A-Za-z_]|\.mpi\.|\bmpi4py\b")
    found = {name: m.group(0) for name, text in _sources() if (m := mpi.search(text))}
    assert set(found) == {"comm.py", "runtime.py"}, found


def test_algos_holds_one_package_per_method():
    algos = os.path.join(PKG, "algos")
    entries = sorted(e for e in os.listdir(algos) if e != "__pycache__")
    packages = [e for e in entries if os.path.isdir(os.path.join(algos, e))]
    assert sorted(set(entries) - set(packages)) == ["__init__.py", "base.py"], entries
    assert all(os.path.isfile(os.path.join(algos, p, "__init__.py")) for p in packages)
    homes = {target.split(":")[0].split(".")[2] for target in REGISTRY.values()}
    assert homes == set(packages), (homes, packages)
