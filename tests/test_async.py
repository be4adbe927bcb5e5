"""Async modes, serial: elastic-net prox and logistic loss against float64 references, the
reference solver's optimality, labels, config checks, and (through the CLI) a failing worker
ending the whole job with a clear message."""

import math

import numpy as np
import pytest

from radmm_hpc.algos.ps import dap_math as dm
from radmm_hpc.config import Config, validate
from radmm_hpc.errors import ConfigError, UserError
from tests.support import runtime


def test_prox_satisfies_the_optimality_conditions_and_beats_a_grid():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.standard_normal((40, 3)) * 2, np.zeros((1, 3))])   # last row: the bias
    z[:5] = 0.001                                                               # inside the threshold
    eta, lam1, lam2 = 0.3, 0.5, 0.2
    u = dm.prox(z, eta, lam1, lam2)
    assert np.array_equal(u[-1], z[-1])
    w, zw = u[:-1], z[:-1]
    nz = w != 0
    # u ≠ 0: u − z + ηλ1·sign(u) + ηλ2·u = 0;  u = 0: |z| ≤ ηλ1
    assert np.abs((w - zw + eta * lam1 * np.sign(w) + eta * lam2 * w)[nz]).max() < 1e-14
    assert np.all(np.abs(zw[~nz]) <= eta * lam1) and (~nz).sum() >= 15
    grid = np.linspace(-8, 8, 320001)
    for zi, ui in zip(zw.ravel()[:20], w.ravel()[:20]):
        f = 0.5 * (grid - zi) ** 2 + eta * lam1 * np.abs(grid) + 0.5 * eta * lam2 * grid ** 2
        assert abs(grid[f.argmin()] - ui) < 1e-4


