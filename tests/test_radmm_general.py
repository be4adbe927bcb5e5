"""General (autograd, linearized) RADMM: merit descent on a small conv ResNet, agreement with the
FCResNet's linearized closed forms, chunk invariance, and the trainer (serial, resume)."""

import pytest
import torch

from radmm_hpc.algos.radmm import blocks as rb
from radmm_hpc.algos.radmm.engine import serial_sweep
from radmm_hpc.algos.radmm.layers import fc_layers
from tests.support import runtime
from tests.support.radmm import fc_state
from tests.support.radmm_general import conv_layers, digits, engine, params


def _merit(eng):
    return eng.merit_terms()["lagrangian"] / eng.ch.n


@pytest.mark.parametrize("three, post", [(True, "relu_sum"), (False, "relu_sum"), (True, "linear")])
def test_merit_decreases_on_conv_resnet(three, post):
    X, Y, _ = digits(n=32)
    eng = engine(conv_layers(post=post), X, Y, params(three=three))
    vals = [_merit(eng)]
    for _ in range(6):
        serial_sweep(eng)
        vals.append(_merit(eng))
    # every block step is a descent step; the multiplier ascent is dominated (β > 1): monotone
    assert all(b <= a + 1e-9 * abs(a) for a, b in zip(vals, vals[1:])), vals
    assert vals[-1] < vals[0] - 1e-4


def test_chunked_equals_unchunked():
    X, Y, _ = digits(n=30)
    a = engine(conv_layers(), X, Y, params())
    b = engine(conv_layers(), X, Y, params(), chunk=7)      # 7 does not divide 30
    for _ in range(3):
        serial_sweep(a)
        serial_sweep(b)
    A, B = a.owned(), b.owned()
    assert A.keys() == B.keys()
    for k in A:
        err = float((A[k] - B[k]).norm() / A[k].norm())
        assert err < 1e-10, (k, err)


def test_general_path_agrees_with_fcresnet_linearized_updates():
    """The general path on the FCResNet == blocks.py's linearized updates with the same τ."""
    g = torch.Generator().manual_seed(3)
    d_in, d, dy, depth, N = 4, 6, 2, 4, 30
    W = [torch.randn(d, d_in + 1, generator=g, dtype=torch.float64) * 0.5]
    W += [torch.randn(d, d, generator=g, dtype=torch.float64) * 0.3 for _ in range(depth - 1)]
    W += [torch.randn(dy, d, generator=g, dtype=torch.float64) * 0.3]
    X = torch.cat([torch.randn(N, d_in, generator=g, dtype=torch.float64), torch.ones(N, 1, dtype=torch.float64)], 1)
    Y = torch.randn(N, dy, generator=g, dtype=torch.float64)
    p = params(loss="squared", lam=1e-3, omega=0.1)
    eng = engine(fc_layers(W), X, Y, p)
    st = fc_state(W, X.T.contiguous(), Y.T.contiguous())
    L = len(W)
    for _ in range(3):
        serial_sweep(eng)
        tW, tV = eng.tauW, eng.tauV
        for l in range(1, L):
            i, Vp = l - 1, (st["X"] if l == 1 else st["V"][l - 2])
            st["W"][i] = rb.update_W_hidden_lin(st["U"][i], Vp, st["W"][i], p.gamma, p.lam, p.omega, N,
                                                tau=tW[l] + p.omega)
            res = Vp if l > 1 else 0.0
            st["U"][i] = rb.update_U(st["W"][i] @ Vp, st["V"][i] - res, st["U"][i], p.gamma, p.rho, p.omega)
            P = res + rb.sigma(st["U"][i])
            tau = tV[l].view(1, -1) + p.omega
            if l <= L - 2:
                st["V"][i] = rb.update_V_hidden_lin(P, st["W"][l], st["U"][l], st["V"][l], st["V"][i],
                                                    p.gamma, p.rho, p.omega, tau=tau)
            else:
                st["V"][i] = rb.update_V_last_hidden_lin(P, st["W"][L - 1], st["V"][L - 1], st["Lam"],
                                                         st["V"][i], p.beta, p.rho, p.omega, tau=tau)
        Vp = st["V"][L - 2]
        st["W"][L - 1] = rb.update_W_out_lin(st["V"][L - 1], st["Lam"], Vp, st["W"][L - 1], p.beta, p.lam,
                                             p.omega, N, tau=tW[L] + p.omega)
        st["V"][L - 1] = rb.update_V_out_squared(st["Y"], st["Lam"], st["W"][L - 1], Vp, p.beta)
        st["Lam"] = rb.update_Lam(st["Lam"], st["V"][L - 1], st["W"][L - 1], Vp, p.beta)
    got = eng.owned()
    for l in range(1, L + 1):
        torch.testing.assert_close(got[f"W/{l}"].view(W[l - 1].shape), st["W"][l - 1], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[f"V/{l}"], st["V"][l - 1].T, rtol=1e-10, atol=1e-12)
        if l < L:
            torch.testing.assert_close(got[f"U/{l}"], st["U"][l - 1].T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["Lam"], st["Lam"].T, rtol=1e-10, atol=1e-12)


