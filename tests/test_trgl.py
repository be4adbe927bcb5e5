"""TRGL on one process: detached module inputs, one optimizer per module, the penalty as
defined, schedules, augmentation, memory accounting, config errors, exact resume."""

import os

import numpy as np
import pytest
import torch

from radmm_hpc.algos.trgl.parts import active_module, augment, stage_schedule
from radmm_hpc.config import validate
from radmm_hpc.data import load_dataset
from radmm_hpc.errors import ConfigError
from tests.support import runtime
from tests.support.configs import trgl_cfg


@pytest.fixture(scope="module")
def ds():
    return load_dataset(trgl_cfg().data)


def _trainer(ds, **kw):
    from radmm_hpc.algos.trgl import TrglTrainer
    cfg = trgl_cfg(**kw)
    validate(cfg, 1)
    return TrglTrainer(cfg, runtime(), ds)


def test_no_gradient_crosses_a_module_boundary(ds):
    tr = _trainer(ds, modules=3)
    x, y = tr._batch(0)
    x.requires_grad_(True)
    for m in tr.mods.values():
        m.zero_grad(set_to_none=True)
    out0, _, _ = tr.mods[0](x)                      # with a graph back to x and module 0
    before = [p.detach().clone() for p in tr.mods[0].parameters()]
    tr._train_module(1, out0, y)                    # module 1 trains on module 0's output
    assert x.grad is None
    assert all(p.grad is None for p in tr.mods[0].parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, tr.mods[0].parameters()))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.mods[1].parameters())


def test_each_module_has_its_own_optimizer(ds):
    tr = _trainer(ds, modules=3)
    assert len({id(o) for o in tr.opts.values()}) == 3
    seen = set()
    for k, opt in tr.opts.items():
        ids = {id(p) for group in opt.param_groups for p in group["params"]}
        assert ids == {id(p) for p in tr.mods[k].parameters()} and not ids & seen
        seen |= ids
    # the classifiers: aux heads for modules 0, 1; the network's head inside module 2
    assert tr.mods[0].classifier is not None and tr.mods[2].classifier is None


def test_penalty_is_the_kinetic_energy(ds):
    tr = _trainer(ds, modules=2, tau=0.25)
    x, y = tr._batch(0)
    mod = tr.mods[0]
    mod.train()
    out, logits, energy = mod(x)
    z, by_hand = x, 0.0
    with torch.no_grad():
        for layer in mod.body:
            if hasattr(layer, "branch"):
                by_hand += float(layer.branch(z).pow(2).mean())
            z = layer(z)
    assert abs(float(energy.detach()) - by_hand) < 1e-9 * max(1.0, by_hand) and by_hand > 0
    assert tr.lam[0] == 0.5                                       # λ = 2τ
    assert _trainer(ds, modules=2, tau=1.0, tau_schedule="varying").lam == {0: 1.0, 1: 2.0}
    greedy, kin = _trainer(ds, modules=2, penalty="none"), _trainer(ds, modules=2, tau=0.01)
    for it in range(2):
        greedy.step(it)
        kin.step(it)
    # same data, different loss: the penalty shrinks the residual branches
    assert greedy.acc[0][1] > kin.acc[0][1]


def test_uzawa_raises_lambda(ds):
    tr = _trainer(ds, modules=2, uzawa=True, uzawa_every=2, uzawa_eta=0.5)
    for it in range(4):
        tr.step(it)
    assert all(tr.lam[k] > 1.0 + 0.5 for k in (0, 1))


def test_schedules():
    seq = stage_schedule(3, "sequential", 30, 0, 0, 2)
    lap = stage_schedule(3, "multilap", 30, 0, 0, 2)
    assert seq == [(0, 10), (1, 10), (2, 10)]
    assert lap == [(0, 5), (1, 5), (2, 5), (0, 5), (1, 5), (2, 5)]
    assert sum(n for _, n in stage_schedule(3, "multilap", 0, 4, 2, 3)) == 4 + 6 + 8
    assert [active_module(seq, i) for i in (0, 9, 10, 29, 30)] == [0, 0, 1, 2, None]


def test_augment():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float64).reshape(2, 3, 5, 5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, 0, False, g), x)
    y = augment(x, 2, False, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):   # every crop is a window of the padded image
        assert any(torch.equal(y[b], xp[b, :, i:i + 5, j:j + 5]) for i in range(5) for j in range(5))
    f = augment(x, 0, True, torch.Generator().manual_seed(3))
    assert all(torch.equal(f[b], x[b]) or torch.equal(f[b], x[b].flip(2)) for b in range(2))
    assert torch.equal(augment(x, 2, True, torch.Generator().manual_seed(5)),
                       augment(x, 2, True, torch.Generator().manual_seed(5)))


def test_memory_trgl_below_end_to_end(ds):
    mem = {}
    for mode, k in (("parallel", 3), ("e2e", 1)):
        tr = _trainer(ds, modules=k, mode=mode, arch="resnet14")
        tr.step(0)
        mem[mode] = max(tr.meter.saved_peak, 1)
    assert mem["parallel"] < 0.8 * mem["e2e"], mem


def test_config_errors():
    with pytest.raises(ConfigError, match="rank k owns module k"):
        validate(trgl_cfg(modules=3), world_size=2)
    with pytest.raises(ConfigError, match="e2e runs on 1 rank"):
        validate(trgl_cfg(mode="e2e"), world_size=2)
    with pytest.raises(ConfigError, match="4 modules but resnet8 has 3 residual blocks"):
        validate(trgl_cfg(modules=4), world_size=1)
    cfg = trgl_cfg()
    cfg.model.arch = "fcresnet"
    with pytest.raises(ConfigError, match="trains a convolutional ResNet"):
        validate(cfg, 1)
    with pytest.raises(ConfigError, match="trgl.mode must be one of"):
        validate(trgl_cfg(mode="paralel"), 1)


@pytest.mark.parametrize("mode", ["parallel", "multilap"])
def test_resume_is_exact(tmp_path, mode, capsys):
    from radmm_hpc.loop import train
    from radmm_hpc.modelio import load_named_params
    a, b = tmp_path / "a", tmp_path / "b"
    kw = dict(modules=2, mode=mode, stage_iters=2)
    sa = train(trgl_cfg(a, iters=6, **kw), runtime())
    cfg = trgl_cfg(b, iters=3, **kw)   # ends on a metrics point (log_every 3), as run a has one there
    cfg.checkpoint.every = 3
    train(cfg, runtime())
    from radmm_hpc.checkpoint import verify
    m = verify(str(b / "ckpt-000003"))    # the manifest records the module partition and L
    assert m["partition"] == sa["partition"] and m["n_layers"] == 5, (m["partition"], m["n_layers"])
    sb = train(trgl_cfg(b, iters=6, **kw), runtime(), resume="auto")
    pa, _ = load_named_params(os.path.join(a, "model.h5"))
    pb, _ = load_named_params(os.path.join(b, "model.h5"))
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert sa["test_accuracy"] == sb["test_accuracy"] and sa["selected_iter"] == sb["selected_iter"]
    assert sa["modules"] == 2 and sa["peak_mem_mb_max_rank"] > 0
    from radmm_hpc.cli import main
    capsys.readouterr()
    assert main(["eval", str(a)]) == 0   # `eval` rebuilds the ResNet from model.h5
    lines = dict(ln.split() for ln in capsys.readouterr().out.splitlines())
    assert abs(float(lines["test_accuracy"]) - sa["test_accuracy"]) < 1e-5
