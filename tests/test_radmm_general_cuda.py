"""The general RADMM tests on CUDA (skipped without a GPU): merit descent, host-stored auxiliary
variables with chunked transfers == device-stored, and CUDA == CPU in float64."""

import pytest
import torch

from radmm_hpc.algos.radmm.engine import Chunks, Engine, serial_sweep
from tests.support.radmm_general import conv_layers, digits, params

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _engine(dev, store, chunk=0):
    X, Y, _ = digits(n=40)
    layers = conv_layers()
    for lay in layers:
        lay.module.to(dev)
        lay.w = lay.w.to(dev)
    eng = Engine(layers, params(), Chunks(40, chunk, store, dev, torch.float64), 1, 4, True)
    eng.Y = Y.to(store)
    eng.forward_init(X.to(store))
    return eng


def test_cuda_merit_decreases_and_matches_cpu():
    cpu, gpu = _engine("cpu", "cpu"), _engine("cuda", "cuda")
    m0 = gpu.merit_terms()["lagrangian"]
    for _ in range(3):
        serial_sweep(cpu)
        serial_sweep(gpu)
    assert gpu.merit_terms()["lagrangian"] < m0
    C = cpu.owned()
    for k, t in gpu.owned().items():
        assert float((t.cpu() - C[k]).norm() / C[k].norm()) < 1e-8, k


def test_cuda_host_store_chunked_equals_device_store():
    dev, host = _engine("cuda", "cuda"), _engine("cuda", "cpu", chunk=7)
    assert host.V[1].device.type == "cpu" and host.ch.pin
    for _ in range(2):
        serial_sweep(dev)
        serial_sweep(host)
    H = host.owned()
    for k, t in dev.owned().items():
        assert float((t.cpu() - H[k].cpu()).norm() / t.norm()) < 1e-10, k