def test_config_checks():
    from radmm_hpc.config import Config, validate
    from radmm_hpc.errors import ConfigError
    for key, bad in (("chunk", -1), ("aux_memory", "disk"), ("max_backtracks", 0)):
        cfg = Config()
        setattr(cfg.radmmconv, key, bad)
        with pytest.raises(ConfigError, match=f"radmmconv.{key}"):
            validate(cfg)


def test_too_many_ranks_is_a_config_error(monkeypatch):
    """More regions than hidden layers: a one-line ConfigError, not a crash."""
    from radmm_hpc.errors import ConfigError
    from tests.support.radmm_general import conv_trainer
    with pytest.raises(ConfigError, match="hidden layers"):
        conv_trainer(monkeypatch, "serial-redblack", None, blocks=1, regions=3)


@pytest.mark.parametrize("block, shortcut", [("post", "A"), ("pre", "B")])
def test_resnet_layers_compose_to_the_model(block, shortcut):
    """models/resnet.py as Layers (stem, blocks, head): their composition is model(X) in eval mode,
    and a sweep on it lowers the merit."""
    from radmm_hpc.algos.radmm.layers import forward_layers, module_layers
    from radmm_hpc.config import Config
    from radmm_hpc.models import build_model
    from tests.support.radmm_general import conv_dataset
    cfg = Config()
    cfg.model.arch, cfg.model.block, cfg.model.shortcut, cfg.model.base_width = "resnet8", block, shortcut, 4
    ds = conv_dataset(n=16, n_test=4)
    ds.image_shape = (1, 8, 8)
    model = build_model(cfg, ds, torch.Generator().manual_seed(0), torch.float64)
    X = torch.as_tensor(ds.X_train)
    layers = module_layers(model)
    assert len(layers) == 1 + 3 + 1
    torch.testing.assert_close(forward_layers(layers, X), model.eval()(X), rtol=1e-12, atol=1e-12)
    Y = torch.nn.functional.one_hot(torch.as_tensor(ds.y_train), 3).double()
    eng = engine(layers, X, Y, params())
    m0 = _merit(eng)
    serial_sweep(eng)
    assert _merit(eng) < m0


def test_algo_radmm_model_resnet_runs_through_the_loop(tmp_path):
    """`--algo radmm --model resnet8 --data digits` through the shared loop (in process):
    forward-pass scores in summary.json and the ResNet's parameters in model.h5."""
    import h5py

    from radmm_hpc import loop
    from radmm_hpc.config import Config, validate
    cfg = Config()
    cfg.model.arch, cfg.model.base_width = "resnet8", 4
    cfg.data.name, cfg.data.train_subset = "digits", 32
    cfg.train.iters, cfg.train.log_every, cfg.train.compare = 2, 1, False
    cfg.train.run_dir = str(tmp_path / "run")
    validate(cfg)
    s = loop.train(cfg, runtime())
    assert s["model"] == "resnet8" and 0.0 <= s["test_accuracy"] <= 1.0 and s["train_loss"] > 0
    with h5py.File(tmp_path / "run" / "model.h5") as fh:
        names = []
        fh.visit(names.append)
    assert any("conv" in n or "weight" in n for n in names), names