def test_logistic_loss_matches_float64_reference_and_stays_finite():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((30, 4))
    Y = np.where(rng.random((30, 2)) < 0.5, -1.0, 1.0)
    x = rng.standard_normal((4, 2))
    ref = sum(math.log1p(math.exp(-Y[i, k] * float(A[i] @ x[:, k]))) for i in range(30) for k in range(2))
    assert abs(dm.loss_sum(A, Y, x) - ref) < 1e-12 * ref
    # extreme margins: no overflow, the right asymptotes
    big = np.array([[1.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert dm.loss_sum(big, np.array([[-1.0]]), np.array([[800.0]])) == 800.0
        assert 0.0 <= dm.loss_sum(big, np.array([[1.0]]), np.array([[800.0]])) < 1e-300
        s = dm.sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert s[0] == 0.0 and s[1] == 0.5 and s[2] == 1.0


def test_gradient_matches_central_differences():
    rng = np.random.default_rng(2)
    A = np.hstack([rng.standard_normal((25, 3)), np.ones((25, 1))])
    Y = np.where(rng.random((25, 2)) < 0.5, -1.0, 1.0)
    x = rng.standard_normal((4, 2)) * 0.5
    g = dm.grad_sum(A, Y, x)
    h = 1e-6
    for i in range(4):
        for k in range(2):
            e = np.zeros_like(x)
            e[i, k] = h
            fd = (dm.loss_sum(A, Y, x + e) - dm.loss_sum(A, Y, x - e)) / (2 * h)
            assert abs(fd - g[i, k]) < 1e-6 * max(1.0, abs(g[i, k]))


def test_reference_solution_is_a_fixed_point_of_the_prox_gradient_map(tmp_path):
    from radmm_hpc.data import load_dataset
    cfg = Config()
    dm.write_sparse_problem(str(tmp_path / "s.h5"), n=300, p=15, support=3)
    cfg.data.name = f"hdf5:{tmp_path / 's.h5'}"
    A, Y, _, _, K = dm.problem(load_dataset(cfg.data), 0.0)
    assert K == 1 and set(np.unique(Y)) == {-1.0, 1.0}
    lam1, lam2 = 1e-2, 1e-2
    x, p_star = dm.reference_solution(A, Y, lam1, lam2)
    L = np.linalg.norm(A, 2) ** 2 / (4 * len(A))
    step = dm.prox(x - dm.grad_sum(A, Y, x) / (len(A) * L), 1 / L, lam1, lam2)
    assert np.abs(step - x).max() < 1e-11
    assert (x[:-1] == 0).sum() >= 3          # the L1 term makes it sparse
    rng = np.random.default_rng(3)
    for _ in range(5):   # P* is below nearby points
        assert dm.objective(A, Y, x + 1e-3 * rng.standard_normal(x.shape), lam1, lam2) > p_star


def test_labels_wine_binary_and_digits_one_vs_rest():
    from radmm_hpc.data import load_dataset
    cfg = Config()
    cfg.data.name = "wine-red"
    ds = load_dataset(cfg.data)
    A, Y, _, _, K = dm.problem(ds, 6.0)
    raw = ds.y_train[:, 0] * ds.y_std[0] + ds.y_mean[0]
    assert K == 1 and np.array_equal(Y[:, 0] > 0, raw >= 6.0) and np.all(A[:, -1] == 1)
    cfg.data.name = "digits"
    ds = load_dataset(cfg.data)
    _, Y, _, _, K = dm.problem(ds, 6.0)
    assert K == 10 and np.all((Y > 0).sum(1) == 1) and np.array_equal(Y.argmax(1), ds.y_train)


@pytest.mark.parametrize("change,msg", [
    ({"train.algo": "asgd"}, "needs at least 2 ranks"),
    ({"ps.staleness": "ssd"}, "ps.staleness must be one of"),
    ({"asgd.mode": "grad"}, "asgd.mode must be one of"),
    ({"dap.lam2": 0.0}, "dap.lam2 must be > 0"),
    ({"asgd.n_sync": 0}, "asgd.n_sync must be > 0"),
])
def test_config_checks(change, msg):
    cfg = Config()
    for k, v in change.items():
        sec, key = k.split(".")
        setattr(getattr(cfg, sec), key, v)
    with pytest.raises(ConfigError, match=msg):
        validate(cfg, world_size=1 if "train.algo" in change else 3)


def test_one_rank_is_a_clear_error(cli, tmp_path):
    proc, _ = cli(["--algo", "dapsvrg", "--run-dir", str(tmp_path / "r")], cwd=str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "needs at least 2 ranks (rank 0 is the parameter server" in proc.stderr


def test_failing_worker_ends_the_whole_job(cli, tmp_path):
    args = ["--algo", "asgd", "--data", "synthetic-regression", "--iters", "3", "--set", "model.width=8",
            "--set", "model.depth=3", "--set", "train.compare=false", "--run-dir", str(tmp_path / "r")]
    proc, secs = cli(args, ranks=3, timeout=120, cwd=str(tmp_path), env_extra={"RADMM_HPC_FAIL_WORKER": "2"})
    assert proc.returncode != 0
    assert "internal error on rank 2: RuntimeError: injected worker fault on rank 2" in proc.stderr
    assert (tmp_path / "r" / "radmm-hpc-error-rank2.log").exists()   # in the run directory


@pytest.mark.parametrize("model", ["fcresnet", "resnet8"])
def test_asgd_starts_from_a_backprop_model_file(cli, tmp_path, model):
    """asgd.init_model: the server's first parameters are those of another run's model.h5, in
    either layout (FCResNet, or named parameters for the convolutional ResNets)."""
    import torch

    from radmm_hpc.algos.ps.asgd import AsgdTrainer
    from radmm_hpc.config import Config
    from radmm_hpc.data import load_dataset
    from radmm_hpc.modelio import load_model, load_named_params
    net = (["--model", "resnet8", "--data", "digits", "--set", "model.base_width=4", "--set", "data.train_subset=128"]
           if model == "resnet8" else ["--set", "model.width=8", "--set", "model.depth=3"])
    run = tmp_path / "bp"
    proc, _ = cli(["--algo", "backprop", "--iters", "5", "--set", "train.compare=false", "--run-dir", str(run), *net])
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = Config()
    cfg.train.algo, cfg.model.arch = "asgd", model
    if model == "resnet8":
        cfg.data.name, cfg.model.base_width, cfg.data.train_subset = "digits", 4, 128
        arrays = load_named_params(str(run / "model.h5"))[0]       # HDF5 keeps names sorted
        from radmm_hpc.models import build_model
        names = [k for k, _ in build_model(cfg, load_dataset(cfg.data), torch.Generator()).named_parameters()]
        want = torch.cat([torch.as_tensor(arrays[k]).reshape(-1) for k in names])
    else:
        cfg.model.width, cfg.model.depth = 8, 3
        want = torch.cat([w.reshape(-1) for w in load_model(str(run / "model.h5"))[0]])
    ds = load_dataset(cfg.data)
    fresh = torch.as_tensor(AsgdTrainer(cfg, runtime(), ds).app.x).clone()
    cfg.asgd.init_model = str(run / "model.h5")
    got = torch.as_tensor(AsgdTrainer(cfg, runtime(), ds).app.x)
    assert got.shape == want.shape and not torch.equal(got, fresh)     # backprop moved the weights
    assert torch.allclose(got.double(), want.double(), atol=1e-7)
    cfg.model.base_width, cfg.model.width = 8, 16                  # another network: a clear error
    with pytest.raises(UserError, match="do not match this model"):
        AsgdTrainer(cfg, runtime(), load_dataset(cfg.data))
