"""Synchronous data-parallel backprop on P ranks equals one process on the union batch."""

import pytest

from tests.support import mpi_all, runtime, world


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_data_parallel_matches_single_process(optimizer):
    from radmm_hpc.algos.backprop import BackpropTrainer
    from radmm_hpc.config import Config
    from radmm_hpc.data import load_dataset
    cfg = Config()
    cfg.train.dtype = "float64"
    cfg.model.width, cfg.model.depth = 16, 5
    cfg.data.name = "wine-red"
    cfg.backprop.optimizer, cfg.backprop.batch_size, cfg.backprop.lr = optimizer, 100, 1e-2
    ds = load_dataset(cfg.data)
    par = BackpropTrainer(cfg, runtime(world()), ds)
    ser = BackpropTrainer(cfg, runtime(), ds)
    for it in range(30):   # crosses an epoch boundary (1279 // 100 = 12 steps per epoch)
        par.step(it)
        ser.step(it)
    err = max(float((a - b).abs().max() / (b.abs().max() + 1e-30))
              for a, b in zip(par.weights(), ser.weights()))
    moved = float((par.weights()[0] - BackpropTrainer(cfg, runtime(), ds).weights()[0]).abs().max())
    assert mpi_all(err < 1e-6 and moved > 1e-3), (err, moved)
