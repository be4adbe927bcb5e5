"""Serial RADMM: monotone Lagrangian, multiplier identities, every variant learns, forward-pass
scores, red-black order, the float32 Cholesky fallback."""

import pytest
import torch

from radmm_hpc.algos.radmm import blocks as rb
from radmm_hpc.models.fcresnet import forward
from tests.support import make_trainer
from tests.support.configs import small_cfg


def test_lagrangian_non_increasing_proximal_point():
    tr = make_trainer(small_cfg(depth=6, beta=2.0, omega=0.05, gamma=1.0, rho=1.0))
    values = []
    for it in range(40):
        tr.step(it)
        values.append(tr.metrics()["lagrangian"])
    diffs = [b - a for a, b in zip(values, values[1:])]
    assert max(diffs) <= 1e-10 * max(1.0, abs(values[0])), max(diffs)
    assert values[-1] < values[0]                       # and it moves
    assert values[-1] > -1e6                            # bounded below


def test_multiplier_identity_squared_loss():
    tr = make_trainer(small_cfg(depth=4))
    for it in range(5):
        tr.step(it)
        st = tr.st
        L = tr.L
        # Λ = −N∇ℓ(V_L) = Y − V_L after every multiplier update
        torch.testing.assert_close(st["Lam"], st["Y"] - st["V"][L - 1], rtol=0, atol=1e-12)


def test_cross_entropy_multiplier_and_progress():
    cfg = small_cfg(depth=4, beta=2.0, omega=0.05)
    cfg.data.name = "synthetic-classification"
    tr = make_trainer(cfg)
    start = tr.metrics()["train_loss"]
    for it in range(30):
        tr.step(it)
    L = tr.L
    lam = rb.lagrange_multiplier_from_loss(tr.st["V"][L - 1], tr.st["Y"], "xent")
    # Λ⁺ = Λ + β(V_L − W_L V_{L−1}) satisfies the optimality of the V_L step: Λ⁺ = −N∇ℓ(V_L)
    torch.testing.assert_close(tr.st["Lam"], lam, rtol=0, atol=1e-6)
    assert tr.metrics()["train_loss"] < start


@pytest.mark.parametrize("variant, splitting", [("proximal", "three"), ("linearized", "three"),
                                                ("linearized", "two")])
def test_variants_reduce_the_forward_loss(variant, splitting):
    tr = make_trainer(small_cfg(depth=5, variant=variant, splitting=splitting, omega=0.01))
    start = tr.metrics()
    for it in range(40):
        tr.step(it)
    end = tr.metrics()
    assert end["train_loss"] < 0.9 * start["train_loss"], (start["train_loss"], end["train_loss"])
    assert end["successive_diff"] < 0.1


def test_scores_are_forward_pass_not_auxiliary():
    tr = make_trainer(small_cfg(depth=4))
    for it in range(10):
        tr.step(it)
    out = forward(tr.st["W"], tr.st["X"].T, input_bias=False).T    # X has its ones row already
    expected = 0.5 * float(((out - tr.st["Y"]) ** 2).sum()) / tr.N
    assert abs(tr.metrics()["train_loss"] - expected) < 1e-10


def test_serial_redblack_is_a_permutation_of_blocks():
    L, P = 12, 4
    order = rb.red_black_order(L, P)
    assert sorted(order) == list(range(1, L + 1))
    cfg = small_cfg(depth=L - 1, schedule="serial-redblack", regions=P)
    a, b = make_trainer(cfg), make_trainer(small_cfg(depth=L - 1))
    a.step(0)
    b.step(0)
    # a different block order gives a different (but valid) iterate
    assert float((a.st["W"][0] - b.st["W"][0]).abs().max()) > 0 or \
        float((a.st["V"][5] - b.st["V"][5]).abs().max()) > 0


def test_float32_cholesky_falls_back_to_float64():
    # a huge rank-one γVVᵀ on a unit diagonal: the float32 factorization fails
    v = torch.randn(6, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    G = (1e9 * v @ v.T + torch.eye(6, dtype=torch.float64)).float()
    assert int(torch.linalg.cholesky_ex(G)[1]) != 0
    B = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    Z = rb._solve_left_spd(G, B)
    assert Z.dtype == torch.float32 and torch.isfinite(Z).all()
    # a well-conditioned matrix takes the ordinary path: the exact solution
    A = torch.eye(6) * 3 + 0.1
    torch.testing.assert_close(rb._solve_left_spd(A, B), torch.linalg.solve(A, B))
